"""Fast reset for LIBERO: a soft reset that runs from exactly the state a hard reset runs from.

A hard reset (robosuite's default) recompiles the MJCF model, builds a new MjSim, render context and robot objects,
then runs the env's `_reset_internal` (robot to its home pose, new controller, LIBERO's samplers place objects and
fixtures): 2-3 s on this CPU. A soft reset (`env.hard_reset = False`) only calls `mj_resetData` and runs the same
`_reset_internal` on the old objects: 0.3-0.5 s. Left alone, soft-reset episodes drift from hard-reset ones (about
1e-2 from the second episode on) because state survives a soft reset that a hard reset builds afresh:

* Python state of the robot objects (a hard reset makes new ones). The main culprit is the gripper model's
  `current_action`, an integrator of gripper commands (`clip(current_action + speed * sign(a))`): fresh it is zero,
  after a soft reset it holds the previous episode's value, so the next episode's first gripper torques differ.
  Robot attributes (delta buffers, cached torques, ...) are the rest of this family.
* mjModel fields LIBERO writes at run time: fixture poses (`body_pos`/`body_quat`, from the placement samplers) and
  site colours (`site_rgba`, toggled by e.g. the stove's burner). A hard reset recompiles them from the XML.
* mjData beyond what an init state sets (qpos/qvel/time): warm-start accelerations, activations, controls, applied
  forces, plugin state; and derived quantities the controller reads when it is built.
* Lists of the env object itself that LIBERO creates once (in `__init__`) and `_load_model` appends to without ever
  clearing them, so that every hard reset adds one more batch: `object_property_initializers` (one `OpenCloseSampler`
  or `TurnOnOffSampler` per `(Open ...)`, `(Close ...)`, `(Turnon ...)`, `(Turnoff ...)` in the bddl's initial state:
  libero_spatial task 4, libero_10 tasks 3, 8, 9, libero_90 tasks 0-5 and 22-39) and `visualization_sites_list`.
  After the constructor and n hard resets each property sampler is in the list n+1 times; `_reset_internal` runs
  every copy, each draws one joint value from numpy's global RNG (the last wins), so each hard reset draws one number
  more than the one before it and every later draw (fixture positions) shifts. A soft reset reloads nothing, so it
  kept the first reset's count: in libero_10 task 3 the cabinet and the wine rack (fixtures: `body_pos`, which the
  init state does not set) stood up to 1 cm off from the hard-reset episode's, so the images differed while the
  robot's proprio did not. This was the "visual state" missing for the kitchen class; it was no rendering state,
  and it hit every class with such a task, Libero_Tabletop_Manipulation too (libero_spatial task 4).

So the snapshot is taken at the one point both paths share, the start of `_reset_internal`, in the env's constructor
(`capture_in_constructor`: it runs the same `_load_model`, `_initialize_sim`, `_reset_internal` sequence as a hard
reset, so a task's first episode needs no hard reset either), and again on any hard reset a caller forces: a full copy
of the MjData; every mutable numeric array of the MjModel (all but large static mesh/texture data that only the
compiler writes); and the plain-data attributes (numpy arrays, numbers, strings, flags, robosuite's numeric buffers,
and containers of those) of each robot, its gripper and its controller if it has one yet. References to the sim,
models, XML trees and functions are not data and are never touched. On a soft reset, `restore` writes all of that back
at the start of `_reset_internal` (deep copies; plain attributes the fresh objects did not have yet are removed); and
it appends to each accumulating list the batch the snapshot's model load appended (the same stateless samplers and
names, their number counted from the parsed bddl and checked against the batch before), as `_load_model` would have.
So `_reset_internal` and everything after it (set_init_state, settle steps) runs on the same inputs as after a hard
reset. Capturing earlier or later is worse: after `_reset_internal` the placement samplers have already drawn this
episode's fixture jitter, which a later episode must draw afresh.

LIBERO's samplers draw from numpy's global RNG, so hard-reset episodes themselves differ from one another (fixture
jitter) unless that RNG is seeded the same way: `LiberoSim` seeds it per episode (see there), for both paths. Left
alone, the growing property-sampler list would make a task with property samplers draw its fixtures from the seed
*and* the number of resets its env ran before (stock LIBERO does). So `LiberoSim`'s hook, right after the capture or
the restore, sets that list to a count of copies of the batch (`set_property_sampler_copies`) that the reset seeding
fixes (libero_sim.py), on both paths alike; the restore's append of that batch is then overwritten, and fast and hard
resets stay equal bit for bit because both run the count set there.

Exactness is not argued from this list alone: tests/test_libero_sim.py compares, bit for bit, episodes after fast
resets with episodes after hard resets (several episodes in a row, revisiting init states, one task per problem class
the shipped suites use, tasks with property samplers included), and `fast_reset_verified` enables the fast path only
for the LIBERO env classes (problem classes) proven that way.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

# LIBERO problem classes whose fast-reset episodes were measured bit-identical to hard-reset ones (see module doc and
# tests/test_libero_sim.py, one task per class). Which shipped suite uses which class:
#   Libero_Tabletop_Manipulation: libero_spatial, libero_goal (and their LIBERO-PRO variants);
#   Libero_Floor_Manipulation: libero_object (and variants);
#   Libero_Kitchen_Tabletop_Manipulation: libero_10 tasks 2, 3, 8, 9; libero_90 tasks 0-45;
#   Libero_Living_Room_Tabletop_Manipulation: libero_10 tasks 0, 1, 4, 6, 7; libero_90 tasks 46-72;
#   Libero_Study_Tabletop_Manipulation: libero_10 task 5; libero_90 tasks 73-89.
# Not listed, so always hard-reset: Libero_Coffee_Table_Manipulation, which no shipped suite uses (nothing to test on).
VERIFIED_ENV_CLASSES = frozenset(
    {
        "Libero_Tabletop_Manipulation",
        "Libero_Floor_Manipulation",
        "Libero_Kitchen_Tabletop_Manipulation",
        "Libero_Living_Room_Tabletop_Manipulation",
        "Libero_Study_Tabletop_Manipulation",
    }
)

# Large MjModel arrays that only the XML compiler writes; copying them every reset would cost time for nothing.
_STATIC_MODEL_PREFIXES = ("mesh_", "tex_data", "hfield_data", "skin_", "flex_", "names", "paths", "text_data")


def _property_batch(env: Any) -> int:
    """How many samplers one `_load_model` appends to `object_property_initializers` (BDDLBaseDomain's
    `_add_placement_initializer`: one per open/close/turnon/turnoff initial state of an object with a settable
    joint)."""
    states = env.object_states_dict
    return sum(
        1
        for s in env.parsed_problem["initial_state"]
        if s[0] in ("open", "close", "turnon", "turnoff") and s[1] in states and hasattr(states[s[1]], "set_joint")
    )


def _vis_batch(env: Any) -> int:
    """How many names one `_load_model` appends to `visualization_sites_list` (the problem classes'
    `_load_sites_in_arena`: one per fixture or object with visualisation sites)."""
    bodies = list(env.fixtures_dict.values()) + list(env.objects_dict.values())
    return sum(1 for body in bodies if body.object_properties["vis_site_names"] != {})


# Lists LIBERO creates once and `_load_model` appends to on every hard reset (see module doc): name -> batch size.
_ACCUMULATING_LISTS = {"object_property_initializers": _property_batch, "visualization_sites_list": _vis_batch}


def _item_key(item: Any) -> Any:
    if hasattr(item, "__dict__"):
        return type(item).__name__, sorted((k, repr(v)) for k, v in vars(item).items())
    return item


def _appended_batch(env: Any, name: str, in_constructor: bool = False) -> list | None:
    """What the hard reset now running appended to one accumulating list (its last batch), checked against the batch
    before it (the constructor's at least), so a LIBERO that appends differently fails loudly, not silently. In the
    constructor the list must hold that one batch. None when the env has no such list or the list stays empty."""
    items = getattr(env, name, None)
    if not isinstance(items, list):
        return None
    n = _ACCUMULATING_LISTS[name](env)
    if n == 0 and not items:
        return None
    if in_constructor:
        wrong = n == 0 or len(items) != n
    else:
        wrong = n == 0 or len(items) < 2 * n or len(items) % n or [_item_key(x) for x in items[-n:]] != [
            _item_key(x) for x in items[-2 * n : -n]
        ]
    if wrong:
        raise RuntimeError(
            f"{type(env).__name__}.{name} (length {len(items)}) is not whole batches of {n}, "
            "as LIBERO's _load_model appends them; its growth cannot be replayed"
        )
    return list(items[-n:])


def _appended_batches(env: Any, in_constructor: bool) -> dict[str, list]:
    batches = {name: _appended_batch(env, name, in_constructor) for name in _ACCUMULATING_LISTS}
    return {name: batch for name, batch in batches.items() if batch is not None}


PROPERTY_SAMPLERS = "object_property_initializers"


def property_sampler_batch(env: Any) -> list | None:
    """The property samplers one hard reset's `_load_model` appended (call during a hard reset, at the start of
    `_reset_internal`); None for a task without any."""
    return _appended_batch(env, PROPERTY_SAMPLERS)


def set_property_sampler_copies(env: Any, batch: list, copies: int) -> None:
    """Make `object_property_initializers` hold `copies` copies of the batch: what it holds in stock LIBERO at the
    start of the (copies-1)-th reset after the constructor (the constructor and each hard reset append one batch).
    The samplers are stateless; each copy draws one number from numpy's global RNG, so the count fixes which draws
    the fixture placements get."""
    getattr(env, PROPERTY_SAMPLERS)[:] = list(batch) * copies


def fast_reset_verified(env: Any) -> bool:
    """Whether this robosuite env's class is one whose fast reset was proven equal to a hard reset."""
    return type(env).__name__ in VERIFIED_ENV_CLASSES


