"""`PI0LiberoRunner`: envs in worker processes, one policy in this process, a per-env action queue.

The loop is event driven. Each worker runs one episode at a time; when it answers a step, its env either takes the
next action from its own queue at once, or joins the set of envs waiting for the policy. Those are batched into
`predict_chunks` calls. With `runner.overlap_inference` (default) the policy runs in a background thread while this
loop keeps collecting replies and sending queued actions, so the other workers keep simulating while the model
computes. Which waiting envs a call takes follows a group schedule (`pi0.ript.env.schedule`): the envs form k groups
whose calls alternate, k chosen from the simulation and call times measured as the run goes (k = 1: one call for
every env). Without overlap the policy is called here, synchronously, once no worker is mid-step (lock-step batches).
Scheduling never changes an episode: each env's actions depend only on its own observations, for a policy whose
samples do not depend on their batch-mates.
A finished env takes the next pending episode, preferring one of the task it already has loaded (its simulation can
then be reset without a rebuild).

Workers that die or hang are replaced, and their episode is run again from its init state, so every request yields
exactly one episode. Ctrl-C or an error closes every worker: no process is left behind.
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing as mp
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import wait
from typing import Iterable, Iterator, Sequence

from pi0.ript.env.episode import Episode, EpisodeRequest
from pi0.ript.env.rollout import EpisodeInProgress
from pi0.ript.env.runner_base import RunnerBase
from pi0.ript.env.schedule import GroupSchedule
from pi0.ript.env.worker import RESET, START, STEP, STEPS, EnvWorker, WorkerDied

log = logging.getLogger(__name__)


class WorkerFailuresExhausted(RuntimeError):
    """One episode kept killing its worker: give up instead of looping."""


class _Slot:
    """What the runner knows about one worker: its episode, its phase, and the task its simulation holds."""

    def __init__(self, worker: EnvWorker):
        self.worker = worker
        self.request: EpisodeRequest | None = None
        self.failures = 0  # consecutive failures of the current request
        self.episode: EpisodeInProgress | None = None
        self.loaded_task: int | None = None

    @property
    def busy(self) -> bool:
        return self.worker.pending is not None


class PI0LiberoRunner(RunnerBase):
    def __init__(self, policy, benchmark_name=None, rollouts_per_env=None, num_parallel_envs=None, rank=0,
                 config=None, world_size=1, env_spec=None):
        super().__init__(policy, benchmark_name, rollouts_per_env, num_parallel_envs, config, rank, world_size, env_spec)
        self.start_method = self.cfg.runner.start_method
        self.worker_timeout_s = float(self.cfg.runner.worker_timeout_s)
        self.max_worker_restarts = int(self.cfg.runner.max_worker_restarts)
        self.overlap_inference = bool(self.cfg.runner.overlap_inference)
        self.spread_tasks = bool(self.cfg.runner.spread_tasks)
        self.step_chunks = bool(self.cfg.runner.step_chunks)
        self._slots: list[_Slot] = []
        # Overlapped inference: one background thread runs the policy (one model, one call at a time). Why a thread:
        # a synchronous call blocks this loop, so a worker finishing a step during the call could not get its next
        # queued action before the call ends (measured in docs/PERFORMANCE.md: with a 200 ms policy that cost most of
        # the overlap). A byte goes to `_wake` once a call's future is done, so `wait()` on the workers also wakes for it.
        self._executor: ThreadPoolExecutor | None = None
        self._wake_r, self._wake_w = None, None
        self._inflight: tuple[Future, list[_Slot]] | None = None
        # Which envs an overlapped call takes, and when (see _next_batch): measured chunk and call times, when each
        # waiting env started waiting, when each env got its chunk, and when the model last became free.
        self.schedule = GroupSchedule(int(self.cfg.runner.inference_groups))
        self._waiting_since: dict[_Slot, float] = {}
        self._chunk_delivered: dict[_Slot, float] = {}
        self._model_free_since = 0.0
        self._launch_deadline: float | None = None
        self._group: dict[_Slot, int] = {}  # each env's group; an env without one rides with the next call
        self._groups_k = 0  # the k the groups were formed for
        self._more: Iterator[EpisodeRequest] | None = None  # the rest of an iterator of requests (run_episodes)
        self._tick: float | None = None  # last loop iteration, for the env-time accounting in stats.env_seconds
        self._held = self._queued = 0
        self._warmed_up = False  # the policy's warm-up ran (see _warm_up_policy)

    # --- workers ----------------------------------------------------------------------------------------------
    def start_workers(self) -> list[EnvWorker]:
        """Start the worker processes (idempotent). Only the env spec, plain data, is sent to them."""
        while len(self._slots) < self.num_parallel_envs:
            self._slots.append(_Slot(EnvWorker(len(self._slots), self.env_spec, self.start_method)))
        return [slot.worker for slot in self._slots]

    def create_env(self, env_name=None):
        self.start_workers()
        return self

    def worker_pids(self) -> list[int]:
        return [slot.worker.process.pid for slot in self._slots]

    def _replace_worker(self, slot: _Slot, reason: str) -> None:
        index = slot.worker.index
        log.warning("worker %d replaced: %s", index, reason)
        slot.worker.kill()
        slot.worker.conn.close()
        slot.worker = EnvWorker(index, self.env_spec, self.start_method)
        slot.loaded_task = None
        self.stats.worker_restarts += 1

    def configure_run(self, *, inference_groups: int | None = None, step_chunks: bool | None = None, **settings) -> None:
        """RunnerBase.configure_run, plus `inference_groups` (0: chosen as the runner goes), learnt afresh, and
        `step_chunks` (runner.step_chunks)."""
        super().configure_run(**settings)
        if inference_groups is not None:
            self.schedule = GroupSchedule(int(inference_groups))
        if step_chunks is not None:
            self.step_chunks = bool(step_chunks)

    def close(self) -> None:
        for slot in self._slots:
            slot.worker.close()
        self._slots = []
        self._inflight = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # a call in flight finishes (it only touches its own episodes)
            self._executor = None
            self._wake_r.close()
            self._wake_w.close()
            self._wake_r, self._wake_w = None, None

    # --- the loop -------------------------------------------------------------------------------------------
    def run_episodes(self, requests: Iterable[EpisodeRequest], want_frames: bool = False) -> Iterator[Episode]:
        numbered = self._numbered(requests)
        # A list is seen whole (workers choose among every pending episode); an iterator is read a worker's count at
        # a time, when the pending ones run out (_refill).
        lazily = not isinstance(requests, Sequence)
        pending = deque() if lazily else deque(numbered)
        self._more = numbered if lazily else None
        self.start_workers()
        finished_cleanly = False
        try:
            self._refill(pending)
            # Workers whose simulation holds a pending task choose first, so none of them loses it to a worker that
            # would have to build it anyway.
            pending_tasks = {r.task_id for r in pending}
            for slot in sorted(self._slots, key=lambda s: s.loaded_task not in pending_tasks):
                self._assign(slot, pending)
            self._warm_up_policy()
            while pending or any(slot.request is not None for slot in self._slots):
                for episode in self._collect_replies(pending, want_frames):
                    yield episode
                for episode in self._finish_inference(pending, want_frames):
                    yield episode
                self._account_env_time()
                inferring = self._inflight[1] if self._inflight is not None else []
                waiting = [s for s in self._slots if s.episode is not None and not s.busy
                           and s.episode.needs_inference() and s not in inferring]
                if not waiting:
                    continue
                if self.overlap_inference:
                    self._note_arrivals(waiting)
                    batch = self._next_batch(waiting) if self._inflight is None else []
                    if batch:
                        self._start_inference(batch)
                        waiting = [s for s in waiting if s not in batch]
                    self._note_waiting(waiting)
                elif not any(s.busy for s in self._slots) and self._inflight is None:
                    self._infer([s.episode for s in waiting])
                    for slot in waiting:
                        episode = self._advance(slot, pending, want_frames)
                        if episode is not None:
                            yield episode
                else:
                    self._note_waiting(waiting)  # lock-step: held until no worker is mid-step
            finished_cleanly = True
        finally:
            self._inflight = None  # a call still running only touches this abandoned run's episodes
            self._waiting_since.clear()
            self._chunk_delivered.clear()
            self._launch_deadline = None
            self._tick, self._held, self._queued = None, 0, 0
            self._group.clear()
            self._groups_k = 0
            self._more = None
            if not finished_cleanly:
                # Interrupted (Ctrl-C, an error, or the consumer stopped early): workers may be mid-command, and a
                # half-run episode must not leak into the next call. Stop them all; the next call starts fresh ones.
                self.close()

    def _assign(self, slot: _Slot, pending: deque) -> None:
        """Give an idle worker the next episode, preferring one of the task its simulation already holds."""
        slot.request, slot.episode = None, None
        self._chunk_delivered.pop(slot, None)  # a reset is not part of playing a chunk
        self._group.pop(slot, None)  # a new episode joins whichever call comes after its reset
        if not pending:
            self._refill(pending)
        if not pending:
            return
        match = self._next_request(slot, pending)
        pending.remove(match)
        slot.request, slot.failures = match, 0
        self._send_reset(slot)

    def _refill(self, pending: deque) -> None:
        """From an iterator of requests, the next ones, as many as there are workers (nothing once it is spent)."""
        if self._more is not None:
            pending.extend(itertools.islice(self._more, len(self._slots)))

    def _next_request(self, slot: _Slot, pending: deque) -> EpisodeRequest:
        """An episode of the task the worker's simulation holds if one is pending (a reset, not a rebuild). Else,
        with runner.spread_tasks, the first pending episode of the task with the most pending episodes per worker
        already on it (ties: the earliest in request order); without it, the next request in order.

        Why: a task switch rebuilds the LIBERO env (2.7 s against 0.6 s for a fast reset on a CPU core:
        scripts/reset_times.py). Requests come task by task (eval, training's contexts), so taking the next in order puts every worker on
        the first task and, once it runs out, has all of them rebuild for the next at the same moment; spreading
        builds each task on few workers, each worker ideally once (2 tasks x 14 episodes on 14 workers: 14 builds
        instead of 28)."""
        same = next((r for r in pending if r.task_id == slot.loaded_task), None)
        if same is not None:
            return same
        if not self.spread_tasks:
            return pending[0]
        serving = Counter(s.request.task_id for s in self._slots if s is not slot and s.request is not None)
        left = Counter(r.task_id for r in pending)  # insertion order = request order, which breaks ties below
        task = max(left, key=lambda t: left[t] / (serving[t] + 1))
        return next(r for r in pending if r.task_id == task)

    def _send_reset(self, slot: _Slot) -> None:
        if slot.worker.pending == START:
            return  # the reset goes out when the worker reports it has started (see _on_reply)
        if slot.request.task_id != slot.loaded_task:
            self.stats.task_loads += 1
        self._send(slot, RESET, {"task_id": slot.request.task_id, "init_state": slot.request.init_state})

    def _send(self, slot: _Slot, command: str, data) -> None:
        try:
            slot.worker.send(command, data)
        except WorkerDied as exc:
            self._retry(slot, str(exc), exc.command)

    # --- overlapped inference ----------------------------------------------------------------------------------
    def _next_batch(self, waiting: list[_Slot]) -> list[_Slot]:
        """The envs the next overlapped call takes (the model is free), or [] to wait for more.

        The envs in an episode form k groups (k from `self.schedule`, ~N/k envs each) whose calls alternate: a call
        serves the group of the longest-waiting env. It waits for that group's late members only while they are
        due (their chunk's measured play time) within L(1) of the model becoming free: waiting longer costs the whole
        group more than a call of one would. A member that misses its group's call, and an env starting an episode
        (a LIBERO reset lasts several chunks), has no group: it rides with the next call whose group has room, and
        joins that group. So groups keep their phase; stragglers never hold a group back, nor split it.

        Why not the previous rule (issue 17, emulated H200 box, docs/PERFORMANCE.md): it held a call until every env
        waited, so 14 envs moved in lock-step and simulation never overlapped inference; two alternating groups are
        predicted 10% and measured 8% faster there."""
        now = time.monotonic()
        self._launch_deadline = None
        in_episode = [s for s in self._slots if s.request is not None]
        k = self.schedule.groups(len(in_episode))
        if k != self._groups_k:  # (re)form the groups: every env past its reset, in slot order
            self._groups_k = k
            self._group = {s: i % k for i, s in enumerate(s for s in self._slots if s.episode is not None)}
        room = math.ceil(len(in_episode) / k)
        riders = sorted((s for s in waiting if s not in self._group), key=lambda s: self._waiting_since[s])
        grouped = [s for s in waiting if s in self._group]
        if not grouped:  # only riders wait: they go with the call of the group with most room
            sizes = {g: list(self._group.values()).count(g) for g in range(k)}
            group = min(sizes, key=lambda g: (sizes[g], g))
            if any(s.busy for s, g in self._group.items() if g == group):
                return []  # its members are mid-chunk: their call comes soon
            batch = riders[: max(room - sizes[group], 1)]
            self._group.update((s, group) for s in batch)
            return batch
        lead = min(grouped, key=lambda s: self._waiting_since[s])
        group = self._group[lead]
        members = [s for s in self._slots if self._group.get(s) == group]
        late = [s for s in members if s not in waiting]
        if late:
            deadline = max(self._model_free_since, self._waiting_since[lead]) + self.schedule.single_call_seconds()
            sim_s = self.schedule.sim_seconds or 0.0
            due = max(self._chunk_delivered.get(s, math.inf) + sim_s for s in late)
            if now < deadline and due <= deadline:
                self._launch_deadline = deadline  # _collect_replies wakes up by then even if no worker answers
                return []
            for slot in late:
                del self._group[slot]  # missed this call: rides with a later one
        batch = [s for s in members if s in waiting]
        for slot in riders[: max(room - len(batch), 0)]:
            self._group[slot] = group
            batch.append(slot)
        return batch

    def _note_arrivals(self, waiting: list[_Slot]) -> None:
        """When each waiting env started waiting; for an env that just played a chunk, the chunk's play time (S)."""
        now = time.monotonic()
        for slot in waiting:
            if slot not in self._waiting_since:
                self._waiting_since[slot] = now
                if slot in self._chunk_delivered:
                    self.schedule.observe_chunk(now - self._chunk_delivered.pop(slot))

    def _note_waiting(self, waiting: list[_Slot]) -> None:
        """Envs left waiting after this iteration: held for batch-mates (model free) or queued behind a call."""
        if self._inflight is None:
            self._held, self._queued = len(waiting), 0
        else:
            self._held, self._queued = 0, len(waiting)

    def _account_env_time(self) -> None:
        """Env-seconds spent waiting since the last iteration, split by why: where the time goes (stats.env_seconds)."""
        now = time.perf_counter()
        if self._tick is not None:
            elapsed = now - self._tick
            self.stats.env_seconds["held_for_batch_mates"] += elapsed * self._held
            self.stats.env_seconds["queued_behind_a_call"] += elapsed * self._queued
            if self._held:
                self.stats.seconds_model_idle_with_waiters += elapsed
        self._tick = now
        self._held = self._queued = 0

    def _policy_thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
            self._wake_r, self._wake_w = mp.Pipe(duplex=False)
        return self._executor

    def _warm_up_policy(self) -> None:
        """Once per runner, a policy with `warmup(batch_sizes)` (pi0: compile or capture each batch bucket) does it in
        the policy thread while the workers build their envs (seconds each), instead of in the first calls of each
        bucket with envs waiting on them. It counts as a call in flight, so no call starts before it ends (in either
        mode); episodes do not change (pi0's warm-up leaves its noise generator alone)."""
        warmup = getattr(self.policy, "warmup", None)
        if self._warmed_up or not callable(warmup):
            return
        self._warmed_up = True
        executor, wake_w, batch_sizes = self._policy_thread(), self._wake_w, range(1, len(self._slots) + 1)

        def warm():
            started = time.perf_counter()
            warmup(batch_sizes)
            self.stats.seconds["policy_warmup"] += time.perf_counter() - started

        future = executor.submit(warm)
        future.add_done_callback(lambda _: wake_w.send_bytes(b"1"))
        self._inflight = (future, [])

    def _start_inference(self, slots: list[_Slot]) -> None:
        """Run the policy for these envs in the background thread; their slots stay out of `waiting` until done."""
        self._policy_thread()
        episodes = [s.episode for s in slots]
        wake_w = self._wake_w
        self.stats.schedule = self.schedule.as_dict()
        for slot in slots:
            self._waiting_since.pop(slot, None)
        self._launch_deadline = None

        def call():
            started = time.monotonic()
            self._infer(episodes)  # touches only these episodes and the "inference" timer
            self.schedule.observe_call(len(episodes), time.monotonic() - started)

        future = self._executor.submit(call)
        # The wake-up is sent once the future is done (a callback, not the call's last line): a byte that arrived
        # before `done()` turned true was once taken for the end of the *next* call, whose result() then blocked this
        # loop for that call's whole duration, every worker idle (on the emulated H200 box: steps of 180 ms, not 31).
        future.add_done_callback(lambda _: wake_w.send_bytes(b"1"))
        self._inflight = (future, slots)

    def _finish_inference(self, pending: deque, want_frames: bool) -> Iterator[Episode]:
        if self._inflight is None or not self._inflight[0].done():
            return  # a wake-up byte only means "look": the future decides
        future, slots = self._inflight
        self._inflight = None
        future.result()  # re-raises a policy error in the loop, as the synchronous path would
        delivered = time.monotonic()
        self._model_free_since = delivered
        for slot in slots:
            self._chunk_delivered[slot] = delivered
            episode = self._advance(slot, pending, want_frames)
            if episode is not None:
                yield episode

    def _collect_replies(self, pending: deque, want_frames: bool) -> Iterator[Episode]:
        busy = [s for s in self._slots if s.busy]
        inferring = self._inflight is not None
        if not busy and not inferring:
            return
        started = time.perf_counter()
        timeout = max(0.0, min(self.worker_timeout_s - s.worker.seconds_in_flight() for s in busy)) if busy else None
        if self._launch_deadline is not None:
            until_launch = max(0.0, self._launch_deadline - time.monotonic())
            timeout = until_launch if timeout is None else min(timeout, until_launch)
        conns = [s.worker.conn for s in busy] + ([self._wake_r] if inferring else [])
        ready = wait(conns, timeout=timeout)
        self.stats.seconds["stepping_envs"] += time.perf_counter() - started
        if inferring and self._wake_r in ready:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()  # _finish_inference takes the result if the call is done
        for slot in busy:
            if slot.worker.conn in ready:
                command = slot.worker.pending
                try:
                    reply = slot.worker.receive(self.worker_timeout_s)  # a reply frozen half-way ends too
                except WorkerDied as exc:
                    self._retry(slot, str(exc), exc.command)
                    continue
                episode = self._on_reply(slot, command, reply, pending, want_frames)
                if episode is not None:
                    yield episode
            elif slot.worker.seconds_in_flight() >= self.worker_timeout_s:
                during = slot.worker.pending
                self._retry(slot, f"no answer to {during!r} within {self.worker_timeout_s:.0f} s (runner.worker_timeout_s)", during)

    def _on_reply(self, slot: _Slot, command: str, reply, pending: deque, want_frames: bool) -> Episode | None:
        if command == START:  # the worker is up: the episode it was given can begin
            if slot.request is not None:
                self._send_reset(slot)
            return None
        if command == RESET:
            slot.loaded_task = slot.request.task_id
            slot.episode = self._new_episode(slot.request, reply, want_frames, slot.failures, f"worker {slot.worker.index}")
        elif command == STEPS:
            slot.episode.record_steps(reply)
            self.stats.count_steps(len(reply))
        else:
            slot.episode.record_step(reply)
            self.stats.count_steps()
        return self._advance(slot, pending, want_frames)

    def _advance(self, slot: _Slot, pending: deque, want_frames: bool) -> Episode | None:
        """Send the next action if the queue has one; finish the episode if it is over; else leave it waiting."""
        episode = slot.episode
        if episode.done:
            self.stats.episodes += 1
            finished = episode.finish()
            self._assign(slot, pending)
            return finished
        if not episode.needs_inference():
            if self.step_chunks:
                self._send(slot, STEPS, episode.next_actions())
            else:
                action, want_observation = episode.next_action()
                self._send(slot, STEP, (action, want_observation))
        return None

    def _retry(self, slot: _Slot, reason: str, during: str | None = None) -> None:
        """Replace the worker and run its episode again from the init state, up to max_worker_restarts times.
        `during`: the command the worker failed in (worker.START while it was starting)."""
        request = slot.request
        self._replace_worker(slot, reason)
        if request is None:
            return
        slot.failures += 1
        if slot.failures > self.max_worker_restarts:
            hint = "raise runner.max_worker_restarts or check the env"
            if during == START:
                hint = (f"workers start with {self.start_method!r}: guard your script's code with "
                        "`if __name__ == '__main__':`, or set runner.start_method (see README, Troubleshooting)")
            raise WorkerFailuresExhausted(
                f"task {request.task_id}, init state {request.init_state_index}: worker {slot.worker.index} failed "
                f"{slot.failures} times in a row ({reason}); {hint}"
            )
        slot.episode = None  # the reset is sent again when the new worker reports it has started
        self._group.pop(slot, None)
        self._chunk_delivered.pop(slot, None)
