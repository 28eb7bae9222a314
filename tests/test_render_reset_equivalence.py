"""Render on demand, fast reset, the single forward pass per physics substep and the compiled-scene cache change no
episode: the parallel runner with a deterministic policy gives the same episodes with the four on as with the four
off — success, steps, every executed action and every observation the policy was given, bit for bit — over several
episodes in a row in one worker, revisiting an init state, on two suites. And the worker renders exactly the
observations the policy reads."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import libero_config
from pi0.ript.env.episode import EpisodeRequest
from pi0.ript.env.parallel_runner import PI0LiberoRunner
from pi0.ript.env.sim import OBS_KEYS
from pi0.ript.policy.small_policy import SmallPolicy

pytestmark = pytest.mark.libero

POLICY = SmallPolicy(chunk_size=10, seed=7, action_scale=1.0)


def _run(suite: str, task_id: int, features: str):
    cfg = libero_config(
        f"task.benchmark_name={suite}", "task.num_parallel_envs=1", "task.max_episode_length=11", "task.replan_steps=4",
        f"task.render_on_demand={features}", f"task.fast_reset={features}", f"task.skip_repeated_forward={features}",
        f"task.model_cache_gb={8 if features == 'true' else 0}",
    )
    requests = [EpisodeRequest(task_id, 0), EpisodeRequest(task_id, 1), EpisodeRequest(task_id, 0)]
    with PI0LiberoRunner(POLICY, config=cfg) as runner:
        episodes = sorted(runner.run_episodes(requests), key=lambda e: e.request_id)
        renders = runner.start_workers()[0].call("render_count", timeout=60)
        scene_models = runner.stats.scene_models
    return episodes, renders, scene_models


@pytest.mark.parametrize("suite, task_id", [("libero_spatial", 0), ("libero_goal", 5)])
def test_features_on_and_off_give_identical_episodes(suite, task_id, no_orphans):
    on, renders_on, scenes_on = _run(suite, task_id, "true")
    off, _, scenes_off = _run(suite, task_id, "false")
    assert sum(scenes_on.values()) == 1  # one env build, loaded or (the first time) compiled, then fast resets
    assert scenes_off == {"loaded": 0, "compiled": 4}  # the build and three hard resets
    assert [e.hard_reset for e in on] == [False, False, False]  # the fast path really ran, the first episode's too
    assert all(e.hard_reset for e in off)
    for a, b in zip(on, off):
        assert (a.success, a.steps) == (b.success, b.steps)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert len(a.inference) == len(b.inference) == 3
        for ra, rb in zip(a.inference, b.inference):
            assert ra.step == rb.step
            for key in OBS_KEYS:
                np.testing.assert_array_equal(ra.observation[key], rb.observation[key], err_msg=f"{key} at step {ra.step}")
    # episode 3 revisits episode 1's init state: the same episode again
    np.testing.assert_array_equal(on[0].actions, on[2].actions)
    # one render per observation the policy was given (no episode succeeded, so none was rendered in vain)
    assert not any(e.success for e in on)
    assert renders_on == sum(len(e.inference) for e in on)
