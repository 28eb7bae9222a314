"""The env worker process and the parent's handle on it: a tiny explicit command protocol over a pipe.

Written by hand rather than with gymnasium's AsyncVectorEnv or LIBERO's SubprocVectorEnv because the runner needs
what neither offers: each env steps on its own schedule (no lock-step batch), a per-step "is the observation
wanted" flag (render on demand), a reset to any task/init state, and replacing one dead or hung worker without
touching the others. The shape follows gymnasium's worker: one loop over named commands, every reply is
`(ok, payload)`, and a failure comes back as the exception's type and message, never as a silent death.

Only plain data crosses the pipe: the env spec (a frozen dataclass), actions, observations (numpy arrays) and
results. Images travel pickled; see docs/PERFORMANCE.md for why that costs well under 5% of a step.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import types
from multiprocessing.connection import Connection
from typing import Any, Iterator

# Commands the worker understands.
RESET, STEP, RENDER_COUNT, STATS, CLOSE, PING = "reset", "step", "render_count", "stats", "close", "ping"
# Several steps from one command: [(action, want_observation), ...], played in order until one succeeds (the episode
# is then over); the reply is the list of the steps' results. One pipe round trip per chunk instead of per step.
STEPS = "steps"
# Not a command: what a new worker is "doing" until it has built its env spec and sent its pid.
START = "start"


class WorkerError(RuntimeError):
    """An exception raised inside a worker, re-raised in the parent with the worker's index."""


class WorkerDied(RuntimeError):
    """The worker process exited or stopped answering. `command`: what it was doing (START while starting)."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message)
        self.command = command


def _worker_loop(index: int, spec: Any, conn: Connection, parent_end: Connection | None) -> None:
    if parent_end is not None:
        parent_end.close()  # under fork the child inherits the parent's end; holding it would hide the parent's exit
    # Ctrl-C goes to the whole process group; the parent decides when workers stop (it sends CLOSE), so a worker
    # never dies mid-command and leaves the parent waiting.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = None
    try:
        env = spec.make()
        conn.send((True, os.getpid()))
        while True:
            try:
                command, data = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone: exit rather than linger as an orphan
            try:
                if command == STEP:
                    result = env.step(*data)
                elif command == STEPS:
                    result = []
                    for action, want_observation in data:
                        result.append(env.step(action, want_observation))
                        if result[-1].success:
                            break
                elif command == RESET:
                    result = env.reset(**data)
                elif command == RENDER_COUNT:
                    result = env.render_count()
                elif command == STATS:
                    result = {"pid": os.getpid(), "rss_bytes": rss_bytes()}
                elif command == PING:
                    result = data
                elif command == CLOSE:
                    conn.send((True, None))
                    break
                else:
                    raise ValueError(f"unknown worker command {command!r}")
                conn.send((True, result))
            except Exception as exc:  # report, keep serving: the parent decides whether this is fatal
                conn.send((False, (type(exc).__name__, str(exc), traceback.format_exc())))
    except Exception as exc:
        try:
            conn.send((False, (type(exc).__name__, str(exc), traceback.format_exc())))
        except OSError:
            pass
    finally:
        if env is not None:
            env.close()  # closing the renderer here avoids EGL tracebacks from destructors at interpreter exit
        conn.close()


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default): what a worker reports and the memory bench reads."""
    import psutil

    return psutil.Process(pid).memory_info().rss


class _ReplyWatchdog:
    """Kills a worker whose reply stops half-way, so that the parent's read ends instead of blocking for good.

    `wait()` and `poll()` only say that a reply's first bytes have arrived; `Connection.recv` then blocks until the
    whole message is in. A worker frozen while writing a reply bigger than the pipe buffer (an observation with two
    128 px images is ~100 KB, a Linux pipe holds 64 KB) would hold the parent there for ever, where no
    runner.worker_timeout_s can see it: a SIGSTOP, a debugger, a driver call that never returns. One daemon thread
    kills such a worker once a read outlasts its timeout; the read then ends with an end-of-file, which the caller
    already handles as a worker death. Written by hand because multiprocessing has no recv with a timeout."""

    def __init__(self):
        self._cond = threading.Condition()
        self._reads: dict[object, tuple[float, int]] = {}  # token -> (deadline, pid)
        self._wakes_at = float("inf")
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def reading(self, pid: int, timeout_s: float) -> Iterator[None]:
        token, deadline = object(), time.monotonic() + timeout_s
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="env-worker-reply-watchdog", daemon=True)
                self._thread.start()
            self._reads[token] = (deadline, pid)
            if deadline < self._wakes_at:
                self._cond.notify()  # otherwise the thread wakes before this deadline anyway and sees it then
        try:
            yield
        finally:
            with self._cond:
                del self._reads[token]

    def _watch(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, pid) in list(self._reads.items()):
                    if deadline <= now:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        self._reads[token] = (float("inf"), pid)  # killed once; the read ends by itself now
                self._wakes_at = min((deadline for deadline, _ in self._reads.values()), default=float("inf"))
                self._cond.wait(None if self._wakes_at == float("inf") else self._wakes_at - now)