def _is_plain(value: Any) -> bool:
    """Plain data: safe to deep-copy and write back (no references into the sim, models or callables)."""
    from robosuite.utils.buffers import Buffer

    if value is None or isinstance(value, (bool, int, float, str, bytes, np.generic)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype != object
    if isinstance(value, Buffer):  # RingBuffer/DeltaBuffer/DelayedBuffer: numpy arrays and counters only
        return all(_is_plain(v) for v in vars(value).values())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _plain_attrs(obj: Any) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in vars(obj).items() if _is_plain(v)}


def _robot_parts(robot: Any) -> dict[str, Any]:
    parts = {"robot": robot}
    if getattr(robot, "has_gripper", False):
        parts["gripper"] = robot.gripper
    if getattr(robot, "controller", None) is not None:
        parts["controller"] = robot.controller
    return parts


@dataclass
class ResetSnapshot:
    data: Any  # mujoco.MjData, a full copy
    model_arrays: dict[str, np.ndarray]
    python_state: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # per robot: part -> attrs
    appended: dict[str, list] = field(default_factory=dict)  # accumulating list -> the batch a `_load_model` appends

    @classmethod
    def capture(cls, env: Any, in_constructor: bool = False) -> ResetSnapshot:
        """Call at the start of a hard reset's `_reset_internal` (fresh model, sim and robot objects), or of the
        constructor's (`in_constructor`: see `capture_in_constructor`)."""
        import mujoco

        model = env.sim.model._model
        data = mujoco.MjData(model)
        mujoco.mj_copyData(data, model, env.sim.data._data)
        arrays = {}
        for name in dir(model):
            if name.startswith("_") or name.startswith(_STATIC_MODEL_PREFIXES):
                continue
            value = getattr(model, name)
            if isinstance(value, np.ndarray) and value.size and value.flags.writeable:
                arrays[name] = value.copy()
        python_state = [
            {part: _plain_attrs(obj) for part, obj in _robot_parts(robot).items()} for robot in env.robots
        ]
        return cls(data=data, model_arrays=arrays, python_state=python_state, appended=_appended_batches(env, in_constructor))

    def restore(self, env: Any) -> None:
        """Call at the start of a soft reset's `_reset_internal` (after robosuite's `mj_resetData`)."""
        import mujoco

        model = env.sim.model._model
        for name, value in self.model_arrays.items():
            getattr(model, name)[...] = value
        mujoco.mj_copyData(env.sim.data._data, model, self.data)
        for name, batch in self.appended.items():
            getattr(env, name).extend(batch)  # what a hard reset's `_load_model` would append (stateless items)
        if len(env.robots) != len(self.python_state):
            raise RuntimeError("fast reset: the env's robots changed since the snapshot; use force_hard_reset=True")
        for robot, state in zip(env.robots, self.python_state):
            parts = _robot_parts(robot)
            for part, attrs in state.items():
                obj = parts[part]
                for k in [k for k, v in vars(obj).items() if k not in attrs and _is_plain(v)]:
                    delattr(obj, k)  # made after the fresh state (during reset or steps): a fresh object lacks it
                for k, v in attrs.items():
                    setattr(obj, k, copy.deepcopy(v))


