"""Two CPU processes under torchrun (gloo): contexts sharded by rank, gradients averaged (the trainer checks every
rank ends with the same weights and raises otherwise), metrics reduced, only rank 0 writes logs and checkpoints."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from pi0.ript.algo import checkpoint as ckpt
from pi0.ript.algo.bc import collect_demonstrations, make_reach_policy
from pi0.ript.env.reach_sim import ReachEnvSpec

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training(tmp_path):
    spec = ReachEnvSpec(image_size=28)
    policy_dir = tmp_path / "policy"
    make_reach_policy(collect_demonstrations(spec, range(3), range(2), 5, 20), 28, 5, seed=0).save_pretrained(policy_dir)
    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "pi0.ript.algo.trainer",
        "--config", str(REPO / "pi0/ript/config/learning_demo.yaml"),
        f"policy.checkpoint_path={policy_dir}", f"train.output_dir={output_dir}", "task.image_size=28",
        "task.max_episode_length=10", "features.use_ript_vla_runner=false", "algo.rollouts_per_env=2",
        "algo.num_contexts=4", "algo.num_denoise_steps=3", "algo.dynamic_sampling=false", "algo.num_minibatches=2",
        "algo.update_epochs=1", "train.num_iterations=2", "train.eval_every=2", "train.eval_at_start=false",
        "train.eval_episodes_per_task=1", "train.progress=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1]  # one line per iteration: only rank 0 writes
    # Metrics are sums over both ranks: 2 contexts per rank x K=2 rollouts = 8 episodes per iteration.
    assert all(m["rollout/episodes"] == 8 and m["sampling/contexts_kept"] == 4 for m in lines)
    assert all(m["update/optimizer_steps"] > 0 for m in lines)
    assert "eval/success_rate" in lines[-1]
    latest = ckpt.latest_checkpoint(output_dir)
    assert latest is not None and {p.name for p in latest.glob("rank_*.pt")} == {"rank_0.pt", "rank_1.pt"}
