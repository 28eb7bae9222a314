"""LIBERO behind the `SimEnv` contract: render only the observations the policy reads, reset without rebuilding, and
compute each physics substep's forward pass once.

`LiberoEnvSpec` is plain picklable data; `LiberoEnvSpec.make()` builds a `LiberoSim` in the process that will own it.

Three speed features, all on by default and all proven (tests/test_libero_sim.py) to leave every episode unchanged,
bit for bit, against the plain LIBERO loop (render every step, hard reset every episode, robosuite's physics calls):

* Render on demand (`render_on_demand`): robosuite samples every observable, cameras included, once per control step
  at a fixed physics substep. We leave the observables and their timing alone and only gate the camera *sensor
  function*: it renders when the caller wants this step's observation and returns a preallocated black image
  otherwise. Physics, reward and success never look at images, so they cannot change. See `libero_render.py`.
* Fast reset (`fast_reset`): a soft reset (`hard_reset=False`, no model recompilation) followed by restoring the state
  a hard reset would have produced, captured inside the env's constructor at the point a hard reset's own state is
  taken, so even a task's first episode skips the hard reset that LIBERO's first `env.reset()` runs. See `libero_reset.py`.
* One forward pass per physics substep (`skip_repeated_forward`): robosuite computes it three times at the same state
  (its env step, the arm controller, `mj_step`); we skip the repeats. See `libero_physics.py`.

And one that does not touch an episode at all: compiled scenes are kept on disk (`model_cache_gb`), so an env built in
a fresh process loads its MuJoCo model instead of compiling the scene again. See `libero_model_cache.py`.

Where fixtures stand is drawn at each reset from numpy's global RNG; `reset_seeding` says from which state
(task.reset_seeding, set by eval.protocol): `episode` (pi0-ript's own: a seed per (seed, task, init state), whatever ran
before), `task_stream` (openpi's: the task's stream seeded once, the k-th reset continuing it, replayed and cached by
`reset_stream.py`) or `seed_plus_position` (LeRobot's: seed + k before the k-th reset).

Tasks whose bddl opens, closes or turns on an object also draw one number per property sampler before the fixtures,
and stock LIBERO runs one more copy of those samplers at every hard reset (libero_reset.py). The hook sets the count
the seeding implies, on both reset paths: `episode` always a fresh env's first reset's (2 copies), `task_stream` the
count openpi's env has at the episode's position (k + 2 for position k: one env per task, built then reset once per
episode), `seed_plus_position` LeRobot's (3: its env resets once when built, then once for the episode, assuming one
episode per sub-env per task, as the preset does). So for those tasks too a scene depends on the seeding's inputs only.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import hashlib
import logging
import os
import re
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from pi0.ript.config.schema import LIBERO_PRO_SUITES, LIBERO_SUITES, RESET_SEEDINGS, TaskConfig
from pi0.ript.env.libero_registry import _LIBERO_MISSING
from pi0.ript.env.episode import stream_position_of
from pi0.ript.env.libero_model_cache import SceneModelCache, scene_models_from
from pi0.ript.env.libero_physics import RepeatedForwardSkip
from pi0.ript.env.libero_render import CameraGate, apply_fast_render
from pi0.ript.env.libero_reset import (
    PROPERTY_SAMPLERS,
    ConstructorCapture,
    ResetSnapshot,
    capture_in_constructor,
    fast_reset_verified,
    property_sampler_batch,
    set_property_sampler_copies,
)
from pi0.ript.env.reset_stream import RngState, StreamCache, same_state, seeded_state
from pi0.ript.env.sim import ACTION_DIM, NOOP_ACTION, OBS_KEYS, Observation, ResetResult, StepResult

SUITES = LIBERO_SUITES + tuple(LIBERO_PRO_SUITES)

# LIBERO's raw observation keys for each of our OBS_KEYS.
_LIBERO_KEYS = {
    "agentview_image": "agentview_image",
    "wrist_image": "robot0_eye_in_hand_image",
    "eef_pos": "robot0_eef_pos",
    "eef_quat": "robot0_eef_quat",
    "gripper_qpos": "robot0_gripper_qpos",
}
log = logging.getLogger(__name__)
DEFAULT_MUJOCO_GL = "egl"  # headless; a MUJOCO_GL already set (osmesa, glfw) is kept


def mujoco_gl_backend() -> str:
    """The MuJoCo rendering backend LIBERO envs started from this process use (workers inherit the environment)."""
    return os.environ.get("MUJOCO_GL", DEFAULT_MUJOCO_GL)


# Counts the EGL devices in a child process, as robosuite's context would list them: the parent (which holds the
# model's CUDA context) loads no GL library.
_EGL_DEVICE_COUNT = "from mujoco.egl import egl_ext as EGL; print(len(EGL.eglQueryDevicesEXT()))"


def egl_device_count() -> int:
    """How many EGL devices MuJoCo can open here (0 when none or the query fails)."""
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl"}
    try:
        done = subprocess.run([sys.executable, "-c", _EGL_DEVICE_COUNT], env=env, capture_output=True, text=True, timeout=60)
        return int(done.stdout.split()[-1]) if done.returncode == 0 else 0
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return 0


def render_on_gpu(visible_index: int, count_devices: Callable[[], int] | None = None) -> str | None:
    """Have the LIBERO envs this process starts from now on render on the GPU that torch calls `cuda:visible_index`,
    the policy's (with several GPUs, one per torchrun rank, instead of every rank's envs on the first card). Sets
    MUJOCO_EGL_DEVICE_ID, the EGL device that robosuite's and MuJoCo's contexts open; workers inherit it. The EGL
    index is the card's physical one (CUDA_VISIBLE_DEVICES maps it; NVIDIA's EGL and CUDA both count cards in PCI
    order on the usual box). Returns the id set, or None where it leaves things alone: a MUJOCO_EGL_DEVICE_ID the
    user set, a backend other than EGL, CUDA_VISIBLE_DEVICES naming cards by UUID, or an EGL that lists too few
    devices (a container without NVIDIA's EGL library renders on Mesa's one software device: an id past it would stop
    every worker)."""
    if os.environ.get("MUJOCO_EGL_DEVICE_ID") is not None or mujoco_gl_backend() != "egl":
        return None
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    if not visible:
        device = str(visible_index)
    elif visible_index < len(visible) and visible[visible_index].isdigit():
        device = visible[visible_index]
    else:
        return None
    available = (count_devices or egl_device_count)()
    if int(device) >= available:
        log.warning("EGL lists %d device(s), so the envs keep rendering on the first: no EGL device %s for cuda:%d",
                    available, device, visible_index)
        return None
    os.environ["MUJOCO_EGL_DEVICE_ID"] = device
    return device


def _import_libero():
    """Import LIBERO with headless rendering selected first: robosuite picks its GL backend at import time."""
    os.environ.setdefault("MUJOCO_GL", DEFAULT_MUJOCO_GL)
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:  # one line, with the fix; the original error stays chained for debugging
        raise ImportError(f"{_LIBERO_MISSING} ({e})") from e
    return benchmark, get_libero_path, OffScreenRenderEnv


@functools.lru_cache(maxsize=None)
def _benchmark(name: str):
    benchmark, _, _ = _import_libero()
    return benchmark.get_benchmark_dict()[name]()


@functools.lru_cache(maxsize=None)
def _init_states(name: str, task_id: int) -> np.ndarray:
    return np.asarray(_benchmark(name).get_task_init_states(task_id))


@functools.lru_cache(maxsize=None)
def _bddl_language(bddl_path: str) -> str:
    """The instruction a bddl file states in `(:language ...)`, whitespace-normalised as LIBERO's parser joins it."""
    with open(bddl_path) as stream:
        match = re.search(r"\(:language\s+([^)]*)\)", stream.read())
    if match is None:
        raise ValueError(f"{bddl_path} states no (:language ...) instruction")
    return " ".join(match.group(1).split())


