"""Checkpoints: resuming continues exactly (same RNG streams, same next iteration, same weights as an uninterrupted
run), and a SIGKILL while a checkpoint is being written never corrupts the last good one."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pi0.ript.algo import checkpoint as ckpt
from pi0.ript.algo.bc import collect_demonstrations, make_reach_policy
from pi0.ript.algo.trainer import train
from pi0.ript.config.schema import load_config
from pi0.ript.env.reach_sim import ReachEnvSpec

IMAGE_SIZE, CHUNK = 28, 5


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    """A random tiny pi0 sized for the reach task (no training needed: only exactness is under test)."""
    spec = ReachEnvSpec(image_size=IMAGE_SIZE)
    demos = collect_demonstrations(spec, range(3), range(2), CHUNK, 20)
    directory = tmp_path_factory.mktemp("policy") / "tiny_reach"
    make_reach_policy(demos, IMAGE_SIZE, CHUNK, seed=0).save_pretrained(directory)
    return directory


def overrides(policy_dir: Path, output_dir: Path, iterations: int, optimizer: str = "ppo", *extra: str) -> list[str]:
    return [
        "task.benchmark_name=reach", f"task.image_size={IMAGE_SIZE}", "task.num_wait_steps=0",
        "task.max_episode_length=10", "task.replan_steps=5", "features.use_ript_vla_runner=false",
        f"policy.checkpoint_path={policy_dir}", "policy.device=cpu",
        f"algo.loss={optimizer}", "algo.rollouts_per_env=2", "algo.num_contexts=2", "algo.num_denoise_steps=3",
        "algo.dynamic_sampling=false", "algo.num_minibatches=2", "algo.update_epochs=1", "algo.kl_coef=0.05",
        "algo.learn_noise_scale=true", f"train.num_iterations={iterations}", "train.learning_rate=1e-3",
        "train.warmup_steps=3", "train.checkpoint_every=1", "train.progress=false", f"train.output_dir={output_dir}",
        *extra,
    ]


def metrics_lines(output_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith("time/") and "per_second" not in k} for m in lines]


# cfg's defaults anchor the null condition to a per-iteration snapshot of the rollout policy; plain CFGRL (null
# guidance base, no anchor, noisy rollouts) is the other path.
CFG_PLAIN = ("algo.cfg_guidance_base=unconditional", "algo.cfg_null_anchor=none", "algo.cfg_rollout_noise=true")


@pytest.mark.parametrize("optimizer, extra", [("ppo", ()), ("cfg", ()), ("cfg", CFG_PLAIN)])
def test_resume_continues_exactly(policy_dir, tmp_path, optimizer, extra):
    straight = train(load_config(None, overrides(policy_dir, tmp_path / "straight", 3, optimizer, *extra)))
    first = train(load_config(None, overrides(policy_dir, tmp_path / "resumed", 2, optimizer, *extra)))
    assert first["iteration"] == 1
    resumed = train(load_config(None, overrides(policy_dir, tmp_path / "resumed", 3, optimizer, *extra)), resume=True)
    assert resumed["iteration"] == 2  # the next iteration, not a repeat and not a restart
    assert resumed["weights_checksum"] == straight["weights_checksum"]
    assert metrics_lines(tmp_path / "resumed") == metrics_lines(tmp_path / "straight")
    a = ckpt.latest_checkpoint(tmp_path / "straight")
    b = ckpt.latest_checkpoint(tmp_path / "resumed")
    for key, tensor in load_file(str(a / "rl_state.safetensors")).items():
        torch.testing.assert_close(load_file(str(b / "rl_state.safetensors"))[key], tensor, rtol=0, atol=0)
    rank_a, rank_b = ckpt.load_rank_state(a, 0), ckpt.load_rank_state(b, 0)
    assert torch.equal(rank_a["rollout_generator"], rank_b["rollout_generator"])
    assert torch.equal(rank_a["update_generator"], rank_b["update_generator"])
    assert rank_a["sampler"] == rank_b["sampler"]


def test_sigkill_during_checkpoint_write_keeps_last_good_one(policy_dir, tmp_path):
    output_dir = tmp_path / "run"
    marker = tmp_path / "writing"
    # The child trains normally, except that the second checkpoint's weight file write stalls half-way (after the
    # bytes are on disk, before the rename), so the SIGKILL lands mid-checkpoint deterministically.
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pi0.ript.algo import checkpoint as ckpt
        from pi0.ript.algo.trainer import train
        from pi0.ript.config.schema import load_config
        real_save, calls = ckpt.save_file, []
        def stalling_save(tensors, path):
            calls.append(path)
            real_save(tensors, path)
            if len(calls) == 2:
                Path({str(marker)!r}).write_text(path)
                time.sleep(600)
        ckpt.save_file = stalling_save
        train(load_config(None, {overrides(policy_dir, output_dir, 5)!r}))
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, "training child exited before reaching the second checkpoint"
            assert time.monotonic() < deadline, "the second checkpoint was never written"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert "iter_000001.tmp" in marker.read_text()
    good = ckpt.latest_checkpoint(output_dir)
    assert good is not None and good.name == "iter_000000"
    assert ckpt.load_trainer_state(good)["iteration"] == 0
    load_file(str(good / "rl_state.safetensors"))  # complete and readable
    resumed = train(load_config(None, overrides(policy_dir, output_dir, 2)), resume=True)
    assert resumed["iteration"] == 1
    assert ckpt.latest_checkpoint(output_dir).name == "iter_000001"
    assert not list((output_dir / "checkpoints").glob("*.tmp"))


def test_debug_mode_narrows_training_like_the_runner(policy_dir, tmp_path):
    """test.debug_mode=true: the trainer draws contexts from the first task only and runs 30-step episodes, the same
    view the runner and the eval get (the trainer used to draw from every task while the runner ran one)."""
    output_dir = tmp_path / "debug"
    cfg = load_config(None, overrides(policy_dir, output_dir, 1, "ppo", "test.debug_mode=true", "task.max_episode_length=80"))
    train(cfg)
    from omegaconf import OmegaConf

    saved = OmegaConf.load(ckpt.latest_checkpoint(output_dir) / "config.yaml")
    assert list(saved.task.task_ids) == [0] and saved.task.max_episode_length == 30