_REPLY_WATCHDOG = _ReplyWatchdog()


@contextlib.contextmanager
def _main_module_hidden(spec: Any, start_method: str) -> Iterator[None]:
    """Start a spawned worker without re-running the parent's main script.

    `spawn` normally imports the parent's `__main__` in the child, so a training script's top-level imports (torch,
    transformers) and, without a `__main__` guard, its model loading would run again in every worker: seconds of
    start-up and hundreds of MB each. The worker needs none of it (its target and the env spec live in importable
    modules), so during `start()` the parent's main module is swapped for an empty one. Skipped when the spec's class
    is defined in `__main__` itself, since the child then needs that module to unpickle it."""
    main = sys.modules.get("__main__")
    if start_method == "fork" or main is None or type(spec).__module__ == "__main__":
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class EnvWorker:
    """Parent-side handle on one worker process. Not thread-safe; one command in flight at a time."""

    def __init__(self, index: int, spec: Any, start_method: str = "spawn"):
        self.index = index
        self.spec = spec
        ctx = mp.get_context(start_method)
        self.conn, child_end = ctx.Pipe()
        parent_end_for_child = self.conn if start_method == "fork" else None
        self.process = ctx.Process(
            target=_worker_loop, args=(index, spec, child_end, parent_end_for_child), name=f"env-worker-{index}", daemon=True
        )
        with _main_module_hidden(spec, start_method):
            self.process.start()
        child_end.close()
        self.pending: str | None = START  # the worker sends its pid once the env spec is built
        self.sent_at = time.monotonic()

    # --- sending and receiving -------------------------------------------------------------------------------
    def send(self, command: str, data: Any = None) -> None:
        if self.pending is not None:
            raise RuntimeError(f"worker {self.index}: {command!r} sent while {self.pending!r} is still in flight")
        try:
            self.conn.send((command, data))
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied(f"worker {self.index} (pid {self.process.pid}) is gone: {exc}") from None
        self.pending = command
        self.sent_at = time.monotonic()

    def receive(self, timeout: float | None = None) -> Any:
        """The reply to the command in flight. Raises WorkerDied if the process is gone, WorkerError if the command
        raised inside the worker. With a timeout, a worker whose reply is not in full within it is killed (it froze
        half-way through writing: see _ReplyWatchdog) and this raises WorkerDied."""
        try:
            if timeout is None:
                ok, payload = self.conn.recv()
            else:
                with _REPLY_WATCHDOG.reading(self.process.pid, timeout):
                    ok, payload = self.conn.recv()
        except (EOFError, OSError, ConnectionResetError):
            raise WorkerDied(
                f"worker {self.index} (pid {self.process.pid}) died (exit code {self._exit_code()}) during {self.pending!r}",
                self.pending,
            ) from None
        command, self.pending = self.pending, None
        if not ok:
            kind, message, trace = payload
            error = WorkerError(f"worker {self.index}: {command} failed: {kind}: {message}")
            error.remote_traceback = trace  # type: ignore[attr-defined]
            raise error
        return payload

    def call(self, command: str, data: Any = None, timeout: float | None = None) -> Any:
        """Send and wait for the reply (blocking), with an optional timeout."""
        if self.pending == START:
            self.wait_started(timeout)
        self.send(command, data)
        if timeout is not None and not self.conn.poll(timeout):
            raise WorkerDied(f"worker {self.index} did not answer {command!r} within {timeout:.0f} s", command)
        return self.receive(timeout)

    def wait_started(self, timeout: float | None = None) -> None:
        if self.pending != START:
            return
        if timeout is not None and not self.conn.poll(timeout):
            raise WorkerDied(f"worker {self.index} did not start within {timeout:.0f} s", START)
        self.receive(timeout)

    def seconds_in_flight(self) -> float:
        return time.monotonic() - self.sent_at if self.pending is not None else 0.0

    def _exit_code(self) -> int | None:
        self.process.join(timeout=0.5)
        return self.process.exitcode

    # --- shutdown -----------------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Ask politely, wait, then terminate, then kill: never leave the process behind."""
        if self.process.is_alive():
            try:
                if self.pending is not None:
                    # A command is in flight: the worker may be hung; don't wait for it. Still starting: it holds
                    # nothing worth keeping, and waiting would cost its whole env build (an eval whose checkpoint
                    # fails to load would answer seconds late).
                    self.kill()
                else:
                    self.send(CLOSE)
                    if self.conn.poll(timeout):
                        self.receive(timeout)
            except (WorkerDied, WorkerError, OSError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
