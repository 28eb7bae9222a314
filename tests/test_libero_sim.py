"""LiberoSim on real LIBERO: render on demand, fast reset and the single forward pass change no episode, bit for bit.

Each equivalence test runs the same episodes twice in one process, one env at a time: once the plain LIBERO way
(render every step, hard reset every episode, robosuite's three forward passes per physics substep, every scene
compiled) and once with the features on, with a fixed pseudo-random action sequence per episode, several episodes in a
row in one env, revisiting an init state. One task per LIBERO problem class the shipped suites use
(libero_reset.VERIFIED_ENV_CLASSES), with tasks whose bddl sets an articulated object's state (a cabinet drawer open,
...): LIBERO adds one more property sampler per hard reset, whose count the sim sets at every reset (both paths
alike), so that scenes do not depend on the env's history. Small images and short horizons keep it about a minute per
task on a 2-core CPU.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pi0.ript.env.libero_reset import VERIFIED_ENV_CLASSES
from pi0.ript.env.libero_sim import LiberoEnvSpec
from pi0.ript.env.sim import OBS_KEYS

pytestmark = pytest.mark.libero

IMAGE = 64
STEPS = 20  # policy steps per episode
REPLAN = 5  # the policy reads an observation every REPLAN steps, as openpi's LIBERO setup does
INIT_STATES = (0, 1, 0)  # episodes in a row in one env, revisiting init state 0 after another one


def _actions(episode: int) -> np.ndarray:
    """A fixed pseudo-random action sequence per episode (gripper commands at +-1, as policies emit)."""
    a = np.random.default_rng(1000 + episode).uniform(-1.0, 1.0, size=(STEPS, 7))
    a[:, -1] = np.where(a[:, -1] >= 0, 1.0, -1.0)
    return a


def _run(spec: LiberoEnvSpec, task_id: int) -> tuple[list[dict], int, int, str, int]:
    """Episodes as the policy sees them: every observation it is given (reset + every REPLAN-th step), success per
    step, whether the reset was hard, how many property samplers LIBERO's reset ran. Returns them, the number of renders
    the env counted, the env's problem class and, with skip_repeated_forward, how many of the steps' physics substeps skipped
