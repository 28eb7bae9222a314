"""Rendering helpers for `LiberoSim`: the camera gate (render on demand) and the optional fast-render settings."""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

_GATED = "__pi0_camera_gate__"  # marks a sensor function that already goes through a gate


class CameraGate:
    """Gates robosuite's camera sensor functions: render when `open`, else return a preallocated black image.

    Why the sensor function and nothing else: robosuite samples every observable once per control step, at a physics
    substep fixed by its timers. Turning camera observables off (`modify_observable` 'enabled'/'active') changes those
    timers, or keeps rendering, and so changes the observations. Swapping only what the sensor returns keeps every
    observable's timing, so the images of the steps that are rendered are exactly those of an env that renders every
    step. The placeholder has the camera's shape and dtype, so robosuite's sensor validity checks accept it.

    Two places create camera sensors: the env's constructor (before we exist; `install()` gates those) and every hard
    reset, which calls `_create_camera_sensors` again; we wrap that method on the instance so the new sensors are
    gated from birth and a hard reset's internal validity checks do not render either.
    """

    def __init__(self, env: Any):
        self.env = env
        self.open = True
        self.renders = 0  # single-camera renders let through since this gate was made
        self.step_renders = 0  # the same, since the caller last zeroed it (one control step)
        original = env._create_camera_sensors

        @functools.wraps(original)
        def create_gated(cam_name, cam_w, cam_h, cam_d, cam_segs, modality="image"):
            if cam_d or cam_segs is not None:
                # Depth/segmentation sensors read the RGB sensor's cache entry; gating them is not needed for LIBERO's
                # RGB-only cameras and would need its own proof.
                raise ValueError("LiberoSim's camera gate supports RGB cameras only: set camera_depths=False, no segmentations")
            sensors, names = original(cam_name, cam_w, cam_h, cam_d, cam_segs, modality=modality)
            return [self._wrap(s, cam_h, cam_w) for s in sensors], names

        env._create_camera_sensors = create_gated
        self.install()

    def _camera_observables(self) -> list[str]:
        return [f"{cam}_image" for cam in self.env.camera_names]

    def _wrap(self, sensor_fn: Callable, height: int, width: int) -> Callable:
        if getattr(sensor_fn, _GATED, False):
            return sensor_fn
        placeholder = np.zeros((height, width, 3), dtype=np.uint8)

        @functools.wraps(sensor_fn)  # keeps the `__modality__` that robosuite's @sensor decorator set
        def gated(obs_cache):
            if self.open:
                self.renders += 1
                self.step_renders += 1
                return sensor_fn(obs_cache)
            return placeholder

        setattr(gated, _GATED, True)
        return gated

    def install(self) -> None:
        """Gate every camera observable's sensor that is not gated yet (idempotent; cheap after the first call)."""
        for cam, name in zip(self.env.camera_names, self._camera_observables()):
            obs = self.env._observables[name]
            if not getattr(obs._sensor, _GATED, False):
                h, w = self._size(cam)
                was_open, self.open = self.open, False  # modify_observable probes the sensor once: do not render
                try:
                    self.env.modify_observable(name, "sensor", self._wrap(obs._sensor, h, w))
                finally:
                    self.open = was_open

    def _size(self, cam: str) -> tuple[int, int]:
        i = list(self.env.camera_names).index(cam)
        return int(self.env.camera_heights[i]), int(self.env.camera_widths[i])

    def check_rendered(self, wanted: bool) -> None:
        """With the gate open for a step, robosuite must have sampled every camera in it; if its sampling timer ever
        skipped a step the observation would be stale, and with render on demand a placeholder: fail loudly."""
        n = len(self.env.camera_names)
        if wanted and self.step_renders < n:
            raise RuntimeError(
                f"robosuite sampled {self.step_renders} of {n} cameras in a step whose observation was wanted; "
                "its observable timing changed: run with render_on_demand=False"
            )


def apply_fast_render(sim: Any, image_size: int) -> None:
    """Cheaper CPU rendering: no multisampling, an offscreen buffer the size of the image, no reflections.

    Images differ from the default ones (which pretrained policies saw), so this is an option. A hard reset builds a
    new sim and render context, so call this after every reset; it is a no-op when already applied.
    """
    import mujoco

    ctx = sim._render_context_offscreen
    if ctx is None:
        return
    model = sim.model._model
    if not (model.vis.quality.offsamples == 0 and ctx.con.offWidth == image_size and ctx.con.offHeight == image_size):
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = image_size
        model.vis.global_.offheight = image_size
        ctx.gl_ctx.make_current()
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()  # the MjrContext reads offsamples/offwidth/offheight when created
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    ctx.vopt.geomgroup[0] = 0  # group 0 holds collision meshes: they must stay hidden
