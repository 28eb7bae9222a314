"""A tiny pi0 end to end through the runners: the reach task in worker processes, and `pi0-ript eval` on real
LIBERO loading a saved tiny checkpoint through the real loader."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, reach_config
from pi0.ript.policy.pi0_policy import make_tiny_policy
from pi0.ript.env.episode import EpisodeRequest
from pi0.ript.env.parallel_runner import PI0LiberoRunner
from pi0.ript.env.serial_runner import LIBEROEnvRunner
from pi0.ript.env.reach_sim import ReachEnvSpec


@pytest.mark.parametrize("runner_cls", [PI0LiberoRunner, LIBEROEnvRunner])
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_tiny_pi0_and_pi05_drive_both_runners(variant, runner_cls, no_orphans):
    spec = ReachEnvSpec()
    policy = make_tiny_policy([spec.instruction(t) for t in range(spec.num_tasks())], image_size=56, seed=0,
                              pi05=variant == "pi05", record_extras=True)
    assert policy.config.variant == variant
    cfg = reach_config("task.num_parallel_envs=2", "task.max_episode_length=12", "task.replan_steps=5")
    with runner_cls(policy, config=cfg) as runner:
        episodes = list(runner.run_episodes([EpisodeRequest(t, i) for t in range(2) for i in range(2)]))
    assert len(episodes) == 4
    for episode in episodes:
        assert episode.steps == 12 and len(episode.inference) == 3
        for record in episode.inference:
            assert record.chunk.shape == (policy.chunk_size, 7) and np.isfinite(record.chunk).all()
            # what RL needs later, stored untouched by the runner
            assert record.extras["noise"].shape == (policy.chunk_size, 32)
            assert record.extras["model_actions"].shape == (policy.chunk_size, 32)


@pytest.mark.libero
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_eval_loads_a_saved_tiny_checkpoint_on_libero(variant, tmp_path, no_orphans):
    """`pi0-ript eval` with policy.kind=auto: the checkpoint's config.json says pi0 or pi0.5, and results.json says
    which ran."""
    from pi0.ript.env.libero_sim import LiberoEnvSpec

    spec = LiberoEnvSpec(benchmark_name="libero_spatial")
    checkpoint = tmp_path / "pi0_libero_pytorch"
    make_tiny_policy([spec.instruction(t) for t in range(spec.num_tasks())], image_size=56,
                     pi05=variant == "pi05").save_pretrained(checkpoint)
    out = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable, "-m", "pi0.ript.cli", "eval", "--config", "pi0/ript/config/ript_vla_test.yaml",
            f"policy.checkpoint_path={checkpoint}", "task.task_ids=[3]", "task.image_size=64", "task.fast_render=true",
            "task.max_episode_length=6", "eval.episodes_per_task=1", f"eval.output_dir={out}",
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["policy"]["kind"] == variant
    assert len(results["protocol"]["policy"]["checkpoint_sha256"]) == 64
    assert results["episodes"] == 1 and results["per_task"]["3"]["episodes"] == 1
    assert "meaningless" not in result.stdout + result.stderr
