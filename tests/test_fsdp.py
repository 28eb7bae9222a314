"""train.strategy=fsdp: two CPU processes under torchrun (gloo), weights, gradients and AdamW state sharded with torch's
fully_shard. Held against replicated training of the same config: the same loss trajectory and weights within
float tolerance (only the reduction order differs); its checkpoint is a full state dict that loads into one process
and resumes under FSDP where it stopped; resuming it with the other strategy is refused with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pi0.ript.algo import checkpoint as ckpt
from pi0.ript.algo.bc import behaviour_clone, collect_demonstrations, make_reach_policy
from pi0.ript.env.reach_sim import ReachEnvSpec
from test_ddp import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE, CHUNK = 28, 5


@pytest.fixture(scope="module")
def bc_policy(tmp_path_factory) -> Path:
    """A briefly behaviour-cloned tiny pi0: some rollouts succeed and some fail, so advantages and gradients are real."""
    torch.set_num_threads(1)
    spec = ReachEnvSpec(image_size=IMAGE_SIZE)
    demos = collect_demonstrations(spec, range(spec.num_tasks()), range(20), chunk_size=CHUNK, max_steps=20, seed=0)
    policy = make_reach_policy(demos, IMAGE_SIZE, CHUNK, seed=0)
    behaviour_clone(policy, demos, steps=60, batch_size=32, seed=0)
    directory = tmp_path_factory.mktemp("fsdp") / "bc"
    policy.save_pretrained(directory)
    return directory


def torchrun(policy: Path, output_dir: Path, strategy: str, iterations: int, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "pi0.ript.algo.trainer",
        "--config", str(REPO / "pi0/ript/config/learning_demo.yaml"),
        f"policy.checkpoint_path={policy}", f"train.output_dir={output_dir}", f"task.image_size={IMAGE_SIZE}",
        "task.max_episode_length=20", "features.use_ript_vla_runner=false", "algo.rollouts_per_env=2",
        "algo.num_contexts=4", "algo.num_denoise_steps=3", "algo.dynamic_sampling=false", "algo.num_minibatches=2",
        "algo.update_epochs=1", f"train.num_iterations={iterations}", "train.eval_every=0", "train.eval_at_start=false",
        "train.progress=false", "train.learning_rate=1e-3", f"train.strategy={strategy}", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def final_state(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.latest_checkpoint(output_dir) / "rl_state.safetensors"))


def assert_same_training(a: Path, b: Path, weight_atol: float) -> None:
    ma, mb = metrics(a), metrics(b)
    assert [m["iteration"] for m in ma] == [m["iteration"] for m in mb]
    for x, y in zip(ma, mb):
        assert x["rollout/success_rate"] == y["rollout/success_rate"]
        assert x["update/samples"] == y["update/samples"] and x["update/optimizer_steps"] == y["update/optimizer_steps"]
        for key in ("update/loss", "update/grad_norm", "update/approx_kl", "update/clip_fraction", "update/cfg_anchor_gap"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), key
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst < weight_atol, worst


# cfg also recomputes activations under FSDP (checkpointing composes with sharding and changes no number).
@pytest.mark.parametrize("optimizer, iterations, checkpointing", [("ppo", 2, "none"), ("cfg", 1, "all")])
def test_fsdp_trains_like_replicated(bc_policy, tmp_path, optimizer, iterations, checkpointing):
    sharded, replicated = tmp_path / "fsdp", tmp_path / "replicated"
    torchrun(bc_policy, sharded, "fsdp", iterations, f"algo.loss={optimizer}", f"train.activation_checkpointing={checkpointing}")
    torchrun(bc_policy, replicated, "replicated", iterations, f"algo.loss={optimizer}")
    lines = metrics(sharded)
    assert all(m["update/grad_norm"] > 0 and m["update/loss"] != 0 for m in lines)  # real gradients flowed
    assert any(0 < m["rollout/success_rate"] < 1 for m in lines)  # real advantages (ppo) / both conditions (cfg)
    assert_same_training(sharded, replicated, weight_atol=1e-3)


def test_fsdp_checkpoint_is_a_full_state_dict_and_resumes(bc_policy, tmp_path):
    uninterrupted, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(bc_policy, uninterrupted, "fsdp", 2)
    torchrun(bc_policy, resumed, "fsdp", 1)
    torchrun(bc_policy, resumed, "fsdp", 2, "--resume")
    assert [m["iteration"] for m in metrics(resumed)] == [0, 1]
    assert_same_training(uninterrupted, resumed, weight_atol=1e-6)

    # The checkpoint loads into one process: its policy/ directory as a pi0 policy, its RL state into an RLPolicy.
    from pi0.ript.policy.pi0_policy import PI0Policy
    from pi0.ript.algo.trainer import make_rl_policy
    from pi0.ript.config.schema import load_config

    latest = ckpt.latest_checkpoint(uninterrupted)
    policy = PI0Policy.from_pretrained(latest / "policy", device="cpu")
    cfg = load_config(str(REPO / "pi0/ript/config/learning_demo.yaml"), ["task.replan_steps=5", "algo.num_denoise_steps=3"])
    rl = make_rl_policy(cfg, policy, seed=0)
    ckpt.load_module_state(latest, rl)
    state = final_state(uninterrupted)
    for name, tensor in rl.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    moved = [n for n, t in rl.model.state_dict().items() if not torch.equal(t, PI0Policy.from_pretrained(bc_policy, device="cpu").model.state_dict()[n])]
    assert moved  # training changed the weights that were saved
    optimizer_state = torch.load(latest / "optimizer.pt", map_location="cpu", weights_only=False)["optimizer"]
    assert optimizer_state["state"] and all(isinstance(k, str) for k in optimizer_state["state"])  # keyed by name

    # Resuming with the other strategy: one line, exit code 2, nothing written.
    before = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "pi0.ript.algo.trainer", "--config", str(REPO / "pi0/ript/config/learning_demo.yaml"),
         "--resume", f"policy.checkpoint_path={bc_policy}", f"train.output_dir={uninterrupted}",
         "train.num_iterations=3", "train.strategy=replicated", "policy.device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "written with train.strategy=fsdp" in errors[0] and "resume with train.strategy=fsdp" in errors[0]
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == before
