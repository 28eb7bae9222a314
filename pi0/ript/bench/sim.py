"""Sections `sim` (the simulation limit: bare workers stepping no-op actions) and `pickle` (moving an observation
through a pipe)."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import statistics
import threading
import time
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from pi0.ript.bench.common import _print_row, _spec, _worker_counts

# ------------------------------------------------------------------------------------------------------- simulation
def _sim_point(workers, seconds: float, render_every: int, episode_length: int | None = None, task: int = 0) -> dict[str, float]:
    """Every worker steps no-op actions as fast as it answers (each on its own, no lock-step) for `seconds`.
    With `episode_length`, a worker resets (next init state) after that many steps, as a runner does between
    episodes: that is the simulation limit for the runner's exact work, resets included."""
    from pi0.ript.env.sim import NOOP_ACTION
    from pi0.ript.env.worker import RESET, STEP

    in_episode = {w.index: 0 for w in workers}
    episodes = {w.index: 0 for w in workers}

    def send(w):
        if episode_length is not None and in_episode[w.index] >= episode_length:
            in_episode[w.index] = 0
            episodes[w.index] += 1
            w.send(RESET, {"task_id": task, "init_state": (w.index + len(workers) * episodes[w.index]) % 50})
            return
        in_episode[w.index] += 1
        # The observation is wanted every `render_every`-th step: what a runner with that replan asks for.
        w.send(STEP, (NOOP_ACTION, in_episode[w.index] % render_every == 0))

    for _ in range(2):  # a couple of warm-up steps (first renders after a reset allocate buffers), all workers at once
        for w in workers:
            w.send(STEP, (NOOP_ACTION, True))
        for w in workers:
            w.receive()
    started = time.perf_counter()
    deadline = started + seconds
    for w in workers:
        send(w)
    done = 0
    while any(w.pending is not None for w in workers):
        ready = wait([w.conn for w in workers if w.pending is not None])
        now = time.perf_counter()
        for w in workers:
            if w.conn in ready:
                command = w.pending
                w.receive()
                if now <= deadline:
                    done += command == STEP
                    send(w)
    # Steps that landed before the deadline, over the window; what was in flight at the deadline is drained unused.
    point = {"env_steps_per_second": done / seconds, "steps": done}
    if episode_length is not None:
        point["resets"] = sum(episodes.values())
        point["episodes_per_hour"] = done / seconds / episode_length * 3600
    return point

def bench_sim(args, results) -> list[Any]:
    """Simulation limit for each N. Returns the observation of a reset (for the pickling section)."""
    from pi0.ript.env.worker import RESET, EnvWorker

    spec = _spec(args)
    counts = sorted(set(_worker_counts(args)) | ({args.latency_workers} if "latency" in args.sections else set()))
    out, observation = {}, None
    for n in counts:
        workers = [EnvWorker(i, spec) for i in range(n)]
        try:
            for w in workers:
                w.wait_started(300)
            for w in workers:
                w.send(RESET, {"task_id": args.task, "init_state": w.index})
            resets = [w.receive() for w in workers]
            observation = resets[0].observation
            point = {}
            for every in args.sim_render_every:
                point[f"render_every_{every}"] = _sim_point(workers, args.sim_seconds, every)
            # The runner's exact work without a policy: episodes of episode_length steps, resets included (a longer
            # window, so that it holds resets, except in --quick).
            for every in args.sim_render_every:
                point[f"episodes_render_every_{every}"] = _sim_point(
                    workers, args.sim_seconds * (1 if args.quick else 2), every, args.episode_length, args.task)
            out[str(n)] = point
            _print_row(f"sim N={n}", {k: v["env_steps_per_second"] for k, v in point.items()}, "env-steps/s")
        finally:
            for w in workers:
                w.close()
    results["sim"] = out
    return observation

def sim_limit(results, n: int, render_every: int, with_resets: bool = True) -> float | None:
    """The no-policy limit for N workers; `with_resets`: episodes of the bench's length with resets between them
    (the runner's exact env work, the fair denominator for a runner), else pure stepping."""
    key = f"episodes_render_every_{render_every}" if with_resets else f"render_every_{render_every}"
    point = results.get("sim", {}).get(str(n), {}).get(key)
    return point["env_steps_per_second"] if point else None

# ------------------------------------------------------------------------------------------------------- pickling
def _echo_receiver(conn, count):
    for _ in range(count):
        conn.recv()

def bench_pickle(args, results, observation) -> None:
    """One observation through a pipe, as a worker sends it: pickle + write + read + unpickle, in two threads."""
    if observation is None:
        from pi0.ript.env.sim import OBS_KEYS

        rng = np.random.default_rng(0)
        observation = {k: rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8) if "image" in k else rng.normal(size=4) for k in OBS_KEYS}
    repeats = 30 if args.smoke else 200
    payload = (True, observation)
    a, b = mp.Pipe()
    receiver = threading.Thread(target=_echo_receiver, args=(b, repeats))
    receiver.start()
    started = time.perf_counter()
    for _ in range(repeats):
        a.send(payload)
    receiver.join()
    pipe_s = (time.perf_counter() - started) / repeats
    a.close(), b.close()
    dumps = []
    for _ in range(repeats):
        t = time.perf_counter()
        pickle.loads(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        dumps.append(time.perf_counter() - t)
    nbytes = len(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    # A rendered step's wall time for one worker alone: the denominator the issue asks for.
    one = sim_limit(results, 1, 1, with_resets=False)
    step_s = 1.0 / one if one else None
    out = {
        "image_size": args.image_size,
        "bytes": nbytes,
        "pipe_seconds": pipe_s,
        "pickle_roundtrip_seconds": statistics.median(dumps),
        "rendered_step_seconds": step_s,
        "fraction_of_rendered_step": pipe_s / step_s if step_s else None,
    }
    results["pickle"] = out
    print(f"pickle: {nbytes / 1e3:.0f} kB per observation, {pipe_s * 1e3:.2f} ms through a pipe"
          + (f" = {out['fraction_of_rendered_step']:.3%} of a rendered step ({step_s * 1e3:.0f} ms)" if step_s else ""))
