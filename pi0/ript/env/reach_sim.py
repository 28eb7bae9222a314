"""The built-in CPU task: move the end effector to the coloured target named in the instruction.

LIBERO is far too slow on a CPU and a tiny pi0 cannot solve it, yet the training loop needs a task that goes through
the same env-factory / runner / policy path and that a small policy can learn. `ReachSim` is that task: a flat table
seen from above with a few coloured discs; the instruction names one colour; the episode succeeds when the end
effector comes within `success_radius` of that disc. It implements `SimEnv` with LIBERO's observation dict
(`agentview_image`, `wrist_image`, `eef_pos`, `eef_quat`, `gripper_qpos`) and LIBERO's 7-dim action layout, of which
only the delta xyz moves the end effector (rotation deltas and the gripper are accepted and ignored, except that the
gripper command sets the finger positions so the state is not constant).

Everything is plain numpy; an observation costs tens of microseconds, a step without one a few.

Optional step-time model (`emulated_step_ms`, `emulated_render_ms`, off by default): each step sleeps the given
physics time, plus the render time on steps whose cameras are rendered (the observation is wanted, or
`render_on_demand` is off). This emulates a slow simulator, e.g. LIBERO on a GPU box, on a small CPU: a sleeping
worker costs no CPU, so 14 emulated workers run on 2 cores (see `pi0-ript bench`, section `emulated`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pi0.ript.env.sim import ACTION_DIM, NOOP_ACTION, Observation, ResetResult, StepResult

# Target colours, one task per colour: (name, RGB).
TARGET_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("green", (40, 200, 60)),
    ("blue", (50, 80, 230)),
)
TABLE_RGB = (120, 110, 100)
EEF_RGB = (250, 250, 250)
WORKSPACE_HALF_WIDTH = 1.0  # the table spans [-1, 1] in x and y; z is height above it
TARGET_MARGIN = 0.8  # targets and the start position stay within [-0.8, 0.8] so discs are fully visible
MIN_TARGET_SEPARATION = 0.55  # targets never overlap and the success discs of two targets never touch
MIN_START_DISTANCE = 0.5  # the start is never already inside a target's success disc
GRIPPER_OPEN_QPOS = np.array([0.04, -0.04])  # LIBERO-like finger positions for open / closed
GRIPPER_CLOSED_QPOS = np.array([0.0, 0.0])
# Base target layout for jittered init states: a triangle inside the margin, corners ~1.0 apart.
BASE_LAYOUT = np.array([[0.0, 0.55], [-0.55, -0.35], [0.55, -0.35]])
EEF_QUAT = np.array([0.0, 0.0, 0.0, 1.0])  # fixed orientation, robosuite (x, y, z, w) order


@dataclass(frozen=True)
class ReachEnvSpec:
    """Picklable recipe for `ReachSim`. One task per target colour; init states are seeded by (seed, task, index)."""

    renders_upside_down: ClassVar[bool] = False  # drawn the right way up (LIBERO's are not)
    image_size: int = 64  # rendered agent-view and wrist images are image_size x image_size RGB
    num_init_states_per_task: int = 50  # init states 0..N-1 of every task (like LIBERO's 50 per task)
    num_targets: int = 3  # discs on the table (the first num_targets colours); the instruction names one
    max_step: float = 0.1  # table units moved per step at action +-1 (actions are clipped to [-1, 1])
    success_radius: float = 0.2  # success when the end effector is this close (xy and z) to the named target
    target_radius: float = 0.12  # drawn disc radius, table units
    wrist_zoom: float = 2.5  # the wrist camera sees a window 2/zoom wide, centred on the end effector
    target_jitter: float | None = 0.15  # targets = a fixed layout + uniform +-jitter per init state; None: anywhere
    num_wait_steps: int = 0  # settle steps run by reset with the no-op action (nothing settles here; kept for parity)
    seed: int = 0  # init-state seed: different seeds give different (but fixed) init-state sets
    emulated_step_ms: float = 0.0  # sleep per step (physics of a slow simulator); 0: off
    emulated_render_ms: float = 0.0  # extra sleep per step whose cameras are rendered; 0: off
    render_on_demand: bool = True  # False: every step pays emulated_render_ms, as LIBERO renders every step then

    def __post_init__(self) -> None:
        if not 1 <= self.num_targets <= len(TARGET_COLOURS):
            raise ValueError(f"num_targets={self.num_targets}: allowed 1..{len(TARGET_COLOURS)}")
        if self.target_jitter is not None and not 0.0 <= self.target_jitter <= 0.2:
            raise ValueError(f"target_jitter={self.target_jitter}: allowed 0..0.2 (targets must not overlap) or None")
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size}: must be >= 8 pixels")
        if self.emulated_step_ms < 0 or self.emulated_render_ms < 0:
            raise ValueError(f"emulated_step_ms={self.emulated_step_ms}, emulated_render_ms={self.emulated_render_ms}: must be >= 0")

    @classmethod
    def from_config(cls, config) -> "ReachEnvSpec":
        """Build from a run config's `task` section (image_size, num_wait_steps, seed, the step-time model)."""
        task = config.task
        return cls(image_size=int(task.image_size), num_wait_steps=int(task.num_wait_steps), seed=int(task.seed),
                   emulated_step_ms=float(task.emulated_step_ms), emulated_render_ms=float(task.emulated_render_ms),
                   render_on_demand=bool(task.render_on_demand))

    def make(self) -> "ReachSim":
        return ReachSim(self)

    def num_tasks(self) -> int:
        return self.num_targets

    def num_init_states(self, task_id: int) -> int:
        self._check_task(task_id)
        return self.num_init_states_per_task

    def task_name(self, task_id: int) -> str:
        self._check_task(task_id)
        return f"reach_{TARGET_COLOURS[task_id][0]}"

    def instruction(self, task_id: int) -> str:
        self._check_task(task_id)
        return f"move the gripper to the {TARGET_COLOURS[task_id][0]} target"

    def init_state(self, task_id: int, index: int) -> np.ndarray:
        """The state array of init state `index`: [eef x, y, z, then x, y of each target]. Deterministic."""
        self._check_task(task_id)
        if not 0 <= index < self.num_init_states_per_task:
            raise ValueError(f"init_state index {index}: allowed 0..{self.num_init_states_per_task - 1}")
        rng = np.random.default_rng([self.seed, task_id, index])
        if self.target_jitter is None:
            targets = _sample_separated(rng, self.num_targets, TARGET_MARGIN, MIN_TARGET_SEPARATION)
        else:
            # A fixed triangle of targets (the same for every task: the instruction decides which one counts),
            # jittered per init state, so the colour must be read and the exact position seen.
            jitter = rng.uniform(-self.target_jitter, self.target_jitter, size=(self.num_targets, 2))
            targets = BASE_LAYOUT[: self.num_targets] + jitter
        for _ in range(10_000):  # a hard bound; the free area is most of the table, so a few draws suffice
            start = rng.uniform(-TARGET_MARGIN, TARGET_MARGIN, size=2)
            if np.min(np.linalg.norm(targets - start, axis=1)) >= MIN_START_DISTANCE:
                break
        else:
            raise RuntimeError(f"no start position {MIN_START_DISTANCE} away from targets (task {task_id}, index {index})")
        return np.concatenate([start, [0.0], targets.reshape(-1)])

    def _check_task(self, task_id: int) -> None:
        if not 0 <= int(task_id) < self.num_targets:
            raise ValueError(f"task_id {task_id}: allowed 0..{self.num_targets - 1} (one task per target colour)")