no repeated forward pass and how many ran a whole mj_step."""
    sim = spec.make()
    try:
        episodes = []
        for ep, init in enumerate(INIT_STATES):
            r = sim.reset(task_id, init)
            samplers = len(sim._robosuite_env.object_property_initializers)
            observations, successes = [r.observation], []
            for t, action in enumerate(_actions(ep)):
                want = (t + 1) % REPLAN == 0
                s = sim.step(action, want_observation=want)
                successes.append(s.success)
                assert (s.observation is not None) == want
                if want:
                    observations.append(s.observation)
            episodes.append({"obs": observations, "success": successes, "hard": r.hard_reset, "samplers": samplers})
        env = sim._robosuite_env
        substeps = round(env.control_timestep / env.model_timestep)
        skip = sim._forward_skip
        steps = len(INIT_STATES) * (STEPS + spec.num_wait_steps)
        # substeps that skipped no repeated forward pass; substeps left as one mj_step
        savings = (steps * substeps - skip.skipped, steps * substeps - skip.split_steps) if skip is not None else None
        return episodes, sim.render_count(), sim.camera_render_count(), type(env).__name__, savings
    finally:
        sim.close()


def _assert_identical(plain: list[dict], fast: list[dict]) -> None:
    assert len(plain) == len(fast)
    for ep, (a, b) in enumerate(zip(plain, fast)):
        assert a["success"] == b["success"], f"episode {ep}: success differs"
        assert a["samplers"] == b["samplers"], f"episode {ep}: property samplers {a['samplers']} vs {b['samplers']}"
        assert len(a["obs"]) == len(b["obs"])
        for j, (oa, ob) in enumerate(zip(a["obs"], b["obs"])):
            for k in OBS_KEYS:
                assert oa[k].dtype == ob[k].dtype and oa[k].shape == ob[k].shape, (ep, j, k)
                assert np.array_equal(oa[k], ob[k]), f"episode {ep} observation {j} {k}: max diff " + str(
                    np.abs(oa[k].astype(np.float64) - ob[k].astype(np.float64)).max()
                )


# (suite, task, problem class, property samplers per reset): one task per class the shipped suites use.
CASES = [
    ("libero_spatial", 4, "Libero_Tabletop_Manipulation", 1),  # (Open wooden_cabinet_1_top_region)
    ("libero_goal", 5, "Libero_Tabletop_Manipulation", 0),
    ("libero_object", 0, "Libero_Floor_Manipulation", 0),
    ("libero_10", 3, "Libero_Kitchen_Tabletop_Manipulation", 1),  # (Open white_cabinet_1_bottom_region)
    ("libero_10", 0, "Libero_Living_Room_Tabletop_Manipulation", 0),
    ("libero_10", 5, "Libero_Study_Tabletop_Manipulation", 0),
]


def test_every_verified_class_has_a_case():
    assert VERIFIED_ENV_CLASSES == {cls for _, _, cls, _ in CASES}


@pytest.mark.parametrize("suite,task_id,env_class,samplers", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_features_on_equal_features_off_bit_for_bit(suite, task_id, env_class, samplers):
    plain_spec = LiberoEnvSpec(suite, image_size=IMAGE, render_on_demand=False, fast_reset=False, skip_repeated_forward=False,
                               model_cache_gb=0)  # stock LIBERO: every scene compiled
    fast_spec = LiberoEnvSpec(suite, image_size=IMAGE, render_on_demand=True, fast_reset=True, skip_repeated_forward=True)
    plain, _, _, cls, _ = _run(plain_spec, task_id)
    fast, renders, camera_renders, _, (substeps_without_skip, whole_mj_steps) = _run(fast_spec, task_id)

    assert cls == env_class
    # Stock LIBERO runs k+2 copies of each property sampler at episode k's reset (the constructor's and k+1 hard model
    # loads); with reset_seeding=episode every reset runs a fresh env's first reset's count, on both paths.
    assert [e["samplers"] for e in plain] == [samplers * 2] * len(INIT_STATES)

    assert [e["hard"] for e in plain] == [True] * len(INIT_STATES)
    assert [e["hard"] for e in fast] == [False] * len(INIT_STATES)  # the fast path really ran, first episode too
    # The controller's repeated forward pass skipped in every substep but the first after each reset, which has none
    # (the controller the reset made holds that state's values already); mj_step split in every substep but the
    # first of each control step (robosuite's own calls there).
    assert substeps_without_skip == len(INIT_STATES)
    assert whole_mj_steps == len(INIT_STATES) * (STEPS + fast_spec.num_wait_steps)
    _assert_identical(plain, fast)

    # (b) render on demand renders exactly the observations returned: once per reset, once per wanted step.
    n_obs = sum(len(e["obs"]) for e in fast)
    assert renders == n_obs
    assert camera_renders == 2 * n_obs  # agentview + wrist, nothing else rendered behind our back

    # Sanity: observations are owned, contiguous and of the contract's dtypes and shapes.
    o = fast[-1]["obs"][-1]
    assert o["agentview_image"].shape == (IMAGE, IMAGE, 3) and o["agentview_image"].dtype == np.uint8
    assert o["wrist_image"].shape == (IMAGE, IMAGE, 3) and o["wrist_image"].dtype == np.uint8
    assert o["eef_pos"].shape == (3,) and o["eef_quat"].shape == (4,) and o["gripper_qpos"].shape == (2,)
    assert all(v.flags.c_contiguous and v.flags.owndata for v in o.values())
    assert o["agentview_image"].any() and o["wrist_image"].any()  # a real render, not the black placeholder


def test_episode_seeding_ignores_the_envs_reset_history():
    """reset_seeding=episode on a task with a property sampler (libero_spatial task 4 opens a cabinet drawer): the same
    init state gives the same scene in a fresh env and in one that ran other episodes before (hard resets, where stock
    LIBERO's sampler list grows), so fixtures do not move with a worker's history."""
    spec = LiberoEnvSpec("libero_spatial", image_size=IMAGE, fast_reset=False)
    fresh = spec.make()
    try:
        first = fresh.reset(4, 1).observation
    finally:
        fresh.close()
    used = spec.make()
    try:
        used.reset(4, 0)
        used.reset(4, 0)
        later = used.reset(4, 1).observation
        samplers = len(used._robosuite_env.object_property_initializers)
    finally:
        used.close()
    for k in OBS_KEYS:
        assert np.array_equal(first[k], later[k]), f"{k}: max diff " + str(
            np.abs(first[k].astype(np.float64) - later[k].astype(np.float64)).max()
        )
    assert samplers == 2  # a fresh env's first reset's count (constructor + one model load), not stock LIBERO's 4


def test_spec_pickles_and_answers_without_building_an_env():
    spec = LiberoEnvSpec("libero_goal", image_size=128, seed=3, num_wait_steps=5, fast_render=True)
    back = pickle.loads(pickle.dumps(spec))
    assert back == spec and hash(back) == hash(spec)
    assert spec.num_tasks() == 10
    assert spec.num_init_states(0) == 50
    assert spec.task_name(0) == "open_the_middle_drawer_of_the_cabinet"
    assert spec.instruction(0) == "open the middle drawer of the cabinet"


def test_bad_values_give_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown LIBERO suite 'libero_nope': allowed libero_spatial, .*libero_90") as e:
        LiberoEnvSpec("libero_nope")
    assert "\n" not in str(e.value)
    spec = LiberoEnvSpec("libero_spatial", image_size=IMAGE)
    with pytest.raises(ValueError, match=r"task_id 10 is out of range for libero_spatial: allowed 0\.\.9"):
        spec.instruction(10)
    with pytest.raises(ValueError, match=r"init state index 50 is out of range for libero_spatial task 0: allowed 0\.\.49"):
        spec.init_state(0, 50)
    sim = spec.make()  # no env is built until reset, so these checks are cheap
    try:
        with pytest.raises(ValueError, match=r"task_id -1 is out of range"):
            sim.reset(-1, 0)
        with pytest.raises(ValueError, match=r"init state index 99 is out of range"):
            sim.reset(0, 99)
        with pytest.raises(ValueError, match=r"pass an index or a flat state array of length 92"):
            sim.reset(0, np.zeros(5))
    finally:
        sim.close()