@dataclass(frozen=True)
class LiberoEnvSpec:
    """Recipe for a `LiberoSim`: plain data only, so it pickles across a spawn boundary."""

    # LIBERO's cameras render upside down and mirrored (policies get them turned by 180 degrees; so do saved videos).
    renders_upside_down: ClassVar[bool] = True
    # Defaults are the config's (`TaskConfig`, stated once there); `factory.make_env_spec` passes the run's values.
    benchmark_name: str
    image_size: int = TaskConfig.image_size
    seed: int = TaskConfig.seed
    num_wait_steps: int = TaskConfig.num_wait_steps
    fast_render: bool = TaskConfig.fast_render  # faster images that differ from what pretrained policies saw
    render_on_demand: bool = TaskConfig.render_on_demand
    fast_reset: bool = TaskConfig.fast_reset
    skip_repeated_forward: bool = TaskConfig.skip_repeated_forward
    model_cache_gb: float = TaskConfig.model_cache_gb  # 0: compile every scene, as LIBERO does
    reset_seeding: str = TaskConfig.reset_seeding  # episode | task_stream | seed_plus_position (see the module doc)
    stream_cache_dir: str = ""  # task_stream: where replayed streams are kept; "": $PI0_RIPT_CACHE or ~/.cache/pi0-ript
    model_cache_dir: str = ""  # compiled scenes; "": $PI0_RIPT_CACHE/mujoco_models or ~/.cache/pi0-ript/mujoco_models

    def __post_init__(self):
        if self.benchmark_name not in SUITES:
            raise ValueError(f"unknown LIBERO suite {self.benchmark_name!r}: allowed {', '.join(SUITES)}")
        if not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        if not isinstance(self.num_wait_steps, int) or self.num_wait_steps < 0:
            raise ValueError(f"num_wait_steps must be an int >= 0, got {self.num_wait_steps!r}")
        if isinstance(self.model_cache_gb, bool) or not isinstance(self.model_cache_gb, (int, float)) or self.model_cache_gb < 0:
            raise ValueError(f"model_cache_gb must be a number >= 0 (0: no cache), got {self.model_cache_gb!r}")
        if self.reset_seeding not in RESET_SEEDINGS:
            raise ValueError(f"reset_seeding={self.reset_seeding!r}: allowed {', '.join(RESET_SEEDINGS)}")

    def make(self) -> LiberoSim:
        return LiberoSim(self)

    def num_tasks(self) -> int:
        return int(_benchmark(self.benchmark_name).n_tasks)

    def check_task(self, task_id: int) -> int:
        n = self.num_tasks()
        if isinstance(task_id, bool) or not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < n:
            raise ValueError(f"task_id {task_id!r} is out of range for {self.benchmark_name}: allowed 0..{n - 1}")
        return int(task_id)

    def num_init_states(self, task_id: int) -> int:
        return len(_init_states(self.benchmark_name, self.check_task(task_id)))

    def init_state(self, task_id: int, index: int) -> np.ndarray:
        states = _init_states(self.benchmark_name, self.check_task(task_id))
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(states):
            raise ValueError(
                f"init state index {index!r} is out of range for {self.benchmark_name} task {task_id}: "
                f"allowed 0..{len(states) - 1}, or pass a state array of length {states.shape[1]}"
            )
        return states[int(index)]

    def task_name(self, task_id: int) -> str:
        return _benchmark(self.benchmark_name).get_task(self.check_task(task_id)).name

    def instruction(self, task_id: int) -> str:
        """The suite's instruction (LIBERO's `task.language`, as openpi's evaluation uses it). LIBERO-PRO keeps that
        field unperturbed and writes a reworded (`_lan`) or replaced (`_task`) instruction into the bddl file only:
        where a perturbed task's bddl instruction differs from its clean task's, the policy gets the bddl one; where
        it does not (`_object`, `_swap`), the clean instruction, so only the perturbed factor changes."""
        task_id = self.check_task(task_id)
        clean = LIBERO_PRO_SUITES.get(self.benchmark_name)
        if clean is not None:
            clean_spec = LiberoEnvSpec(benchmark_name=clean)
            perturbed_text = _bddl_language(self.bddl_file(task_id))
            if perturbed_text != _bddl_language(clean_spec.bddl_file(task_id)):
                return perturbed_text
            return clean_spec.instruction(task_id)
        return _benchmark(self.benchmark_name).get_task(task_id).language

    def bddl_file(self, task_id: int) -> str:
        _, get_libero_path, _ = _import_libero()
        task = _benchmark(self.benchmark_name).get_task(self.check_task(task_id))
        return os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)


