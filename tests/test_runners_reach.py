"""Runner behaviour on the built-in reach task: real worker processes, the real runners, a small real torch policy.
The reach env is fast, so these tests can afford many episodes, worker kills and hangs."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from conftest import reach_config
from pi0.ript.env import create_env_runner
from pi0.ript.env.episode import EpisodeRequest
from pi0.ript.env.serial_runner import LIBEROEnvRunner
from pi0.ript.env.parallel_runner import PI0LiberoRunner, WorkerFailuresExhausted
from pi0.ript.env.reach_sim import ReachEnvSpec
from pi0.ript.env.rollout import PolicyActionError
from pi0.ript.env.sim import OBS_KEYS
from pi0.ript.policy.protocol import PolicyOutput
from pi0.ript.policy.small_policy import SmallPolicy

POLICY = SmallPolicy(chunk_size=8, seed=3)


class _Signature(dict):
    """Everything that must agree between two runs of the same requests, keyed by request. Actions agree to 1e-5:
    a batched float32 forward pass may differ from a single-sample one in the last bits."""

    def __eq__(self, other):
        if self.keys() != other.keys():
            return False
        for key, (outcome, actions) in self.items():
            other_outcome, other_actions = other[key]
            if outcome != other_outcome or actions.shape != other_actions.shape or not np.allclose(actions, other_actions, atol=1e-5):
                return False
        return True


def _signature(episodes):
    return _Signature({e.request_id: ((e.task_id, e.init_state_index, e.success, e.steps), e.actions) for e in episodes})


def _requests(n_tasks=2, inits=3):
    return [EpisodeRequest(task_id=t, init_state=i) for t in range(n_tasks) for i in range(inits)]


def test_parallel_and_serial_runners_give_the_same_episodes(no_orphans):
    cfg = reach_config("task.num_parallel_envs=2")
    with LIBEROEnvRunner(POLICY, config=cfg) as serial:
        serial_episodes = list(serial.run_episodes(_requests()))
    with PI0LiberoRunner(POLICY, config=cfg) as parallel:
        parallel_episodes = list(parallel.run_episodes(_requests()))
        assert parallel.stats.env_steps == sum(e.steps for e in parallel_episodes)
    assert len(parallel_episodes) == 6
    assert _signature(serial_episodes) == _signature(parallel_episodes)


@pytest.mark.parametrize("runner_cls", [LIBEROEnvRunner, PI0LiberoRunner])
def test_runners_number_episodes_without_writing_into_the_callers_requests(runner_cls, no_orphans):
    """Episodes carry their position in the request list; the requests handed in are left as they were, so a caller
    can run the same list again (the trainer's evaluation does)."""
    requests = [EpisodeRequest(task_id=t, init_state=0, request_id=7) for t in (1, 0, 1)]
    with runner_cls(POLICY, config=reach_config("task.num_parallel_envs=2", "task.max_episode_length=4")) as runner:
        first = sorted((e.request_id, e.task_id) for e in runner.run_episodes(requests))
        again = sorted((e.request_id, e.task_id) for e in runner.run_episodes(requests))
    assert first == again == [(0, 1), (1, 0), (2, 1)]
    assert [r.request_id for r in requests] == [7, 7, 7]


def test_an_iterator_of_requests_is_read_as_workers_free_up(no_orphans):
    """A list is seen whole; an iterator is read a worker's count at a time, when the pending episodes run out (the
    ranks of one eval hand out work this way), and gives the same episodes, numbered in the order read."""
    cfg = reach_config("task.num_parallel_envs=2")
    read = []

    def handed_out():
        for request in _requests():
            read.append(request)
            yield request

    with PI0LiberoRunner(POLICY, config=cfg) as runner:
        listed = _signature(runner.run_episodes(_requests()))
        episodes = runner.run_episodes(handed_out())
        first = next(episodes)
        read_by_the_first = len(read)
        lazily = _signature([first, *episodes])
    assert read_by_the_first < len(_requests())  # two for the two workers, maybe two more: not all six up front
    assert len(read) == 6 and lazily == listed


def test_overlapped_and_lockstep_inference_give_the_same_episodes(no_orphans):
    results = []
    for overlap in ("true", "false"):
        cfg = reach_config("task.num_parallel_envs=3", f"runner.overlap_inference={overlap}", "task.replan_steps=2")
        with PI0LiberoRunner(POLICY, config=cfg) as runner:
            results.append(_signature(runner.run_episodes(_requests(3, 3))))
    assert results[0] == results[1]


def test_run_policy_in_env_yields_ripts_tuples_and_the_documented_episode(no_orphans):
    cfg = reach_config("task.num_parallel_envs=2", "task.replan_steps=3", "algo.rollouts_per_env=3")
    with create_env_runner(cfg, POLICY) as runner:
        assert isinstance(runner, PI0LiberoRunner)
        outputs = list(runner.run_policy_in_env("reach_green"))
    assert len(outputs) == 3
    assert sorted(e.init_state_index for _, _, e in outputs) == [0, 1, 2]  # distinct init states by default
    for success, total_reward, episode in outputs:
        assert (success, total_reward) == (episode.success, episode.total_reward)
        assert episode.task_id == 1 and episode.instruction and episode.task_name == "reach_green"
        assert episode.steps == len(episode.actions) == sum(len(r.executed_actions) for r in episode.inference)
        assert all(len(r.executed_actions) <= 3 for r in episode.inference)
        first = episode.inference[0]
        assert set(first.observation) == set(OBS_KEYS) and first.step == 0 and first.chunk.shape == (8, 7)
        np.testing.assert_array_equal(first.executed_actions, first.chunk[: len(first.executed_actions)])


def test_k_rollouts_of_one_init_state_and_explicit_init_states(no_orphans):
    cfg = reach_config("task.num_parallel_envs=2")
    with PI0LiberoRunner(POLICY, config=cfg) as runner:
        repeated = [e for _, _, e in runner.run_policy_in_env(0, all_init_states=[4, 4, 4, 7])]
        states = np.stack([runner.env_spec.init_state(0, 4), runner.env_spec.init_state(0, 7)])
        explicit = [e for _, _, e in runner.run_policy_in_env(0, all_init_states=states)]
    assert sorted((e.init_state_index, e.rollout_index) for e in repeated) == [(4, 0), (4, 1), (4, 2), (7, 3)]
    # a deterministic policy from the same init state repeats itself
    by_rollout = {e.rollout_index: e for e in repeated}
    assert np.allclose(by_rollout[0].actions, by_rollout[2].actions, atol=1e-5)
    by_explicit = {e.rollout_index: e for e in explicit}
    assert np.allclose(by_explicit[0].actions, by_rollout[0].actions, atol=1e-5)
    assert np.allclose(by_explicit[1].actions, by_rollout[3].actions, atol=1e-5)
    assert all(e.init_state_index is None for e in explicit)


def test_tasks_are_sharded_over_ranks_round_robin():
    cfg = reach_config("task.task_ids=[0,1,2]")
    shards = [create_env_runner(cfg, POLICY, rank=r, world_size=2).task_ids for r in range(2)]
    assert shards == [[0, 2], [1]]


class _BadPolicy:
    """Returns a bad chunk ("nan": NaN for the green-target task; "shape": 6-dim actions for every env)."""

    action_dim, chunk_size = 7, 4

    def __init__(self, bad: str):
        self.bad = bad

    def predict_chunks(self, observations, instructions):
        chunks = np.zeros((len(observations), self.chunk_size, 7))
        for i, text in enumerate(instructions):
            if "green" in text:
                chunks[i] = np.nan if self.bad == "nan" else 0.0
        if self.bad == "shape":
            chunks = chunks[:, :, :6]
        return PolicyOutput(actions=chunks)


@pytest.mark.parametrize("runner_cls", [LIBEROEnvRunner, PI0LiberoRunner])
def test_nan_action_is_an_error_naming_env_task_and_step(runner_cls, no_orphans):
    cfg = reach_config("task.num_parallel_envs=2")
    with runner_cls(_BadPolicy("nan"), config=cfg) as runner:
        with pytest.raises(PolicyActionError, match=r"task 1 \(reach_green\), step 0: chunk contains NaN"):
            list(runner.run_episodes([EpisodeRequest(0, 0), EpisodeRequest(1, 0)]))


def test_wrong_shape_and_fail_episode_mode(no_orphans):
    with PI0LiberoRunner(_BadPolicy("shape"), config=reach_config()) as runner:
        with pytest.raises(PolicyActionError, match=r"expected \[H, 7\]"):
            list(runner.run_episodes([EpisodeRequest(0, 0)]))
    cfg = reach_config("runner.on_bad_action=fail_episode")
    with PI0LiberoRunner(_BadPolicy("nan"), config=cfg) as runner:
        episodes = {e.task_id: e for e in runner.run_episodes([EpisodeRequest(0, 0), EpisodeRequest(1, 0)])}
        # the workers are still healthy afterwards
        again = list(runner.run_episodes([EpisodeRequest(0, 1)]))
    assert episodes[1].success is False and "NaN" in episodes[1].failure_reason and episodes[1].steps == 0
    assert episodes[0].failure_reason is None and episodes[0].steps == 25
    assert len(again) == 1


def test_chaos_random_worker_kills_lose_and_duplicate_nothing(no_orphans):
    """Kill a random worker at a random moment, many times; every episode must come out exactly once and equal to
    the undisturbed run (the policy is deterministic, so a re-run episode is the same episode)."""
    kills_wanted = 8 if os.environ.get("CI") else 20
    cfg = reach_config("task.num_parallel_envs=2", "task.max_episode_length=40", "runner.max_worker_restarts=50")
    requests = lambda: [EpisodeRequest(t, i) for t in range(3) for i in range(10)]  # noqa: E731
    with PI0LiberoRunner(POLICY, config=cfg) as runner:
        undisturbed = _signature(runner.run_episodes(requests()))

    rng = random.Random(1234)
    kills = []
    with PI0LiberoRunner(POLICY, config=cfg) as runner:
        runner.start_workers()
        stop = threading.Event()

        def killer():
            while len(kills) < kills_wanted and not stop.is_set():
                time.sleep(rng.uniform(0.05, 0.5))
                pids = runner.worker_pids()
                if not pids:
                    continue  # between runs, or after close(): never signal a pid that is not a live worker's
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except (ProcessLookupError, PermissionError, OSError):
                    pass

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        disturbed_episodes = []
        try:
            # Keep rolling the same requests until the killer is done, so every kill lands inside a run.
            while True:
                disturbed_episodes = list(runner.run_episodes(requests()))
                assert _signature(disturbed_episodes) == undisturbed
                if len(kills) >= kills_wanted:
                    break
        finally:
            stop.set()  # the killer stops before the runner closes, even when an assertion fails
            thread.join()
        restarts = runner.stats.worker_restarts
    assert len(kills) >= kills_wanted
    assert restarts >= 1
    assert len({e.request_id for e in disturbed_episodes}) == len(disturbed_episodes) == 30


def test_seeded_pi0_replays_a_killed_workers_episode_exactly(no_orphans):
    """With per-episode noise seeds (eval.policy_noise=per_episode) an episode rerun after its worker was killed
    draws the same noise from chunk 0 again: the episodes equal an undisturbed run's, action for action (one worker:
    batch size 1 in both runs, so not even float rounding differs)."""
    from pi0.ript.policy.pi0_policy import make_tiny_policy

    cfg = reach_config("task.num_parallel_envs=1", "task.image_size=28", "task.max_episode_length=40")
    spec = ReachEnvSpec(image_size=28)
    policy = make_tiny_policy([spec.instruction(t) for t in range(spec.num_tasks())], image_size=28, chunk_size=5)
    requests = [EpisodeRequest(task_id=t, init_state=i, noise_seed=0) for t in range(2) for i in range(3)]
    with PI0LiberoRunner(policy, config=cfg) as runner:
        calm = {e.request_id: e.actions for e in runner.run_episodes(requests)}
        runner.stats.reset()
        killed = {}
        for episode in runner.run_episodes(requests):
            killed[episode.request_id] = episode
            if len(killed) == 1:  # the worker is on to the next episode: it dies inside it
                os.kill(runner.worker_pids()[0], signal.SIGKILL)
    assert runner.stats.worker_restarts >= 1 and any(e.worker_restarts for e in killed.values())
    assert calm.keys() == killed.keys()
    for request_id, actions in calm.items():
        np.testing.assert_array_equal(killed[request_id].actions, actions)


def test_hung_worker_is_replaced_after_the_timeout(no_orphans):
    cfg = reach_config("task.num_parallel_envs=2", "runner.worker_timeout_s=2", "task.max_episode_length=200")
    with PI0LiberoRunner(POLICY, config=cfg) as runner:
        runner.start_workers()
        victim = runner.worker_pids()[0]
        timer = threading.Timer(0.5, os.kill, (victim, signal.SIGSTOP))  # frozen, not dead: only a timeout notices
        timer.start()
        episodes = list(runner.run_episodes([EpisodeRequest(t, i) for t in range(2) for i in range(6)]))
        timer.join()
        assert victim not in runner.worker_pids()
    assert len(episodes) == 12 and runner.stats.worker_restarts >= 1
    assert any(e.worker_restarts >= 1 for e in episodes)


def test_a_worker_frozen_half_way_through_a_reply_is_killed_and_the_read_ends(no_orphans):
    """`wait()` wakes on a reply's first bytes; a worker stopped while writing the rest (a reply larger than the
    pipe's 64 KB, here two 512 px images) once blocked the parent's read for good. With a timeout the read ends in
    WorkerDied and the worker is killed. The read runs in a thread so that the old behaviour fails instead of hanging."""
    from pi0.ript.env.worker import RESET, STEP, EnvWorker, WorkerDied

    worker = EnvWorker(0, ReachEnvSpec(image_size=512))
    outcome = {}
    try:
        worker.call(RESET, {"task_id": 0, "init_state": 0}, timeout=60)
        worker.send(STEP, (np.zeros(7), True))
        assert worker.conn.poll(60)  # the reply has begun: ~1.5 MB, far more than the pipe holds
        os.kill(worker.process.pid, signal.SIGSTOP)

        def read():
            try:
                outcome["reply"] = worker.receive(timeout=1.0)
            except WorkerDied as exc:
                outcome["died"] = str(exc)

        reader = threading.Thread(target=read, daemon=True)
        started = time.monotonic()
        reader.start()
        reader.join(30)
        assert not reader.is_alive(), "the read of a half-written reply never ended"
        assert "died" in outcome and f"pid {worker.process.pid}" in outcome["died"], outcome
        assert time.monotonic() - started < 15
        worker.process.join(10)
        assert worker.process.exitcode == -signal.SIGKILL
    finally:
        if worker.process.is_alive():
            os.kill(worker.process.pid, signal.SIGKILL)
        worker.close()


def test_a_worker_that_keeps_dying_ends_the_run_with_a_clear_error(no_orphans):
    cfg = reach_config("runner.max_worker_restarts=1")
    with PI0LiberoRunner(POLICY, config=cfg) as runner:
        def kill_all(*_):
            for pid in runner.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already dead
            return PolicyOutput(actions=np.zeros((1, 4, 7)))

        runner.policy = type("KillingPolicy", (), {"predict_chunks": staticmethod(kill_all), "action_dim": 7, "chunk_size": 4})()
        with pytest.raises(WorkerFailuresExhausted, match="failed 2 times in a row"):
            list(runner.run_episodes([EpisodeRequest(0, 0)]))


class DiesOnStartSpec(ReachEnvSpec):
    """A reach spec whose worker exits while building its env: what a script without a main guard does under spawn."""

    def make(self):
        os._exit(3)


def test_workers_that_die_while_starting_end_with_the_start_method_hint(no_orphans):
    """The hint is chosen from the failure's recorded command (worker.START), not from its message text."""
    cfg = reach_config("runner.max_worker_restarts=1", "task.num_parallel_envs=1")
    with PI0LiberoRunner(POLICY, config=cfg, env_spec=DiesOnStartSpec()) as runner:
        with pytest.raises(WorkerFailuresExhausted, match="workers start with 'spawn': guard your script's code"):
            list(runner.run_episodes([EpisodeRequest(0, 0)]))


def test_interrupt_mid_run_stops_every_worker(no_orphans):
    calls = {"n": 0}

    def interrupting(observations, instructions):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return POLICY.predict_chunks(observations, instructions)

    runner = PI0LiberoRunner(POLICY, config=reach_config("task.num_parallel_envs=2"))
    runner.policy = type("P", (), {"predict_chunks": staticmethod(interrupting), "action_dim": 7, "chunk_size": 8})()
    runner.start_workers()
    pids = runner.worker_pids()
    with pytest.raises(KeyboardInterrupt):
        list(runner.run_episodes(_requests()))
    assert runner.worker_pids() == []  # close() ran on the way out
    for pid in pids:
        assert _gone(pid), f"worker {pid} still running after the interrupt"


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_overlapped_calls_batch_every_env_when_the_policy_is_the_bottleneck(no_orphans):
    """Reach steps take ~1 ms, a 100 ms policy dominates: overlapped calls must not split the envs into small
    batches that each pay the latency (they would halve throughput); every call should carry all four envs."""
    from pi0.ript.bench.policies import LatencyPolicy

    cfg = reach_config("task.num_parallel_envs=4", "task.replan_steps=1", "task.max_episode_length=10")
    with PI0LiberoRunner(LatencyPolicy(POLICY, 0.1), config=cfg) as runner:
        for worker in runner.start_workers():
            worker.wait_started(timeout=120)
        list(runner.run_episodes([EpisodeRequest(0, i) for i in range(4)]))
        stats = runner.stats.as_dict()
    assert stats["mean_batch_size"] >= 3.5, stats


def test_group_schedule_gives_the_same_episodes_and_caps_each_call_at_one_group(no_orphans):
    """Emulated slow steps and a latency policy L(b) = a + c*b (the inference-bound regime of a GPU box): lock-step,
    three fixed groups and the runner's own choice give the same episodes; with k groups no call takes more than
    ceil(N/k) envs; the runner's own choice has seen two batch sizes, so it could fit a and c."""
    from pi0.ript.bench.policies import LatencyPolicy

    batches = []

    class RecordingPolicy(LatencyPolicy):
        def predict_chunks(self, observations, instructions):
            batches.append(len(observations))
            return super().predict_chunks(observations, instructions)

    policy = RecordingPolicy(POLICY, 0.04, 0.005)
    runs = {"lockstep": ["runner.overlap_inference=false"], "three_groups": ["runner.inference_groups=3"], "chosen": []}
    signatures = {}
    for name, overrides in runs.items():
        cfg = reach_config("task.num_parallel_envs=6", "task.replan_steps=2", "task.max_episode_length=16",
                           "task.emulated_step_ms=10", "task.emulated_render_ms=5", *overrides)
        batches.clear()
        with PI0LiberoRunner(policy, config=cfg) as runner:
            signatures[name] = _signature(runner.run_episodes(_requests(2, 6)))  # 12 episodes, 2 per worker
            stats = runner.stats.as_dict()
            fit = runner.schedule.calls.fit()
        if name == "lockstep":
            assert stats["schedule"] == {}  # lock-step does not go through the group schedule
        if name == "three_groups":
            assert max(batches) <= 2, batches  # ceil(6 / 3)
            assert stats["env_seconds"]["in_call"] > 0
        if name == "chosen":
            assert fit is not None, runner.schedule.calls.mean_seconds  # probed a second batch size
    assert signatures["lockstep"] == signatures["three_groups"] == signatures["chosen"]


def test_a_stale_wake_up_never_blocks_the_loop_on_a_running_call():
    """A wake-up byte left over from an earlier call must not be taken for the end of the call now running: the loop
    would block in result() for that call's whole duration with every worker idle (found on the emulated GPU box)."""
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import Future

    runner = PI0LiberoRunner(POLICY, config=reach_config())  # no worker is started: only the wake-up path runs
    runner._wake_r, runner._wake_w = mp.Pipe(duplex=False)
    running = Future()  # the call in flight
    runner._inflight = (running, [])
    runner._wake_w.send_bytes(b"1")  # stale: sent by the call before
    try:
        list(runner._collect_replies(deque(), False))  # wakes for the byte and reads it
        outcome = []
        checker = threading.Thread(target=lambda: outcome.append(list(runner._finish_inference(deque(), False))), daemon=True)
        checker.start()
        checker.join(10)
        assert outcome == [[]], "the loop blocked on a call that is still running"
        assert runner._inflight is not None
        running.set_result(None)  # now the call is done: the loop takes it
        list(runner._finish_inference(deque(), False))
        assert runner._inflight is None
    finally:
        if not running.done():
            running.set_result(None)  # frees a blocked loop, if the check above failed
        runner._wake_r.close()
        runner._wake_w.close()


def test_spread_tasks_builds_each_task_once_per_worker_and_changes_no_episode(no_orphans):
    """Requests come task by task. Taking them in order puts both workers on task 0, then both rebuild for task 1
    (4 task loads); spreading puts one worker on each task (2 loads), and a second call with the tasks in the other
    order keeps each worker on the task its simulation holds (no new load). The episodes are the same either way."""
    requests = _requests(n_tasks=2, inits=4)
    # Steps of 20 ms and workers started before the run: both workers free up at about the same times, so neither
    # runs out of its own task's episodes a whole episode ahead of the other (it would then rightly take the other's).
    paced = ("task.num_parallel_envs=2", "task.emulated_step_ms=20")

    def started(runner):
        for worker in runner.start_workers():
            worker.wait_started(60)
        return runner

    with started(PI0LiberoRunner(POLICY, config=reach_config(*paced))) as spread:
        spread_episodes = list(spread.run_episodes(requests))
        assert {e.steps for e in spread_episodes} == {25}  # equal lengths: which worker frees first is not a race
        assert spread.stats.task_loads == 2
        list(spread.run_episodes(list(reversed(requests))))
        assert spread.stats.task_loads == 2
    with started(PI0LiberoRunner(POLICY, config=reach_config(*paced, "runner.spread_tasks=false"))) as in_order:
        in_order_episodes = list(in_order.run_episodes(requests))
        assert in_order.stats.task_loads == 4
    with LIBEROEnvRunner(POLICY, config=reach_config()) as serial:
        list(serial.run_episodes(requests))
        assert serial.stats.task_loads == 2
    assert _signature(spread_episodes) == _signature(in_order_episodes)


class _WarmingPolicy(SmallPolicy):
    """A policy with a warm-up (as pi0 compiles or captures its batch buckets): it takes 0.5 s and is logged."""

    def __init__(self):
        super().__init__(chunk_size=8, seed=3)
        self.events: list[tuple] = []

    def warmup(self, batch_sizes):
        self.events.append(("warmup", list(batch_sizes), threading.current_thread().name))
        time.sleep(0.5)
        self.events.append(("warm",))

    def predict_chunks(self, observations, instructions):
        self.events.append(("call", len(observations)))
        return super().predict_chunks(observations, instructions)


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_the_policy_warms_up_once_in_its_thread_before_any_call(overlap, no_orphans):
    """The runner has the policy warm up for batch sizes 1..N in the policy thread while the workers start, once per
    runner, and no call starts before it ends (either mode); the episodes are those of the same policy unwarmed."""
    policy = _WarmingPolicy()
    cfg = reach_config("task.num_parallel_envs=2", f"runner.overlap_inference={overlap}")
    with PI0LiberoRunner(policy, config=cfg) as runner:
        first = list(runner.run_episodes(_requests()))
        second = list(runner.run_episodes(_requests(n_tasks=1, inits=2)))
        assert runner.stats.seconds["policy_warmup"] >= 0.5
    assert policy.events[0] == ("warmup", [1, 2], "policy_0") and policy.events[1] == ("warm",)
    assert [e[0] for e in policy.events[2:]] == ["call"] * (len(policy.events) - 2) and len(policy.events) > 2
    assert len(first) == 6 and len(second) == 2
    with PI0LiberoRunner(POLICY, config=cfg) as plain:
        assert _signature(first) == _signature(plain.run_episodes(_requests()))


def test_chunk_per_command_and_step_per_command_give_the_same_episodes(no_orphans):
    """runner.step_chunks: a worker plays the queued chunk from one command, or one step per command; 7-step episodes
    at replan 3 end mid-chunk (the max_steps cut), and episodes, executed actions and step counts agree."""
    results = []
    for chunks in ("true", "false"):
        cfg = reach_config("task.num_parallel_envs=2", f"runner.step_chunks={chunks}", "task.replan_steps=3",
                           "task.max_episode_length=7")
        with PI0LiberoRunner(POLICY, config=cfg) as runner:
            episodes = list(runner.run_episodes(_requests(2, 2)))
            results.append(_signature(episodes))
            assert runner.stats.env_steps == sum(e.steps for e in episodes)
            assert runner.stats.as_dict()["env_steps_per_second_after_first_step"] > 0
    assert results[0] == results[1]
    assert all(outcome[3] == 7 or outcome[2] for outcome, _ in results[0].values())


def test_a_worker_playing_a_chunk_stops_at_success():
    """The STEPS command: a real worker process plays scripted actions until the step that succeeds and answers
    with that many results; the same actions in-process succeed at the same step."""
    from pi0.ript.env.reach_sim import scripted_action
    from pi0.ript.env.worker import RESET, STEPS, EnvWorker

    spec = ReachEnvSpec()
    local = spec.make()
    local.reset(0, 0)
    actions, success_at = [], None
    for step in range(40):
        actions.append(scripted_action(local))
        if local.step(actions[-1], False).success:
            success_at = step + 1
            break
    assert success_at is not None and success_at >= 2
    actions += [actions[-1]] * 3  # more than the episode needs: the worker must not play them
    worker = EnvWorker(0, spec)
    try:
        worker.call(RESET, {"task_id": 0, "init_state": 0}, timeout=60)
        results = worker.call(STEPS, [(a, i == len(actions) - 1) for i, a in enumerate(actions)], timeout=60)
    finally:
        worker.close()
    assert len(results) == success_at and results[-1].success and not any(r.success for r in results[:-1])
    assert all(r.observation is None for r in results)  # the one wanted observation was on an unplayed step


def test_episode_hands_out_the_chunk_as_step_by_step_and_drops_unplayed_actions():
    """EpisodeInProgress.next_actions wants observations where next_action would; record_steps with fewer results
    than sent (a success mid-chunk) keeps only the played actions in the executed record."""
    from pi0.ript.env.rollout import EpisodeInProgress
    from pi0.ript.env.sim import StepResult

    spec = ReachEnvSpec()
    env = spec.make()
    reset = env.reset(0, 0)
    chunk = np.linspace(-0.1, 0.1, 4 * 7).reshape(4, 7)

    def episode(max_steps):
        ep = EpisodeInProgress(EpisodeRequest(task_id=0, init_state=0), reset, replan_steps=4, max_steps=max_steps)
        ep.add_chunk(chunk, {})
        return ep

    step_by_step = episode(10)
    expected = [step_by_step.next_action() for _ in range(4)]
    together = episode(10).next_actions()
    assert [w for _, w in together] == [w for _, w in expected] == [False, False, False, True]
    assert episode(3).next_actions()[-1][1] is False and len(episode(3).next_actions()) == 3  # cut by max_steps

    played = episode(10)
    sent = played.next_actions()
    quiet = StepResult(observation=None, reward=0.0, success=False, info={})
    assert len(sent) == played.in_flight == 4
    played.record_steps([quiet, StepResult(observation=None, reward=1.0, success=True, info={})])
    assert played.done and played.success and played.steps == 2 and played.in_flight == 0
    finished = played.finish()
    assert np.array_equal(finished.actions, chunk[:2])
