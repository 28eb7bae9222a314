"""The built-in reach task: SimEnv contract, determinism, the scripted demonstrator solves it, and it is fast."""

import pickle
import time

import numpy as np
import pytest

from pi0.ript.env.reach_sim import ReachEnvSpec, scripted_action
from pi0.ript.env.sim import NOOP_ACTION, OBS_KEYS


def test_observation_matches_libero_layout():
    spec = ReachEnvSpec(image_size=32)
    env = pickle.loads(pickle.dumps(spec)).make()
    reset = env.reset(1, 0)
    obs = reset.observation
    assert set(obs) == set(OBS_KEYS)
    assert obs["agentview_image"].shape == (32, 32, 3) and obs["agentview_image"].dtype == np.uint8
    assert obs["wrist_image"].shape == (32, 32, 3) and obs["wrist_image"].dtype == np.uint8
    assert obs["eef_pos"].shape == (3,) and obs["eef_quat"].shape == (4,) and obs["gripper_qpos"].shape == (2,)
    assert "green" in reset.instruction and reset.task_name == "reach_green"
    assert spec.num_tasks() == 3 and spec.num_init_states(0) == 50


def test_init_states_are_deterministic_and_distinct():
    env_a, env_b = ReachEnvSpec().make(), ReachEnvSpec().make()
    a = env_a.reset(0, 7).observation
    b = env_b.reset(0, 7).observation
    np.testing.assert_array_equal(a["agentview_image"], b["agentview_image"])
    c = env_a.reset(0, 8).observation
    assert not np.array_equal(a["agentview_image"], c["agentview_image"])
    state = ReachEnvSpec().init_state(0, 7)
    np.testing.assert_array_equal(env_b.reset(0, state).observation["eef_pos"], a["eef_pos"])


def test_physics_does_not_depend_on_rendering():
    env_a, env_b = ReachEnvSpec().make(), ReachEnvSpec().make()
    env_a.reset(2, 3)
    env_b.reset(2, 3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-1, 1, size=7)
        ra, rb = env_a.step(action, want_observation=True), env_b.step(action, want_observation=False)
        assert rb.observation is None and ra.success == rb.success and ra.reward == rb.reward
    np.testing.assert_allclose(env_a.eef_position(), env_b.eef_position())
    assert env_b.render_count() == 1  # only the reset observation


def test_scripted_demonstrator_always_succeeds_and_noop_never_does():
    spec = ReachEnvSpec()
    env = spec.make()
    for task in range(spec.num_tasks()):
        for index in range(10):
            env.reset(task, index)
            assert not any(env.step(NOOP_ACTION, False).success for _ in range(5))
            assert any(env.step(scripted_action(env), False).success for _ in range(30)), (task, index)


def test_rejects_bad_inputs():
    env = ReachEnvSpec().make()
    with pytest.raises(ValueError, match="task_id"):
        env.reset(5, 0)
    with pytest.raises(ValueError, match="index"):
        env.reset(0, 50)
    env.reset(0, 0)
    with pytest.raises(ValueError, match="action shape"):
        env.step(np.zeros(3), True)


def test_fast():
    env = ReachEnvSpec(image_size=64).make()
    env.reset(0, 0)
    start = time.process_time()  # CPU time of this process: other jobs sharing the cores do not make it flaky
    for _ in range(1000):
        env.step(np.zeros(7), want_observation=True)
    assert 1000 / max(time.process_time() - start, 1e-9) > 500  # ~2-3k/s with rendering here; generous for slow CI


def test_expert_chunk_is_the_demonstrators_next_actions_and_leaves_the_env_alone():
    """Behaviour cloning reads demonstrations through `expert_chunk`: the actions `scripted_action` would take from
    here, step after step, while the env itself stays where it is."""
    from pi0.ript.env.reach_sim import ReachEnvSpec, scripted_action

    env = ReachEnvSpec().make()
    env.reset(1, 2)
    env.step(np.array([0.5, -0.3, 0.0, 0, 0, 0, -1.0]), want_observation=False)
    before = env.eef_position().copy()
    chunk = env.expert_chunk(6)
    assert chunk.shape == (6, 7) and np.array_equal(env.eef_position(), before)
    for action in chunk:
        assert np.array_equal(action, scripted_action(env))
        env.step(action, want_observation=False)
    env.close()


@pytest.mark.parametrize("upside_down", [False, True])
def test_saved_videos_are_turned_upright_only_for_envs_that_render_upside_down(upside_down, tmp_path):
    """LIBERO's frames are turned by 180 degrees when saved; reach's are drawn upright and saved as they are."""
    import imageio.v2 as imageio

    from pi0.ript.env.episode import Episode
    from pi0.ript.env.libero_sim import LiberoEnvSpec
    from pi0.ript.evaluate import _save_video

    assert ReachEnvSpec.renders_upside_down is False and LiberoEnvSpec.renders_upside_down is True
    frame = np.zeros((32, 32, 3), dtype=np.uint8)
    frame[:16] = 255  # white top half
    episode = Episode(task_id=0, task_name="t", instruction="i", init_state_index=0, rollout_index=0, success=True,
                      steps=2, total_reward=1.0, frames=[frame, frame])
    _save_video(episode, tmp_path, fps=5, upside_down=upside_down)
    saved = imageio.mimread(next(tmp_path.glob("*.mp4")))[0].astype(float)
    top, bottom = saved[:16].mean(), saved[16:].mean()
    assert (top < bottom) if upside_down else (top > bottom)