@contextlib.contextmanager
def _isolated_global_rng(seed: int | None):
    """Run a block with numpy's global RNG (optionally seeded), then put the caller's RNG state back."""
    saved = np.random.get_state()
    try:
        if seed is not None:
            np.random.seed(seed % 2**32)
        yield
    finally:
        np.random.set_state(saved)


def _episode_seed(seed: int, task_id: int, index: int | None, state: np.ndarray) -> int:
    """Seed for one episode's reset draws: a function of the spec's seed, the task and the init state only."""
    key = index if index is not None else int.from_bytes(hashlib.sha256(state.tobytes()).digest()[:8], "little")
    return int(np.random.SeedSequence([seed, task_id, 0 if index is not None else 1, key]).generate_state(1)[0])


# LIBERO's constructor and each hard reset append one batch of property samplers (libero_reset.py), so the k-th reset
# after the constructor (1-based) runs k+1 copies and draws one number per copy before the fixture placements. Which
# count each seeding sets (`LiberoSim._sampler_copies_for`):
FRESH_SAMPLER_COPIES = 2  # `episode`: a fresh env's first reset, whatever this env ran before
LEROBOT_SAMPLER_COPIES = 3  # `seed_plus_position`: LeRobot's LiberoEnv resets once when built, then the episode's reset

