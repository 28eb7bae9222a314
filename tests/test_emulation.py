"""The GPU-box emulation of `pi0-ript bench` (issue 17): reach's step-time model and the latency policy's call-time
model. The sleeps are recorded, not timed, so these tests are exact and fast."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import reach_config
from pi0.ript.bench.policies import LatencyPolicy
from pi0.ript.config.schema import ConfigError, load_config
from pi0.ript.env import reach_sim
from pi0.ript.env.factory import make_env_spec
from pi0.ript.env.sim import NOOP_ACTION
from pi0.ript.policy.small_policy import SmallPolicy


@pytest.fixture
def sleeps(monkeypatch):
    recorded = []
    monkeypatch.setattr(reach_sim.time, "sleep", recorded.append)
    return recorded


def test_step_time_model_comes_from_config_and_charges_render_only_when_rendered(sleeps):
    cfg = reach_config("task.emulated_step_ms=31", "task.emulated_render_ms=14", "task.num_wait_steps=2")
    env = make_env_spec(cfg).make()
    env.reset(0, 0)
    assert sleeps == pytest.approx([0.031, 0.031, 0.045])  # two settle steps, then the rendered first observation
    sleeps.clear()
    env.step(NOOP_ACTION, want_observation=False)
    env.step(NOOP_ACTION, want_observation=True)
    assert sleeps == pytest.approx([0.031, 0.045])


def test_without_render_on_demand_every_step_pays_the_render(sleeps):
    env = make_env_spec(reach_config("task.emulated_step_ms=31", "task.emulated_render_ms=14", "task.render_on_demand=false")).make()
    env.reset(0, 0)
    sleeps.clear()
    result = env.step(NOOP_ACTION, want_observation=False)
    assert sleeps == pytest.approx([0.045]) and result.observation is None


def test_step_time_model_is_off_by_default_and_never_changes_an_episode(sleeps):
    plain, emulated = (make_env_spec(reach_config(*o)).make() for o in ([], ["task.emulated_step_ms=5"]))
    a, b = plain.reset(1, 3), emulated.reset(1, 3)
    for key in a.observation:
        np.testing.assert_array_equal(a.observation[key], b.observation[key])
    action = np.array([0.3, -0.2, 0.1, 0, 0, 0, 1.0])
    ra, rb = plain.step(action, True), emulated.step(action, True)
    assert (ra.reward, ra.success) == (rb.reward, rb.success)
    np.testing.assert_array_equal(ra.observation["eef_pos"], rb.observation["eef_pos"])
    assert sleeps == pytest.approx([0.005, 0.005])  # only the emulated env slept


@pytest.mark.parametrize("override, message", [
    ("task.emulated_step_ms=-1", "task.emulated_step_ms=-1.0 must be >= 0"),
    ("task.emulated_render_ms=-2", "task.emulated_render_ms=-2.0 must be >= 0"),
    ("runner.inference_groups=-1", "runner.inference_groups=-1 must be >= 0"),
])
def test_bad_emulation_keys_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        reach_config(override)


def test_only_reach_emulates_step_time():
    with pytest.raises(ConfigError, match="task.emulated_step_ms: only the built-in reach task"):
        load_config(None, ["task.benchmark_name=libero_spatial", "task.emulated_step_ms=31"])


def test_latency_policy_sleeps_to_a_plus_c_times_the_batch(monkeypatch):
    recorded = []
    from pi0.ript.bench import policies as bench_policies

    monkeypatch.setattr(bench_policies.time, "sleep", recorded.append)
    clock = iter([10.0, 10.0, 20.0, 20.0])  # the inner policy takes no time on this clock
    monkeypatch.setattr(bench_policies.time, "perf_counter", lambda: next(clock))
    policy = LatencyPolicy(SmallPolicy(chunk_size=4, seed=0), 0.140, 0.008)
    env = make_env_spec(reach_config()).make()
    obs = env.reset(0, 0).observation
    out = policy.predict_chunks([obs] * 14, ["x"] * 14)
    policy.predict_chunks([obs] * 7, ["x"] * 7)
    assert out.actions.shape == (14, 4, 7)
    assert recorded == pytest.approx([0.140 + 14 * 0.008, 0.140 + 7 * 0.008])
    with pytest.raises(ValueError, match="per_sample_s=-0.001"):
        LatencyPolicy(policy.policy, 0.1, -0.001)