def _sample_separated(rng: np.random.Generator, n: int, margin: float, separation: float) -> np.ndarray:
    """n points in [-margin, margin]^2 at least `separation` apart (rejection sampling; 3 points fit easily)."""
    points: list[np.ndarray] = []
    for _ in range(10_000):  # a hard bound; with the defaults a valid set is found within a few draws
        candidate = rng.uniform(-margin, margin, size=2)
        if all(np.linalg.norm(candidate - p) >= separation for p in points):
            points.append(candidate)
            if len(points) == n:
                return np.stack(points)
    raise RuntimeError(f"could not place {n} targets {separation} apart within +-{margin}")


class ReachSim:
    """One reach environment (implements `pi0.ript.env.sim.SimEnv`)."""

    def __init__(self, spec: ReachEnvSpec):
        self.spec = spec
        size = spec.image_size
        # Pixel centres in [-1, 1] image coordinates; row 0 is the far edge (+y), column 0 is -x.
        coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        self._px = coords[None, :].repeat(size, axis=0)
        self._py = -coords[:, None].repeat(size, axis=1)
        self._renders = 0
        self._task_id = 0
        self._eef = np.zeros(3)
        self._targets = np.zeros((spec.num_targets, 2))
        self._gripper_qpos = GRIPPER_OPEN_QPOS.copy()

    # SimEnv -----------------------------------------------------------------------------------------------------
    def reset(self, task_id: int, init_state: int | np.ndarray, force_hard_reset: bool = False) -> ResetResult:
        self.spec._check_task(task_id)
        if isinstance(init_state, (int, np.integer)):
            state = self.spec.init_state(int(task_id), int(init_state))
        else:
            state = np.asarray(init_state, dtype=np.float64)
            expected = 3 + 2 * self.spec.num_targets
            if state.shape != (expected,):
                raise ValueError(f"init_state array shape {state.shape}: expected ({expected},) = eef xyz + target xy")
        self._task_id = int(task_id)
        self._eef = state[:3].copy()
        self._targets = state[3:].reshape(self.spec.num_targets, 2).copy()
        self._gripper_qpos = GRIPPER_OPEN_QPOS.copy()
        for _ in range(self.spec.num_wait_steps):
            self.step(NOOP_ACTION, want_observation=False)
        self._emulate_step_time(rendered=True)  # the reset's observation is rendered
        return ResetResult(
            observation=self._observe(),
            instruction=self.spec.instruction(task_id),
            task_name=self.spec.task_name(task_id),
            hard_reset=False,  # nothing to rebuild: reset only overwrites a few numbers
        )

    def step(self, action: np.ndarray, want_observation: bool) -> StepResult:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action shape {action.shape}: expected ({ACTION_DIM},)")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action {action} has non-finite values")
        self._eef = self._eef + np.clip(action[:3], -1.0, 1.0) * self.spec.max_step
        self._eef[:2] = np.clip(self._eef[:2], -WORKSPACE_HALF_WIDTH, WORKSPACE_HALF_WIDTH)
        self._eef[2] = np.clip(self._eef[2], 0.0, WORKSPACE_HALF_WIDTH)  # the table stops downward motion
        self._gripper_qpos = GRIPPER_CLOSED_QPOS.copy() if action[6] > 0 else GRIPPER_OPEN_QPOS.copy()
        success = self.distance_to_target() < self.spec.success_radius
        self._emulate_step_time(rendered=want_observation or not self.spec.render_on_demand)
        return StepResult(
            observation=self._observe() if want_observation else None,
            reward=1.0 if success else 0.0,
            success=bool(success),
            info={"distance": self.distance_to_target()},
        )

    def render_count(self) -> int:
        return self._renders

    def _emulate_step_time(self, rendered: bool) -> None:
        seconds = (self.spec.emulated_step_ms + (self.spec.emulated_render_ms if rendered else 0.0)) / 1000.0
        if seconds > 0:
            time.sleep(seconds)

    def close(self) -> None:
        pass

    # Task helpers (used by scripted demonstrations) ---------------------------------------------------------------
    def target_position(self) -> np.ndarray:
        """xyz of the named target (on the table, z = 0)."""
        return np.array([*self._targets[self._task_id], 0.0])

    def expert_chunk(self, length: int) -> np.ndarray:
        """[length, 7]: the scripted demonstrator's next `length` actions from the current state (`scripted_action`
        without noise), simulated on a scratch copy so this env does not move. Demonstrations for behaviour cloning
        come through here rather than through the env's internals."""
        scratch = ReachSim(self.spec)
        scratch.reset(self._task_id, np.concatenate([self.eef_position(), self._targets.reshape(-1)]))
        actions = []
        for _ in range(length):
            actions.append(scripted_action(scratch))
            scratch.step(actions[-1], want_observation=False)
        return np.stack(actions)

    def eef_position(self) -> np.ndarray:
        return self._eef.copy()

    def distance_to_target(self) -> float:
        return float(np.linalg.norm(self._eef - self.target_position()))

    # Rendering ----------------------------------------------------------------------------------------------------
    def _observe(self) -> Observation:
        self._renders += 1
        agentview = self._render(centre=np.zeros(2), half_width=WORKSPACE_HALF_WIDTH)
        wrist = self._render(centre=self._eef[:2], half_width=WORKSPACE_HALF_WIDTH / self.spec.wrist_zoom)
        return {
            "agentview_image": agentview,
            "wrist_image": wrist,
            "eef_pos": self._eef.copy(),
            "eef_quat": EEF_QUAT.copy(),
            "gripper_qpos": self._gripper_qpos.copy(),
        }

    def _render(self, centre: np.ndarray, half_width: float) -> np.ndarray:
        """Top-down view of the window centre +- half_width: table, target discs, and the end effector as a ring whose
        size grows with height (so z is visible too)."""
        x = centre[0] + self._px * half_width
        y = centre[1] + self._py * half_width
        image = np.empty((*x.shape, 3), dtype=np.uint8)
        image[...] = TABLE_RGB
        outside = (np.abs(x) > WORKSPACE_HALF_WIDTH) | (np.abs(y) > WORKSPACE_HALF_WIDTH)
        image[outside] = 0
        for (_, rgb), (tx, ty) in zip(TARGET_COLOURS, self._targets):
            image[(x - tx) ** 2 + (y - ty) ** 2 < self.spec.target_radius**2] = rgb
        ring = 0.06 + 0.05 * self._eef[2]
        d2 = (x - self._eef[0]) ** 2 + (y - self._eef[1]) ** 2
        image[(d2 < ring**2) & (d2 > (ring * 0.45) ** 2)] = EEF_RGB
        return image


def scripted_action(env: ReachSim, rng: np.random.Generator | None = None, noise: float = 0.0) -> np.ndarray:
    """The demonstrator: head straight for the named target at full speed, slowing inside the last step; optional
    Gaussian perturbation (DART-style) so demonstrations also cover recovering from small errors."""
    delta = (env.target_position() - env.eef_position()) / env.spec.max_step
    move = np.clip(delta, -1.0, 1.0)
    if noise > 0.0 and rng is not None:
        move = np.clip(move + rng.normal(0.0, noise, size=3), -1.0, 1.0)
    return np.array([*move, 0.0, 0.0, 0.0, -1.0])
