"""eval.protocol presets: they resolve and explicit keys win (fast, no simulator), and the `openpi` preset reproduces
openpi's own loop exactly while episodes run in parallel (real LIBERO, real worker processes).

The reference is this file's own copy of openpi's examples/libero/main.py loop, reduced to what decides an episode:
one env per task, `env.seed(7)` once, then for each episode reset -> set init state -> 10 no-op steps -> the policy's
chunks, 5 actions each, until success or the step limit. Its scenes depend on the order of the episodes (every reset
continues the random stream `env.seed` started), so the parallel run must place each episode at its position in that
stream, revisited init state included, while two workers take the episodes in whatever order they free up.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from conftest import libero_config, reach_config
from pi0.ript.config.schema import ConfigError, load_config, max_episode_length
from pi0.ript.env.episode import EpisodeRequest, PositionedInitState
from pi0.ript.env.parallel_runner import PI0LiberoRunner
from pi0.ript.env.sim import OBS_KEYS
from pi0.ript.policy.protocol import PolicyOutput

# ------------------------------------------------------------------------------------------------- presets (fast)


def test_presets_resolve_and_explicit_keys_win(tmp_path):
    ript = load_config(None, ["task.benchmark_name=libero_goal"])
    assert ript.eval.protocol == "ript"
    assert (ript.task.seed, ript.task.reset_seeding, ript.task.replan_steps, ript.task.num_wait_steps) == (0, "episode", 5, 10)
    assert (ript.eval.episodes_per_task, max_episode_length(ript)) == (10, 300)

    openpi = load_config(None, ["task.benchmark_name=libero_spatial", "eval.protocol=openpi"])
    assert (openpi.task.seed, openpi.task.reset_seeding, openpi.task.replan_steps, openpi.task.num_wait_steps) == (7, "task_stream", 5, 10)
    assert (openpi.task.image_size, openpi.eval.episodes_per_task, openpi.eval.init_state_offset) == (256, 50, 0)
    assert max_episode_length(openpi) == 220  # openpi's libero_spatial horizon

    lerobot = load_config(None, ["task.benchmark_name=libero_spatial", "eval.protocol=lerobot", f"policy.checkpoint_path={tmp_path / 'none'}"])
    assert (lerobot.task.seed, lerobot.task.reset_seeding, lerobot.task.replan_steps) == (1000, "seed_plus_position", 50)
    assert max_episode_length(lerobot) == 280  # LeRobot's libero_spatial horizon
    assert max_episode_length(load_config(None, ["task.benchmark_name=libero_10_lan", "eval.protocol=lerobot"])) == 520

    # LeRobot executes its checkpoint's n_action_steps per chunk: the preset reads it from the checkpoint's config.json
    (tmp_path / "config.json").write_text(json.dumps({"type": "pi05", "n_action_steps": 10}))
    assert load_config(None, ["eval.protocol=lerobot", f"policy.checkpoint_path={tmp_path}"]).task.replan_steps == 10

    # explicit keys override the preset, from the command line and from a file
    over = load_config(None, ["eval.protocol=openpi", "task.replan_steps=10", "task.seed=3", "task.max_episode_length=12"])
    assert (over.task.replan_steps, over.task.seed, max_episode_length(over)) == (10, 3, 12)
    assert over.task.reset_seeding == "task_stream" and over.eval.episodes_per_task == 50  # the rest still preset
    yaml = tmp_path / "eval.yaml"
    yaml.write_text("eval:\n  protocol: openpi\n  episodes_per_task: 3\ntask:\n  benchmark_name: libero_goal\n  num_wait_steps: 4\n")
    from_file = load_config(yaml, ["task.replan_steps=8"])
    assert (from_file.eval.episodes_per_task, from_file.task.num_wait_steps, from_file.task.replan_steps, from_file.task.seed) == (3, 4, 8, 7)
    # a preset that the file sets can be overridden back on the command line
    assert load_config(yaml, ["eval.protocol=ript"]).task.seed == 0

    with pytest.raises(ConfigError, match=r"eval.protocol='openpy': use ript, openpi, lerobot"):
        load_config(None, ["eval.protocol=openpy"])
    with pytest.raises(ConfigError, match=r"task.reset_seeding='stream': use episode, task_stream, seed_plus_position"):
        load_config(None, ["task.reset_seeding=stream"])
    with pytest.raises(ConfigError, match=r"reach takes eval.protocol=ript"):
        reach_config("eval.protocol=openpi")


def test_protocol_json_records_the_preset_and_old_directories_resume(tmp_path):
    from pi0.ript.evaluate import _check_resumable

    protocol = {"protocol": "ript", "benchmark_name": "libero_goal", "seed": 0, "reset_seeding": "episode",
                "policy_noise": "stream", "simulator": {}}
    path = tmp_path / "protocol.json"
    # written before presets and eval.policy_noise existed: no protocol / reset_seeding / policy_noise keys, meaning
    # pi0-ript's own and the policy's noise stream; it resumes as that
    path.write_text(json.dumps({"benchmark_name": "libero_goal", "seed": 0, "simulator": {}}))
    _check_resumable(path, dict(protocol, simulator={}), 0)
    # ... but not as an openpi run, nor with per-episode noise (today's default): the error names the first key
    with pytest.raises(ConfigError, match="holds results of a different protocol .*: protocol \"ript\" there, \"openpi\" now"):
        _check_resumable(path, dict(protocol, protocol="openpi", seed=7, reset_seeding="task_stream", simulator={}), 0)
    with pytest.raises(ConfigError, match='policy_noise "stream" there, "per_episode" now.*or set the key back to resume'):
        _check_resumable(path, dict(protocol, policy_noise="per_episode", simulator={}), 0)


def test_stream_position_travels_inside_the_init_state():
    import dataclasses
    import pickle

    request = EpisodeRequest(2, 1, stream_position=3)
    assert request.init_state == 1 and request.init_state_index == 1 and type(request.init_state_index) is int
    copy = pickle.loads(pickle.dumps(dataclasses.replace(request, request_id=4).init_state))
    assert isinstance(copy, PositionedInitState) and (int(copy), copy.stream_position) == (1, 3)
    assert EpisodeRequest(2, 1).stream_position is None
    with pytest.raises(ValueError, match="needs an init-state index"):
        EpisodeRequest(2, np.zeros(3), stream_position=1)


# --------------------------------------------------------------------------------- openpi's loop (real LIBERO)

SUITE, TASK = "libero_goal", 2  # a task whose fixtures (stove, cabinet, wine rack) move with the reset draws
IMAGE = 64
STEPS = 10  # policy steps per episode
REPLAN, WAIT, SEED = 5, 10, 7  # openpi's
# Episodes in openpi's order: init state k at position k, then init state 1 again at position 3 (another scene)
SEQUENCE = (0, 1, 2, 1)
# (suite, task, episodes in openpi's order: init state k at position k, then init state 1 again at the last position)
OPENPI_CASES = [
    (SUITE, TASK, SEQUENCE),
    # a property sampler (the cabinet drawer opened): openpi's env runs one more copy at every reset, so each position
    # draws its fixtures after one number more than the one before
    ("libero_spatial", 4, (0, 1, 1)),
]


class StateFeedback:
    """Deterministic, and reads every part of the observation: the arm steers toward a point, the wrist turns with
    the agent-view image's mean brightness, the gripper follows its own opening. Different images -> other actions."""

    action_dim, chunk_size = 7, 8
    target = np.array([-0.05, 0.05, 1.05])

    def chunk(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        a = np.zeros(7)
        a[:3] = np.clip(8.0 * (self.target - obs["eef_pos"]), -1.0, 1.0)
        a[3] = (obs["agentview_image"].mean() / 255.0 - 0.5) * 0.5
        a[4] = (obs["wrist_image"].mean() / 255.0 - 0.5) * 0.5
        a[5] = float(obs["eef_quat"][0]) * 0.1
        a[6] = 1.0 if obs["gripper_qpos"][0] > 0.02 else -1.0
        return np.stack([a * (1.0 - 0.05 * i) for i in range(self.chunk_size)])

    def predict_chunks(self, observations, instructions) -> PolicyOutput:
        return PolicyOutput(actions=np.stack([self.chunk(o) for o in observations]))


def _openpi_loop(policy: StateFeedback, suite_name: str, task_id: int, sequence: tuple[int, ...]) -> list[dict]:
    """openpi's examples/libero/main.py for one task, minus the websocket, the resizing and the video."""
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv
    import os

    np.random.seed(SEED)
    task = benchmark.get_benchmark_dict()[suite_name]().get_task(task_id)
    initial_states = benchmark.get_benchmark_dict()[suite_name]().get_task_init_states(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=IMAGE, camera_widths=IMAGE)
    env.seed(SEED)
    episodes = []
    try:
        for init in sequence:
            env.reset()
            plan = collections.deque()
            obs = env.set_init_state(initial_states[init])
            seen, actions, done, t = [], [], False, 0
            while t < STEPS + WAIT:
                if t < WAIT:
                    obs, _, done, _ = env.step([0.0] * 6 + [-1.0])
                    t += 1
                    continue
                if not plan:
                    o = {"agentview_image": obs["agentview_image"].copy(), "wrist_image": obs["robot0_eye_in_hand_image"].copy(),
                         "eef_pos": obs["robot0_eef_pos"].copy(), "eef_quat": obs["robot0_eef_quat"].copy(),
                         "gripper_qpos": obs["robot0_gripper_qpos"].copy()}
                    seen.append(o)
                    plan.extend(policy.chunk(o)[:REPLAN])
                action = plan.popleft()
                obs, _, done, _ = env.step(action.tolist())
                actions.append(action)
                if done:
                    break
                t += 1
            episodes.append({"observations": seen, "actions": np.array(actions), "success": bool(done), "steps": len(actions)})
    finally:
        env.close()
    return episodes


@pytest.mark.libero
@pytest.mark.parametrize("suite,task_id,sequence", OPENPI_CASES, ids=[f"{c[0]}-{c[1]}" for c in OPENPI_CASES])
def test_openpi_preset_in_parallel_equals_openpis_serial_loop(suite, task_id, sequence, tmp_path, monkeypatch, no_orphans):
    monkeypatch.setenv("PI0_RIPT_CACHE", str(tmp_path / "cache"))  # the workers inherit it: a fresh stream cache
    policy = StateFeedback()
    reference = _openpi_loop(policy, suite, task_id, sequence)
    last = len(sequence) - 1
    # the order matters in openpi's loop: init state 1 at the last position is another scene than at position 1
    assert not np.array_equal(reference[1]["observations"][0]["agentview_image"], reference[last]["observations"][0]["agentview_image"])

    cfg = libero_config(
        f"task.benchmark_name={suite}", "eval.protocol=openpi", "task.num_parallel_envs=2", f"task.image_size={IMAGE}",
        "task.fast_render=false", f"task.max_episode_length={STEPS}",
    )
    assert (cfg.task.seed, cfg.task.replan_steps, cfg.task.num_wait_steps, cfg.task.reset_seeding) == (SEED, REPLAN, WAIT, "task_stream")
    # The stream cache already holds every position's entry state (as on a second run), so no worker replays resets
    # in its own env: the worker that runs position 1 first has reset its env fewer times than openpi's env had,
    # and still gets openpi's scene (with the property samplers: their count is set per position, not by history).
    from pi0.ript.env.libero_sim import LiberoEnvSpec

    warm = LiberoEnvSpec(suite, image_size=IMAGE, seed=SEED, reset_seeding="task_stream").make()
    try:
        warm.reset(task_id, last)
        assert warm.replayed_resets == last
    finally:
        warm.close()
    requests = [EpisodeRequest(task_id, init) for init in sequence[:last]]
    requests.append(EpisodeRequest(task_id, sequence[last], stream_position=last))
    with PI0LiberoRunner(policy, config=cfg) as runner:
        episodes = sorted(runner.run_episodes(requests), key=lambda e: e.request_id)
        pids = {p for p in runner.worker_pids()}
    assert len(pids) == 2

    assert [e.init_state_index for e in episodes] == list(sequence)
    for k, (ours, theirs) in enumerate(zip(episodes, reference)):
        assert (ours.success, ours.steps) == (theirs["success"], theirs["steps"]), f"episode {k}"
        np.testing.assert_array_equal(ours.actions, theirs["actions"], err_msg=f"episode {k}: actions")
        assert len(ours.inference) == len(theirs["observations"])
        for record, seen in zip(ours.inference, theirs["observations"]):
            for key in OBS_KEYS:  # the policy's images, bit for bit, and its proprio
                np.testing.assert_array_equal(record.observation[key], seen[key], err_msg=f"episode {k} step {record.step} {key}")
    # the replayed stream is on disk for the next run: one entry state per position
    cached = list((tmp_path / "cache" / "reset_streams" / suite).glob(f"task{task_id:03d}_seed{SEED}.npz"))
    assert len(cached) == 1 and len(np.load(cached[0])["pos"]) >= len(sequence)


# ------------------------------------------------------------------------------- LeRobot's reset (real LIBERO)


@pytest.mark.libero
def test_lerobot_seeding_equals_lerobots_reset():
    """LeRobot's LiberoEnv.reset(seed): `env.seed(seed)` (numpy's global seed), env.reset(), the init state, 10 no-op
    steps; lerobot-eval gives episode k of a task seed 1000 + k and (one reset per sub-env) init state k. Our sim with
    seed_plus_position gives the same scene, out of order and after other episodes."""
    import os

    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    from pi0.ript.env.libero_sim import LiberoEnvSpec

    positions, lerobot_seed = (1, 0), 1000
    suite = benchmark.get_benchmark_dict()[SUITE]()
    task, initial_states = suite.get_task(TASK), suite.get_task_init_states(TASK)
    env = OffScreenRenderEnv(bddl_file_name=os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file),
                             camera_heights=IMAGE, camera_widths=IMAGE)
    reference = []
    try:
        env.reset()  # LiberoEnv._ensure_env resets once, unseeded, when it builds the env
        for k in positions:
            env.seed(lerobot_seed + k)
            env.reset()
            obs = env.set_init_state(initial_states[k])
            for _ in range(WAIT):
                obs, _, _, _ = env.step([0, 0, 0, 0, 0, 0, -1])
            reference.append(obs)
    finally:
        env.close()

    cfg = load_config(None, [f"task.benchmark_name={SUITE}", "eval.protocol=lerobot"])
    assert (cfg.task.seed, cfg.task.num_wait_steps, cfg.task.reset_seeding) == (lerobot_seed, WAIT, "seed_plus_position")
    sim = LiberoEnvSpec(SUITE, image_size=IMAGE, seed=cfg.task.seed, reset_seeding=cfg.task.reset_seeding).make()
    try:
        sim.reset(TASK, 3)  # another episode first: the scene depends on the position only
        ours = [sim.reset(TASK, k).observation for k in positions]
    finally:
        sim.close()
    for k, o, raw in zip(positions, ours, reference):
        np.testing.assert_array_equal(o["agentview_image"], raw["agentview_image"], err_msg=f"position {k}")
        np.testing.assert_array_equal(o["wrist_image"], raw["robot0_eye_in_hand_image"], err_msg=f"position {k}")
        np.testing.assert_array_equal(o["eef_pos"], raw["robot0_eef_pos"], err_msg=f"position {k}")
