"""Both runners on real LIBERO, envs in real worker processes (small images and short episodes: a CPU is slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, libero_config
from pi0.ript.env.episode import EpisodeRequest
from pi0.ript.env.serial_runner import LIBEROEnvRunner
from pi0.ript.env.parallel_runner import PI0LiberoRunner
from pi0.ript.env.sim import OBS_KEYS
from pi0.ript.policy.small_policy import SmallPolicy

pytestmark = pytest.mark.libero


class UnpicklablePolicy(SmallPolicy):
    """Proves the policy never crosses into a worker: pickling it fails loudly."""

    def __reduce__(self):
        raise AssertionError("the policy was pickled: it must stay in the main process")


def test_parallel_runner_matches_serial_runner_on_libero(no_orphans):
    policy = UnpicklablePolicy(chunk_size=10, seed=1)
    cfg = libero_config("task.num_parallel_envs=2", "task.replan_steps=4")
    requests = lambda: [EpisodeRequest(task_id=0, init_state=0), EpisodeRequest(task_id=1, init_state=0), EpisodeRequest(task_id=0, init_state=1)]  # noqa: E731
    with PI0LiberoRunner(policy, config=cfg) as parallel:
        parallel_episodes = {e.request_id: e for e in parallel.run_episodes(requests())}
        worker_stats = [w.call("stats", timeout=60) for w in parallel.start_workers()]
    with LIBEROEnvRunner(policy, config=cfg) as serial:
        serial_episodes = {e.request_id: e for e in serial.run_episodes(requests())}

    assert len(worker_stats) == 2 and len({s["pid"] for s in worker_stats}) == 2
    assert sorted(parallel_episodes) == sorted(serial_episodes) == [0, 1, 2]
    for request_id, episode in parallel_episodes.items():
        other = serial_episodes[request_id]
        assert (episode.task_id, episode.init_state_index, episode.success, episode.steps) == (other.task_id, other.init_state_index, other.success, other.steps)
        np.testing.assert_allclose(episode.actions, other.actions, atol=1e-5)
        assert episode.steps == 12 and len(episode.inference) == 3  # 12 steps, a new chunk every 4
        observation = episode.inference[0].observation
        assert set(observation) == set(OBS_KEYS) and observation["agentview_image"].shape == (64, 64, 3)
        assert "bowl" in episode.instruction


def test_eval_cli_on_libero_writes_results_and_resumes(tmp_path, no_orphans):
    out = tmp_path / "eval"
    command = [
        sys.executable, "-m", "pi0.ript.cli", "eval", "--config", "pi0/ript/config/ript_vla_test.yaml",
        "task.task_ids=[2]", "task.image_size=64", "task.fast_render=true", "task.max_episode_length=8",
        "eval.episodes_per_task=2", f"eval.output_dir={out}", "eval.save_videos=true",
    ]
    first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    protocol = results["protocol"]
    assert protocol["benchmark_name"] == "libero_spatial" and protocol["task_ids"] == [2]
    assert protocol["init_state_indices"] == [0, 1] and protocol["max_episode_length"] == 8
    assert protocol["num_wait_steps"] == 10 and protocol["replan_steps"] == 5 and protocol["image_size"] == 64
    assert protocol["render_on_demand"] is True and protocol["fast_reset"] is True
    assert protocol["policy"]["kind"] == "small" and "meaningless" in first.stdout + first.stderr
    assert results["episodes"] == 2 and results["per_task"]["2"]["episodes"] == 2
    assert len(list((out / "videos").glob("*.mp4"))) == 2
    assert (out / "success.png").stat().st_size > 0

    second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 episodes already" in second.stderr
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2  # nothing ran twice