@dataclass
class ConstructorCapture:
    snapshot: ResetSnapshot | None = None
    error: Exception | None = None  # the capture raised (the constructor itself went on)


@contextlib.contextmanager
def capture_in_constructor() -> Iterator[ConstructorCapture]:
    """Take the snapshot inside the env's constructor, at the start of its `_reset_internal`, so a task's first
    episode can already reset the fast way: the constructor has just compiled the model and built the sim, render
    context and robot models, the state a hard reset's `_reset_internal` starts from, so the hard reset LIBERO's first
    `env.reset()` would run (a second model compile and render context, about 2.5 s on a 2-core CPU) buys nothing.
    tests/test_libero_sim.py proves those first episodes equal to hard-reset ones, bit for bit, per problem class.

    Yields a `ConstructorCapture` that holds the snapshot, or the capture's error, once the constructor has run
    (neither if it never reached `_reset_internal`). The method is swapped on LIBERO's base class because the
    constructor calls it before there is an instance to hook; the swap lasts only for the `with` block, in a worker
    process that builds one env at a time."""
    from libero.libero.envs.bddl_base_domain import BDDLBaseDomain

    original = BDDLBaseDomain.__dict__["_reset_internal"]
    captured = ConstructorCapture()

    def reset_internal(env):
        if captured.snapshot is None and captured.error is None:
            try:
                captured.snapshot = ResetSnapshot.capture(env, in_constructor=True)
            except Exception as exc:  # the caller raises it once the env exists (and can be closed)
                captured.error = exc
        return original(env)

    BDDLBaseDomain._reset_internal = reset_internal
    try:
        yield captured
    finally:
        BDDLBaseDomain._reset_internal = original
