"""One forward pass per physics substep in LIBERO's control steps, where robosuite runs two at the same state.

robosuite 1.4 plays a control step as 25 physics substeps (500 Hz physics, 20 Hz control), and each substep runs
MuJoCo's forward pass twice: `env.step` calls `sim.forward()`, then `_pre_action` runs the arm controller, whose
`update()` (from `set_goal` or `run_controller`) calls `sim.forward()` again before it reads the end-effector pose and
velocity, the Jacobians, the mass matrix and the bias forces. Nothing writes the simulation state between the two calls
(the controller writes `ctrl` only after it has run), and `mj_forward` is a pure function of that state and of
`qacc_warmstart`, which only `mj_step` writes. So the second call recomputes exactly what the first left in mjData,
and skipping it changes no number: tests/test_libero_sim.py proves the episodes bit-identical, one task per problem
class, against the plain LIBERO loop, and counts the skips (every substep but the first after a reset, where the
controller the reset just made does not update). `scripts/measure_sim.py` prints the saving: 1.21-1.29x the
physics-only steps per second on the 2-core CPU (two runs).

`RepeatedForwardSkip` wraps one robosuite `MjSim`'s `forward` and `step`: inside `stepping()` (around `env.step`
only), a forward asked for again before the next `mj_step` is skipped. Outside it (resets, set_init_state, a
snapshot restore: code that writes the state and then calls forward) every forward runs. Written by hand because
robosuite offers no switch for it; the wrap is on the instance, so other envs in the process are left alone.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class RepeatedForwardSkip:
    def __init__(self, sim: Any):
        self.sim = sim
        self._forward, self._step = sim.forward, sim.step  # the instance's own bound methods
        self._active = False
        self._fresh = False  # a forward ran since the last mj_step
        self.skipped = 0  # forward passes skipped since this wrap was made
        sim.forward, sim.step = self.forward, self.step

    @classmethod
    def on(cls, sim: Any) -> RepeatedForwardSkip:
        """The wrap of this sim, made on first use (a hard reset builds a new sim; a soft reset keeps the old one)."""
        existing = getattr(sim.forward, "__self__", None)
        return existing if isinstance(existing, cls) and existing.sim is sim else cls(sim)

    def forward(self) -> None:
        if self._active and self._fresh:
            self.skipped += 1
            return
        self._forward()
        self._fresh = True

    def step(self, *args, **kwargs) -> None:
        self._fresh = False
        self._step(*args, **kwargs)

    @contextlib.contextmanager
    def stepping(self) -> Iterator[None]:
        """Around one `env.step`: the only forward calls in there are the substep loop's and the controller's."""
        self._active, self._fresh = True, False
        try:
            yield
        finally:
            self._active, self._fresh = False, False
