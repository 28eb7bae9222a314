"""Compiled LIBERO scenes kept on disk in MuJoCo's own binary model format (MJB): an env built in a fresh process
loads its scene's model instead of compiling the scene's XML again.

Why: compiling a LIBERO scene is slow in a fresh process, where MuJoCo decodes all of the scene's textures and meshes
(a second compile in the same process reuses its in-process asset cache), and loading the compiled model is fast: a
fresh worker's start takes 1.50-1.66x as long compiling as loading (scripts/reset_times.py, docs/PERFORMANCE.md). Every
env worker starts in a fresh process, and so does every worker replaced after a crash. All ten libero_spatial tasks compile the same XML (the
tasks differ in their goal and init states, not in the scene), so one file serves a whole suite.

Episodes do not change: MJB is MuJoCo's serialisation of `mjModel`, and every array of a loaded model equals the
compiled one's (tests/test_libero_model_cache.py compares the arrays and whole episodes, bit for bit).

Written by hand because neither MuJoCo (which has the MJB format but no cache) nor robosuite keeps compiled models.
- Key: sha256 of this format's version, MuJoCo's version, the XML text, and the path, size and modification time of
  every file the XML names (meshes, textures). A scene naming a relative or missing file is compiled, never cached.
- Writers: the process that takes a key's lock without waiting writes its file (to a temporary name, then renamed,
  so a reader sees the whole file or none); processes that find the lock taken compile as they would have. So 14
  workers starting together on an empty cache take the time they always took, and one of them writes.
- Size: after a write, the least recently used files go until the cache is within its budget; a load refreshes its
  file's modification time. A file MuJoCo cannot read is removed and the scene compiled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

from pi0.ript.env.reset_stream import cache_root

FORMAT_VERSION = 1
# Attributes through which an MJCF file names another file: mesh/texture/hfield/skin `file`, and a cube texture's six.
_FILE_ATTRIBUTE = re.compile(r'\bfile(?:right|left|up|down|front|back)?="([^"]*)"')


def default_cache_dir() -> Path:
    return cache_root() / "mujoco_models"


def scene_key(xml: str, mujoco_version: str) -> str | None:
    """The cache key of a scene XML, or None when it names a file by a relative path or a file that is not there."""
    digest = hashlib.sha256(f"{FORMAT_VERSION}\0{mujoco_version}\0".encode())
    digest.update(xml.encode())
    for path in sorted(set(_FILE_ATTRIBUTE.findall(xml))):
        if not os.path.isabs(path):
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class SceneModelCache:
    """Compiled scene models under `directory` (default `$PI0_RIPT_CACHE/mujoco_models`, else
    `~/.cache/pi0-ript/mujoco_models`), at most `max_bytes` of them; with `max_bytes` 0 it neither reads nor writes and
    only compiles, exactly as robosuite does. Counts what it did in `loaded`, `compiled` and `written`."""

    def __init__(self, directory: str | Path = "", max_bytes: int = 0):
        self.directory = Path(directory or default_cache_dir())
        self.max_bytes = int(max_bytes)
        self.loaded = self.compiled = self.written = 0

    def counts(self) -> dict[str, int]:
        return {"loaded": self.loaded, "compiled": self.compiled, "written": self.written}

    def model(self, xml: str) -> Any:
        """The `mujoco.MjModel` of a scene XML: loaded from the cache when there, else compiled (and written)."""
        import mujoco

        key = scene_key(xml, mujoco.__version__) if self.max_bytes > 0 else None
        if key is None:
            self.compiled += 1
            return mujoco.MjModel.from_xml_string(xml)
        path = self.directory / f"{key}.mjb"
        if path.exists():
            try:
                model = mujoco.MjModel.from_binary_path(str(path))
            except (ValueError, OSError):  # unreadable (say, a disk that filled up mid-write elsewhere): rebuild it
                with contextlib.suppress(OSError):
                    path.unlink()
            else:
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used: evicted last
                self.loaded += 1
                return model
        model = mujoco.MjModel.from_xml_string(xml)
        self.compiled += 1
        self._write(model, path)
        return model

    def _write(self, model: Any, path: Path) -> None:
        import mujoco

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another process is writing this scene
                if path.exists():
                    return
                tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
                try:
                    mujoco.mj_saveModel(model, str(tmp), None)
                    if tmp.stat().st_size > self.max_bytes:
                        return  # larger than the whole budget: not kept
                    os.replace(tmp, path)
                finally:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
            self.written += 1
            self._evict(keep=path)
        except (OSError, ValueError):  # MuJoCo reports a failed save as ValueError
            return  # a cache that cannot be written (read-only home, full disk) costs the compile, nothing more

    def _evict(self, keep: Path) -> None:
        files = []
        for path in self.directory.glob("*.mjb"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                files.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                path.with_suffix(".lock").unlink()
            total -= size


@contextlib.contextmanager
def scene_models_from(cache: SceneModelCache) -> Iterator[None]:
    """Within the block, robosuite builds every env's simulation from `cache` (construction and hard resets alike).
    robosuite makes its `MjSim` through the `MjSim.from_xml_string` class method only (which compiles the XML and
    wraps the model); it is swapped for the block."""
    from robosuite.utils.binding_utils import MjSim

    original = MjSim.__dict__["from_xml_string"]
    MjSim.from_xml_string = classmethod(lambda cls, xml: cls(cache.model(xml)))
    try:
        yield
    finally:
        MjSim.from_xml_string = original
