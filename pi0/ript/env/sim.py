"""The simulator interface every rollout path uses: the serial runner in-process, the parallel runner in workers.

A `SimEnv` is one environment that can run episodes of any task of one suite. It is built inside the process that
uses it from a picklable `EnvSpec` (plain data only), so nothing but numbers and strings crosses a process boundary.

Observations are plain dicts of numpy arrays with the keys below (LIBERO's, converted once, in the worker):
    agentview_image  uint8  [H, W, 3]  third-person camera, as rendered by LIBERO (not rotated)
    wrist_image      uint8  [H, W, 3]  eye-in-hand camera, as rendered (not rotated)
    eef_pos          float64 [3]       end-effector position
    eef_quat         float64 [4]       end-effector orientation, robosuite's (x, y, z, w) quaternion
    gripper_qpos     float64 [2]       gripper finger joint positions
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pi0.ript.policy.protocol import ACTION_DIM  # the action layout policies and envs share (defined there)

OBS_KEYS = ("agentview_image", "wrist_image", "eef_pos", "eef_quat", "gripper_qpos")
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # LIBERO's "settle" action: hold still, gripper open

Observation = dict[str, np.ndarray]


@dataclass
class StepResult:
    """What one env step returns. `observation` is None when the step was told it is not wanted (render on demand)."""

    observation: Observation | None
    reward: float
    success: bool  # LIBERO's own success check at this step
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResetResult:
    observation: Observation
    instruction: str
    task_name: str
    hard_reset: bool  # whether this reset recompiled the model (LIBERO's fast reset, a task's first included, does not)
    info: dict[str, Any] = field(default_factory=dict)


class SimEnv(Protocol):
    """One environment. Implementations: `LiberoSim` (real LIBERO) and `ReachSim` (the built-in CPU task)."""

    def reset(self, task_id: int, init_state: int | np.ndarray, force_hard_reset: bool = False) -> ResetResult:
        """Start an episode of `task_id` from an init state (an index into the suite's init states, or the state
        itself), run the settle steps, and return the first observation the policy sees."""

    def step(self, action: np.ndarray, want_observation: bool) -> StepResult:
        """Apply one 7-dim action. Physics, reward and success never depend on `want_observation`."""

    def render_count(self) -> int:
        """How many observations were rendered since the env was built (for render-on-demand accounting)."""

    def close(self) -> None: ...


class EnvSpec(Protocol):
    """Picklable plain-data recipe for a SimEnv; `make()` runs inside the process that will own the env."""

    def make(self) -> SimEnv: ...

    def num_tasks(self) -> int: ...

    def num_init_states(self, task_id: int) -> int: ...


__all__ = ["ACTION_DIM", "NOOP_ACTION", "OBS_KEYS", "EnvSpec", "Observation", "ResetResult", "SimEnv", "StepResult"]
