"""The episode record: one dataclass shared by both runners, the trainer and the eval writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class PositionedInitState(int):
    """An init-state index that also names the episode's position in its task's reset stream (`stream_position`).

    Under a harness's seeding (task.reset_seeding `task_stream` / `seed_plus_position`) an episode's scene depends on
    its position among the task's episodes, which is the init-state index in openpi's and LeRobot's own loops, and
    something else when a run revisits init states. Carried inside the index, it reaches `SimEnv.reset` through
    both runners and the worker pipe unchanged, and everything else reads a plain int."""

    stream_position: int

    def __new__(cls, index: int, stream_position: int) -> PositionedInitState:
        if isinstance(stream_position, bool) or not isinstance(stream_position, (int, np.integer)) or stream_position < 0:
            raise ValueError(f"stream_position={stream_position!r} must be an int >= 0")
        obj = super().__new__(cls, int(index))
        obj.stream_position = int(stream_position)
        return obj

    def __reduce__(self):
        return (PositionedInitState, (int(self), self.stream_position))

    def __repr__(self) -> str:
        return f"PositionedInitState({int(self)}, stream_position={self.stream_position})"


def stream_position_of(init_state: Any) -> int | None:
    """The stream position an init state names (a PositionedInitState), else None (the env uses the index)."""
    return getattr(init_state, "stream_position", None)


@dataclass
class EpisodeRequest:
    """One episode to run. `init_state` is an index into the task's init states, or an explicit state array.

    `stream_position`: where this episode sits in its task's reset stream under a harness's seeding (see
    `PositionedInitState`); None: its init-state index, as in openpi's and LeRobot's loops (episode k, init state k).

    `noise_seed`: seeds the policy's sampling noise for this episode: its j-th chunk's noise comes from (noise_seed,
    task, init state, rollout index, j) alone (`chunk_seed`), so the episode does not depend on what else the policy
    computed, in which order, on which worker or rank (evaluation). None: the policy's own stream (RL rollouts, whose
    K rollouts of a context need different noise)."""

    task_id: int
    init_state: int | np.ndarray
    rollout_index: int = 0  # k of K when the same context is rolled out several times (RLOO)
    request_id: int = 0  # set by the runner on its own copy: the position in its request list (one episode each)
    stream_position: int | None = None
    noise_seed: int | None = None

    def __post_init__(self):
        if self.stream_position is None:
            self.stream_position = stream_position_of(self.init_state)
        elif not isinstance(self.init_state, (int, np.integer)) or isinstance(self.init_state, bool):
            raise ValueError("stream_position needs an init-state index, not an explicit state array")
        else:
            self.init_state = PositionedInitState(int(self.init_state), self.stream_position)

    @property
    def init_state_index(self) -> int | None:
        return int(self.init_state) if isinstance(self.init_state, (int, np.integer)) else None

    def chunk_seed(self, chunk_index: int) -> int | None:
        """The seed of this episode's `chunk_index`-th policy call (None without a noise_seed): numpy's SeedSequence
        mixes the parts, so neighbouring episodes and chunks get unrelated streams. An explicit state array counts
        as init state -1."""
        if self.noise_seed is None:
            return None
        index = self.init_state_index
        parts = [self.noise_seed, self.task_id, 0 if index is None else index + 1, self.rollout_index, chunk_index]
        return int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0] >> np.uint64(1))  # < 2**63


@dataclass
class InferenceRecord:
    """One policy query: what the policy saw at env step `step`, the chunk it returned, and which of its actions the
    env executed (the first `replan_steps`, fewer if the episode ended)."""

    step: int
    observation: dict[str, np.ndarray]
    chunk: np.ndarray  # [H, action_dim]
    executed_actions: np.ndarray  # [n, action_dim], n <= replan_steps
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    task_id: int
    task_name: str
    instruction: str
    init_state_index: int | None
    rollout_index: int
    success: bool
    steps: int  # policy steps taken (settle steps not counted)
    total_reward: float
    inference: list[InferenceRecord] = field(default_factory=list)
    frames: list[np.ndarray] | None = None  # agent-view frames of every step, only when videos/frames are asked for
    worker_restarts: int = 0  # times the worker running this episode died or hung and the episode was run again
    failure_reason: str | None = None  # set when the episode was ended by a policy error rather than the task
    hard_reset: bool = True
    request_id: int = 0

    @property
    def actions(self) -> np.ndarray:
        """Every executed action in order, `[steps, action_dim]`."""
        if not self.inference:
            return np.zeros((0, 7))
        return np.concatenate([r.executed_actions for r in self.inference], axis=0)

    def summary(self) -> dict[str, Any]:
        """JSON-safe summary (for results.json)."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "init_state_index": self.init_state_index,
            "rollout_index": self.rollout_index,
            "success": bool(self.success),
            "steps": int(self.steps),
            "total_reward": float(self.total_reward),
            "worker_restarts": int(self.worker_restarts),
            "failure_reason": self.failure_reason,
        }