REPLAY_RESETS_PER_TURN = 8  # task_stream: resets one worker replays per hold of the stream's file lock


def _mujoco_version() -> str:
    import mujoco

    return mujoco.__version__


def _fast_reset_failed(error: Exception) -> RuntimeError:
    return RuntimeError(
        f"fast reset failed ({type(error).__name__}: {error}) with mujoco {_mujoco_version()}: set task.fast_reset=false"
    )


def _close_at_exit(ref: weakref.ref) -> None:
    # robosuite's EGL context destructors print EGLError tracebacks when they run during interpreter teardown;
    # closing the env before that keeps exit quiet even when a caller forgot close().
    sim = ref()
    if sim is not None:
        sim.close()


class LiberoSim:
    """One LIBERO env that runs episodes of any task of one suite (implements `pi0.ript.env.sim.SimEnv`)."""

    def __init__(self, spec: LiberoEnvSpec):
        _import_libero()  # fail early, with the install hint, before any episode is requested
        self.spec = spec
        self._env = None  # libero OffScreenRenderEnv (ControlEnv wrapper around the robosuite env)
        self._task_id: int | None = None
        self._snapshot: ResetSnapshot | None = None
        self._gate: CameraGate | None = None
        self._forward_skip: RepeatedForwardSkip | None = None  # with skip_repeated_forward, on the current sim
        # Where env builds and hard resets get their MuJoCo model (model_cache_gb=0: compiled each time, as LIBERO does).
        self.scene_models = SceneModelCache(spec.model_cache_dir, int(spec.model_cache_gb * 2**30))
        self._camera_renders_before = 0  # renders of envs closed on task change, so the count spans the sim's life
        self._frame_renders = 0
        self._n_cameras = 2  # LIBERO's agentview + eye-in-hand; set from the env at build
        self._last_obs: Observation | None = None  # observation of the current step, when it was rendered
        self._pending: str | None = None  # what the _reset_internal hook does: "capture", "restore" or nothing
        self._hook_error: Exception | None = None  # raised by the hook inside LIBERO's reset, re-raised after it
        self._episode_seed = 0
        self._reset_attempts = 0
        self._entry_state: RngState | None = None  # a harness's state for the coming reset's draws (see the hook)
        self._drew_before_hook = False
        self._sampler_batch: list | None = None  # the task's property samplers, one `_load_model`'s batch
        self._sampler_copies = FRESH_SAMPLER_COPIES  # copies of that batch the coming reset runs (see the hook)
        self._streams: dict[int, list[RngState]] = {}  # task -> entry states of its task_stream (from StreamCache)
        self.replayed_resets = 0  # resets replayed to find task_stream entry states (0 when the cache had them)
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        self._atexit_registered = False

    # ---------------------------------------------------------------------------------------------------- building
    def _build(self, task_id: int) -> None:
        self._close_env()
        _, _, OffScreenRenderEnv = _import_libero()
        size = self.spec.image_size
        capture = capture_in_constructor() if self.spec.fast_reset else contextlib.nullcontext(ConstructorCapture())
        with _isolated_global_rng(self.spec.seed), scene_models_from(self.scene_models), capture as captured:
            self._env = OffScreenRenderEnv(
                bddl_file_name=self.spec.bddl_file(task_id), camera_heights=size, camera_widths=size
            )
        if captured.error is not None:
            self._env.close()
            self._env = None
            raise _fast_reset_failed(captured.error) from captured.error
        self._task_id = task_id
        # With the constructor's snapshot the task's first episode resets the fast way too (libero_reset.py).
        self._snapshot = captured.snapshot
        self._sampler_batch = self._snapshot.appended.get(PROPERTY_SAMPLERS) if self._snapshot else None
        self._gate = CameraGate(self._env.env)
        self._n_cameras = len(self._env.env.camera_names)
        self._wrap_reset_internal(self._env.env)
        if not self._atexit_registered:
            # Registered after the first EGL context exists: robosuite registers eglTerminate then, and atexit runs
            # handlers last-in first-out, so our close runs while EGL is still alive.
            atexit.register(self._atexit)
            self._atexit_registered = True

    def _wrap_reset_internal(self, env: Any) -> None:
        """Hook the start of robosuite's `_reset_internal`, the point hard and soft resets share (libero_reset.py):
        capture the fast-reset snapshot on a hard reset, restore it on a soft one, then seed the placement draws."""
        original = env._reset_internal

        @functools.wraps(original)
        def reset_internal():
            # LIBERO's reset retries in a `while` whose `finally: continue` swallows every exception, so one raised
            # here would loop forever (seen: MuJoCo 2.3.7 has no mj_copyData). Keep it, let the retry run without the
            # hook, and raise it once LIBERO's reset returns.
            try:
                if self._pending == "capture":
                    self._snapshot = ResetSnapshot.capture(env)
                elif self._pending == "restore":
                    self._snapshot.restore(env)
                # The property samplers the reset runs: LIBERO's list grows by one batch per hard reset, so left alone
                # the fixtures would depend on how many resets this env ran before. Set the count the seeding implies
                # (a retry after a RandomizationError is a new env.reset(): in stock LIBERO one more hard reset).
                if self._hook_error is None and env.hard_reset:  # (an error's retry runs without the hook)
                    self._sampler_batch = property_sampler_batch(env)
                if self._hook_error is None and self._sampler_batch is not None:
                    set_property_sampler_copies(env, self._sampler_batch, self._sampler_copies + self._reset_attempts)
            except Exception as exc:
                self._hook_error, self._pending = exc, None
                raise
            # LIBERO's samplers draw fixture jitter and articulated-object joints from numpy's global RNG: seed it per
            # episode (and set the sampler count above), so an episode depends on (seed, task, init state) only, not on
            # what ran before in this process (the parallel runner's workers run different histories) nor on the reset path. A retry after robosuite's
            # RandomizationError gets the next seed, as the unseeded loop would get fresh draws.
            if self._entry_state is None:
                np.random.seed((self._episode_seed + self._reset_attempts) % 2**32)
            elif self._reset_attempts == 0:
                # A harness's seeding: the state its reset starts drawing from (set before env.reset() too, so a
                # hard reset that drew before this point would show here). A retry runs the stream on, as LIBERO's
                # retry loop does in the harness.
                self._drew_before_hook = not same_state(np.random.get_state(), self._entry_state)
                np.random.set_state(self._entry_state)
            self._reset_attempts += 1
            original()

        env._reset_internal = reset_internal

    @property
    def _robosuite_env(self):
        return self._env.env

    def _resolve_init_state(self, task_id: int, init_state: int | np.ndarray) -> tuple[np.ndarray, int | None]:
        if isinstance(init_state, (int, np.integer)) and not isinstance(init_state, bool):
            return self.spec.init_state(task_id, int(init_state)), int(init_state)
        state = np.asarray(init_state, dtype=np.float64)
        expected = _init_states(self.spec.benchmark_name, task_id).shape[1]
        if state.ndim != 1 or state.shape[0] != expected:
            raise ValueError(
                f"init state of shape {state.shape} does not fit {self.spec.benchmark_name} task {task_id}: "
                f"pass an index or a flat state array of length {expected}"
            )
        return state, None

    # ---------------------------------------------------------------------------------------------------- episodes
    def reset(self, task_id: int, init_state: int | np.ndarray, force_hard_reset: bool = False) -> ResetResult:
        """`init_state`: an index, a `PositionedInitState` (an index and the episode's position in the task's reset
        stream, for the harness seedings; a plain index is its own position), or a state array (`episode` only)."""
        task_id = self.spec.check_task(task_id)
        state, index = self._resolve_init_state(task_id, init_state)
        position = stream_position_of(init_state)
        if position is None:
            position = index
        if self.spec.reset_seeding != "episode" and position is None:
            raise ValueError(
                f"reset_seeding={self.spec.reset_seeding} draws each scene from the episode's position in its task's "
                "stream: pass an init-state index (or an EpisodeRequest with stream_position), not a state array"
            )
        t0 = time.perf_counter()
        with _isolated_global_rng(None):  # the caller's numpy global RNG stream is left exactly as it was
            return self._reset(task_id, state, index, position, force_hard_reset, t0)

    def _entry_state_for(self, task_id: int, position: int | None) -> RngState | None:
        """The global RNG state the reset's draws start from under a harness's seeding; None for `episode`."""
        if self.spec.reset_seeding == "seed_plus_position":
            return seeded_state(self.spec.seed + position)
        if self.spec.reset_seeding == "task_stream":
            return self._stream_state(task_id, position)
        return None

    def _sampler_copies_for(self, position: int | None) -> int:
        """Copies of the property-sampler batch the episode's reset runs: the harness's count at that reset."""
        if self.spec.reset_seeding == "task_stream":
            return position + FRESH_SAMPLER_COPIES  # openpi: one env per task, episode k is its (k+1)-th reset
        if self.spec.reset_seeding == "seed_plus_position":
            return LEROBOT_SAMPLER_COPIES
        return FRESH_SAMPLER_COPIES

    def _stream_state(self, task_id: int, position: int) -> RngState:
        states = self._streams.get(task_id, [])
        cache = None
        while len(states) <= position:
            # A few resets per turn of the lock, saved each turn: workers needing the same stream take turns (each
            # reads what the others replayed), and a worker replaced mid-replay (runner.worker_timeout_s) loses
            # one turn at most.
            cache = cache or StreamCache(self.spec.stream_cache_dir, self.spec.benchmark_name, task_id, self.spec.seed, self.spec.bddl_file(task_id))
            with cache.locked():
                states = cache.load() or [seeded_state(self.spec.seed)]
                if len(states) <= position:
                    self._replay_stream(states, min(position, len(states) - 1 + REPLAY_RESETS_PER_TURN))
                    cache.save(states)
            self._streams[task_id] = states
        return states[position]

    def _replay_stream(self, states: list[RngState], position: int) -> None:
        """Extend a task's entry states to `position`: reset k starts from states[k] and leaves the stream where
        reset k+1 starts. Resets only (no init state, settle steps, policy steps: none of them draws), no rendering;
        fast resets where proven equal to hard ones."""
        while len(states) <= position:
            copies = self._sampler_copies_for(len(states) - 1)
            self._env_reset(False, states[-1], observe=False, sampler_copies=copies)
            states.append(np.random.get_state())
            self.replayed_resets += 1

    def _env_reset(self, force_hard_reset: bool, entry: RngState | None, observe: bool, sampler_copies: int) -> bool:
        """LIBERO's env.reset() on the fast or the hard path, its draws seeded per `reset_seeding` and running
        `sampler_copies` copies of the property samplers; True if hard."""
        env = self._robosuite_env
        hard = (
            force_hard_reset
            or not self.spec.fast_reset
            or self._snapshot is None
            or not fast_reset_verified(env)
        )
        self._reset_attempts = 0
        self._sampler_copies = sampler_copies
        self._entry_state, self._drew_before_hook = entry, False
        self._pending = ("capture" if self.spec.fast_reset else None) if hard else "restore"
        # The env.reset() and set_init_state() observations are overwritten by the settle steps, so with render on
        # demand only the reset's last observation is rendered: once per reset.
        self._gate.open = observe and not self.spec.render_on_demand
        env.hard_reset = hard
        self._hook_error = None
        if entry is not None:
            np.random.set_state(entry)  # where the harness's reset starts (the hook checks nothing drew before it)
        try:
            with scene_models_from(self.scene_models):
                self._env.reset()
        finally:
            self._pending, self._entry_state = None, None
        if self._hook_error is not None:
            error, self._hook_error, self._snapshot = self._hook_error, None, None
            raise _fast_reset_failed(error) from error
        if hard:
            # The replaced MjSim and its render context form a reference cycle; collect it now, while EGL is alive,
            # rather than at interpreter exit where its destructor prints EGLError tracebacks.
            gc.collect()
        if self._drew_before_hook:
            raise RuntimeError(
                f"{type(env).__name__}: LIBERO drew random numbers before _reset_internal, so reset_seeding="
                f"{self.spec.reset_seeding} cannot reproduce the harness's scenes here: use task.reset_seeding=episode"
            )
        if self.spec.fast_render:
            apply_fast_render(env.sim, self.spec.image_size)
        self._gate.install()  # a hard reset rebuilds the observables' sensors; make sure every camera is gated
        if self.spec.skip_repeated_forward:
            self._forward_skip = RepeatedForwardSkip.on(env.sim)  # a hard reset made a new sim
        return hard

    def _stepping(self):
        """Around every `env.step` (policy and settle steps): one forward pass per physics substep (libero_physics.py)."""
        return self._forward_skip.stepping() if self._forward_skip is not None else contextlib.nullcontext()

    def _reset(self, task_id, state, index, position, force_hard_reset, t0) -> ResetResult:
        scene_models_before = self.scene_models.counts()
        if self._env is None or task_id != self._task_id:
            self._build(task_id)
        on_demand = self.spec.render_on_demand
        entry = self._entry_state_for(task_id, position)  # may replay the task's stream first (task_stream)
        self._episode_seed = _episode_seed(self.spec.seed, task_id, index, state)
        hard = self._env_reset(force_hard_reset, entry, observe=True, sampler_copies=self._sampler_copies_for(position))

        n_wait = self.spec.num_wait_steps
        self._gate.open = (not on_demand) or n_wait == 0
        self._gate.step_renders = 0
        raw = self._env.set_init_state(state)
        success = bool(self._env.check_success())
        for i in range(n_wait):
            self._gate.open = (not on_demand) or i == n_wait - 1
            self._gate.step_renders = 0
            with self._stepping():
                raw, _, done, _ = self._env.step(NOOP_ACTION)
            success = bool(done)
        self._gate.check_rendered(wanted=True)
        obs = self._convert(raw)
        self._last_obs = obs
        return ResetResult(
            observation=obs,
            instruction=self.spec.instruction(task_id),
            task_name=self.spec.task_name(task_id),
            hard_reset=hard,
            info={"init_state_index": index, "success": success, "reset_s": time.perf_counter() - t0,
                  "stream_position": position if self.spec.reset_seeding != "episode" else None,
                  # MuJoCo models this reset loaded from the scene cache, compiled, and wrote to it
                  "scene_models": {k: v - scene_models_before[k] for k, v in self.scene_models.counts().items()}},
        )

    def step(self, action: np.ndarray, want_observation: bool) -> StepResult:
        if self._env is None:
            raise RuntimeError("LiberoSim.step called before reset(): call reset(task_id, init_state) first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action of shape {action.shape} given: LIBERO takes one action of shape ({ACTION_DIM},)")
        self._gate.open = want_observation or not self.spec.render_on_demand
        self._gate.step_renders = 0
        with self._stepping():
            raw, reward, done, info = self._env.step(action)
        # LIBERO's step returns its own success check (`_check_success()`) as `done`, computed on every step.
        success = bool(done)
        self._last_obs = None
        obs = None
        if want_observation:
            self._gate.check_rendered(wanted=True)
            obs = self._convert(raw)
            self._last_obs = obs
        return StepResult(observation=obs, reward=float(reward), success=success, info=dict(info))

    def render_frame(self) -> np.ndarray:
        """Agent-view frame of the current step: the observation's image when this step was rendered, else a fresh
        render of the agent-view camera alone (counted apart, in `frame_render_count`)."""
        if self._env is None:
            raise RuntimeError("LiberoSim.render_frame called before reset(): call reset(task_id, init_state) first")
        if self._last_obs is not None:
            return self._last_obs["agentview_image"].copy()
        self._frame_renders += 1
        size = self.spec.image_size
        return np.array(self._robosuite_env.sim.render(camera_name="agentview", width=size, height=size), copy=True)

    def _convert(self, raw: dict[str, Any]) -> Observation:
        # np.array(copy=True): robosuite hands out its observables' own buffers; ours must be owned and contiguous.
        return {k: np.ascontiguousarray(np.array(raw[_LIBERO_KEYS[k]], copy=True)) for k in OBS_KEYS}

    # ---------------------------------------------------------------------------------------------------- counters
    def render_count(self) -> int:
        """Observations rendered (both cameras once each) since this sim was built, across task changes."""
        return self.camera_render_count() // self._n_cameras

    def camera_render_count(self) -> int:
        """Single-camera renders through the gate (two per observation with LIBERO's two cameras)."""
        return self._camera_renders_before + (self._gate.renders if self._gate else 0)

    def frame_render_count(self) -> int:
        return self._frame_renders

    # ---------------------------------------------------------------------------------------------------- closing
    def _close_env(self) -> None:
        if self._env is not None:
            self._camera_renders_before += self._gate.renders if self._gate else 0
            env, self._env, self._gate, self._snapshot, self._forward_skip = self._env, None, None, None, None
            env.close()
            gc.collect()  # free the sim/render-context cycle while EGL is alive (no EGLError tracebacks at exit)

    def close(self) -> None:
        self._close_env()
        if self._atexit_registered:
            atexit.unregister(self._atexit)
            self._atexit_registered = False

    def __enter__(self) -> LiberoSim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
