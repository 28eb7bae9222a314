"""One forward pass per physics substep in LIBERO's control steps, where robosuite runs three.

robosuite 1.4 plays a control step as 25 physics substeps (500 Hz physics, 20 Hz control). Each substep:
1. `env.step` calls `sim.forward()`: MuJoCo's whole forward pass at the current state;
2. the arm controller's `update()` (from `set_goal` or `run_controller`) calls `sim.forward()` again, at the same state,
   then reads the end-effector pose and velocity, the Jacobians, the mass matrix and the bias forces, and the
   controller and gripper write `ctrl`;
3. `sim.step()` is `mj_step`, which runs the whole forward pass a third time before it integrates.

Nothing writes the simulation state between 1 and 3 but `ctrl`, and `mj_forward` is a pure function of that state and
of `qacc_warmstart`, which only the integration writes. So pass 2 recomputes exactly what pass 1 left in mjData and is
skipped; and pass 3's position and velocity stages, which do not read `ctrl`, repeat pass 1's. MuJoCo's own split of
`mj_step` into `mj_step1` (position and velocity stages: everything the controller reads) and `mj_step2` (actuation,
acceleration, constraints, integration) is made for this "set ctrl between the halves" pattern, so a substep runs
`mj_step1`, the controller, `mj_step2`. The first substep of each control step keeps robosuite's full pass 1 and
`mj_step`, because there (the policy step) the robot also records the force-torque sensors, which the acceleration
stage computes.

None of this changes a number: tests/test_libero_sim.py proves the episodes bit-identical, one task per problem class,
against the plain LIBERO loop and counts both savings; tests/test_protocol_presets.py holds the workers against
openpi's loop and LeRobot's reset on stock LIBERO envs. `scripts/measure_sim.py` prints the physics-only speed-up.

`RepeatedForwardSkip` wraps one robosuite `MjSim`'s `forward` and `step` and acts only inside `stepping()` (around one
`env.step`). Outside it (resets, set_init_state, a snapshot restore: code that writes the state, then calls forward)
every call is robosuite's own. Written by hand because robosuite offers no switch for it; the wrap is on the
instance, so other envs in the process are left alone.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class RepeatedForwardSkip:
    def __init__(self, sim: Any):
        import mujoco  # here, not at import: the env spec is imported where LIBERO may not be installed

        self.sim = sim
        self._model, self._data = sim.model._model, sim.data._data
        self._step1, self._step2 = mujoco.mj_step1, mujoco.mj_step2
        self._forward, self._step = sim.forward, sim.step  # the instance's own bound methods
        self._active = False
        self._policy_substep = False  # the control step's first substep: robosuite's own calls
        self._computed = False  # a forward (or mj_step1) ran since the last integration
        self._halfway = False  # mj_step1 ran: the substep ends with mj_step2
        self.skipped = 0  # repeated forward passes skipped (pass 2)
        self.split_steps = 0  # substeps run as mj_step1 + mj_step2 (pass 3's first half saved)
        sim.forward, sim.step = self.forward, self.step

    @classmethod
    def on(cls, sim: Any) -> RepeatedForwardSkip:
        """The wrap of this sim, made on first use (a hard reset builds a new sim; a soft reset keeps the old one)."""
        existing = getattr(sim.forward, "__self__", None)
        return existing if isinstance(existing, cls) and existing.sim is sim else cls(sim)

    def forward(self) -> None:
        if not self._active:
            self._forward()
        elif self._computed:
            self.skipped += 1
        elif self._policy_substep:
            self._forward()
            self._computed = True
        else:
            self._step1(self._model, self._data)
            self._computed = self._halfway = True

    def step(self, *args, **kwargs) -> None:
        self._computed = self._policy_substep = False
        if self._halfway:
            self._halfway = False
            self._step2(self._model, self._data)
            self.split_steps += 1
        else:
            self._step(*args, **kwargs)

    @contextlib.contextmanager
    def stepping(self) -> Iterator[None]:
        """Around one `env.step`: the only forward and step calls in there are the substep loop's and the controller's."""
        self._active, self._policy_substep, self._computed, self._halfway = True, True, False, False
        try:
            yield
        finally:
            self._active, self._policy_substep, self._computed, self._halfway = False, False, False, False
