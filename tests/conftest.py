"""Shared test helpers: configs for the built-in reach task and LIBERO, and a check that no worker outlives a test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import psutil
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# The tests' caches (reset streams, compiled scenes: ~0.2-0.3 GB per scene) live in one directory per test session,
# removed at its end, not in the user's ~/.cache/pi0-ript; a PI0_RIPT_CACHE already set is kept. Env workers inherit it.
_SESSION_CACHE = None if os.environ.get("PI0_RIPT_CACHE") else tempfile.mkdtemp(prefix="pi0-ript-test-cache-")
if _SESSION_CACHE is not None:
    os.environ["PI0_RIPT_CACHE"] = _SESSION_CACHE
    atexit.register(shutil.rmtree, _SESSION_CACHE, True)

from pi0.ript.config.schema import load_config  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reach_config(*overrides: str):
    return load_config(None, ["task.benchmark_name=reach", "task.max_episode_length=25", "task.num_wait_steps=0", *overrides])


def libero_config(*overrides: str):
    """Small images, fast rendering, short episodes: what a 2-core CPU can afford in CI."""
    return load_config(
        None,
        ["task.benchmark_name=libero_spatial", "task.image_size=64", "task.fast_render=true", "task.max_episode_length=12", *overrides],
    )


def live_children() -> list[psutil.Process]:
    """Child processes still running, minus multiprocessing's resource tracker (one per interpreter, by design)."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def no_orphans():
    """Fails the test if it leaves any child process behind."""
    before = {p.pid for p in live_children()}
    yield
    leftover = [p for p in live_children() if p.pid not in before]
    if leftover:
        psutil.wait_procs(leftover, timeout=5)
        leftover = [p for p in live_children() if p.pid not in before]
    assert not leftover, f"processes left behind: {[(p.pid, p.name()) for p in leftover]}"
