"""One episode in progress, with its own action queue: the state machine both runners drive.

The runner feeds it the reset observation, asks whether it needs the policy, hands it chunks, takes actions from
its queue and reports each step's result. Because every env has its own queue, envs progress independently: one env
can be mid-chunk while another waits for the model.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from pi0.ript.env.episode import Episode, EpisodeRequest, InferenceRecord
from pi0.ript.env.sim import ACTION_DIM, Observation, ResetResult, StepResult


class PolicyActionError(ValueError):
    """The policy returned an action the env cannot take (wrong shape, NaN or inf)."""


class EpisodeInProgress:
    def __init__(
        self,
        request: EpisodeRequest,
        reset: ResetResult,
        replan_steps: int,
        max_steps: int,
        want_frames: bool = False,
        worker_restarts: int = 0,
        env_label: str = "env 0",
    ):
        self.request = request
        self.instruction = reset.instruction
        self.task_name = reset.task_name
        self.hard_reset = reset.hard_reset
        self.replan_steps = replan_steps
        self.max_steps = max_steps
        self.want_frames = want_frames
        self.worker_restarts = worker_restarts
        self.env_label = env_label
        self.observation: Observation = reset.observation  # the latest observation the policy may read
        self.queue: deque[np.ndarray] = deque()
        self.records: list[InferenceRecord] = []
        self.executed: list[np.ndarray] = []  # actions executed from the current chunk
        self.in_flight = 0  # actions handed out by next_actions whose results have not come back
        self.steps = 0
        self.total_reward = 0.0
        self.success = False
        self.failure_reason: str | None = None
        self.frames: list[np.ndarray] | None = [reset.observation["agentview_image"]] if want_frames else None

    @property
    def done(self) -> bool:
        return self.success or self.steps >= self.max_steps or self.failure_reason is not None

    def needs_inference(self) -> bool:
        return not self.done and not self.queue

    def next_chunk_seed(self) -> int | None:
        """The noise seed of the chunk this episode asks for next (EpisodeRequest.chunk_seed); a rerun after a worker
        restart starts again at chunk 0, so it draws the same noise."""
        return self.request.chunk_seed(len(self.records))

    def add_chunk(self, chunk: np.ndarray, extras: dict) -> None:
        """Queue the first `replan_steps` actions of a chunk, after checking them."""
        chunk = np.asarray(chunk)
        problem = None
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or chunk.shape[0] < 1:
            problem = f"chunk has shape {chunk.shape}, expected [H, {ACTION_DIM}]"
        elif not np.all(np.isfinite(chunk[: self.replan_steps])):
            problem = "chunk contains NaN or inf"
        if problem is not None:
            raise PolicyActionError(
                f"{self.env_label}, task {self.request.task_id} ({self.task_name}), step {self.steps}: {problem}"
            )
        self._close_record()
        self.records.append(InferenceRecord(step=self.steps, observation=self.observation, chunk=chunk, executed_actions=np.zeros((0, ACTION_DIM)), extras=extras))
        self.queue.extend(chunk[: self.replan_steps].astype(np.float64))

    def fail(self, reason: str) -> None:
        self.failure_reason = reason

    def next_action(self, ahead: int = 0) -> tuple[np.ndarray, bool]:
        """The next action and whether the step after it must return an observation: exactly when the policy will
        read it (the queue is then empty and the episode can go on), or always when frames are recorded. `ahead`:
        actions already handed out whose steps have not come back (`next_actions`)."""
        action = self.queue.popleft()
        self.executed.append(action)
        policy_reads_next = not self.queue and self.steps + ahead + 1 < self.max_steps
        return action, policy_reads_next or self.want_frames

    def next_actions(self) -> list[tuple[np.ndarray, bool]]:
        """The rest of the queued chunk, as `next_action` hands it out step by step, for a worker to play from one
        command: as many actions as the episode can still take (max_steps). `record_steps` takes the results back."""
        self.in_flight = min(len(self.queue), self.max_steps - self.steps)
        return [self.next_action(ahead) for ahead in range(self.in_flight)]

    def record_steps(self, results: list[StepResult]) -> None:
        """The results of the actions from `next_actions`; fewer come back when one succeeded (the worker stops
        there), and the actions it did not play leave the record of executed actions."""
        for result in results:
            self.record_step(result)
        unplayed, self.in_flight = self.in_flight - len(results), 0
        if unplayed:
            del self.executed[-unplayed:]

    def record_step(self, result: StepResult) -> None:
        self.steps += 1
        self.total_reward += float(result.reward)
        self.success = self.success or bool(result.success)  # LIBERO's success is sticky within an episode
        if result.observation is not None:
            self.observation = result.observation
            if self.frames is not None:
                self.frames.append(result.observation["agentview_image"])

    def _close_record(self) -> None:
        if self.records:
            self.records[-1].executed_actions = np.array(self.executed).reshape(-1, ACTION_DIM)
        self.executed = []

    def finish(self) -> Episode:
        self._close_record()
        return Episode(
            task_id=self.request.task_id,
            task_name=self.task_name,
            instruction=self.instruction,
            init_state_index=self.request.init_state_index,
            rollout_index=self.request.rollout_index,
            success=self.success,
            steps=self.steps,
            total_reward=self.total_reward,
            inference=self.records,
            frames=self.frames,
            worker_restarts=self.worker_restarts,
            failure_reason=self.failure_reason,
            hard_reset=self.hard_reset,
            request_id=self.request.request_id,
        )
