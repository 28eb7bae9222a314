"""`pi0-ript bench [runner]`: rollout throughput against the machine's limits, measured in one run.

Every number comes from this run, on one suite, one task and one image size, so the ratios compare like with like:

* sim        the simulation limit: N bare worker processes stepping no-op actions, no policy (N = 1..cores and the
             latency section's worker count), rendering every step and rendering only every `replan`-th step;
* pickle     the cost of moving one observation (two cameras) through a pipe, relative to one rendered step;
* inference  the inference limit: policy chunks/s at the runner's batch sizes, x replan steps = env-steps/s it feeds;
* runners    the serial runner and the parallel runner (N = 1..cores), small policy;
* latency    the parallel runner with a policy of artificial latency L (50/200 ms, stand-in for a GPU model; "a+c"
             in --latencies-ms: a ms per call plus c ms per sample), overlapped vs lock-step inference, replan 1
             and 5, against min(sim limit, inference limit);
* emulated   the GPU box of issue 17 emulated on any CPU: reach workers whose steps sleep LIBERO's measured physics
             and render times, a latency policy L(b) = a + c*b; the defaults (render on demand, overlapped calls in
             the group schedule) against the all-off way (render every step, lock-step) and against the best
             schedule's predicted throughput (from this run's measured simulation and call times);
* features   render-on-demand + fast-reset on vs off, replan 1/5/10, 1 and 2 workers, env-steps/s and episodes/hour;
* memory     main-process RSS, each worker's RSS next to a bare env process (one that only builds the same env).

    pi0-ript bench                      # everything (tens of minutes on a 2-core CPU)
    pi0-ript bench --smoke --out x.json # a tiny run of every section (CI; no timing claims)
    pi0-ript bench --sections sim,pickle --out x.json

Runner throughput is env-steps/s of policy steps (settle steps after a reset are not counted, though their time is),
over a measured run that starts after a warm-up episode per worker, so process start and env build (~8 s each) are
left out but every reset of the measured episodes is in. Episodes/hour is measured the same way.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import platform
import statistics
import sys
import threading
import time
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any

import numpy as np

ALL_SECTIONS = ("sim", "pickle", "inference", "runners", "latency", "features", "memory", "emulated")

# The emulated configurations of issue 17: (name, a ms, c ms per sample, physics ms per step, render ms per rendered
# step, workers). pi0 in bf16 on an H200 fits a = 140, c = 8; compiled inference aims at a = 20, c = 3; LIBERO on that
# box steps in ~31 ms of physics plus ~14 ms per rendered step. The third runs reach as is (simulation nearly free).
EMULATED_CONFIGS = (
    ("h200_a140_c8", 140.0, 8.0, 31.0, 14.0, 14),
    ("compiled_a20_c3", 20.0, 3.0, 31.0, 14.0, 14),
    ("reach_a140_c8", 140.0, 8.0, 0.0, 0.0, 8),
)
EMULATED_REPLAN = 5
EMULATED_EPISODE_LENGTH = 220  # libero_spatial's episode length


# ------------------------------------------------------------------------------------------------------- settings
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pi0-ript bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_spatial", help="a LIBERO suite, or reach (policy-bound regime)")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224, help="camera height = width (both cameras)")
    p.add_argument("--fast-render", action="store_true", help="cheap rendering (images differ from training)")
    p.add_argument("--max-workers", type=int, default=os.cpu_count() or 2, help="N = 1..this for sim and runners")
    p.add_argument("--latency-workers", type=int, default=4, help="workers of the latency section (more than cores)")
    p.add_argument("--latencies-ms", default="50,200", help="comma list; each a (ms per call) or a+c (plus c ms per sample)")
    p.add_argument("--episode-length", type=int, default=40, help="policy steps per measured episode")
    p.add_argument("--episodes-per-worker", type=int, default=2, help="measured episodes per worker (resets included)")
    p.add_argument("--sim-seconds", type=float, default=12.0, help="measuring window of each simulation-limit point")
    p.add_argument("--emulated-episodes-per-worker", type=int, default=2, help="emulated section: measured episodes per worker")
    p.add_argument("--emulated-sim-seconds", type=float, default=12.0, help="emulated section: simulation-limit window")
    p.add_argument("--sections", default=",".join(ALL_SECTIONS), help=f"comma list of {', '.join(ALL_SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="shorter runs; fewer points (sim/runner N = 1 and max only)")
    p.add_argument("--smoke", action="store_true", help="tiny run of every section, small images: checks the bench works")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--markdown", default=None, metavar="JSON", help="print the tables of a saved run as markdown, run nothing")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(ALL_SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}: use {', '.join(ALL_SECTIONS)}")
    try:
        args.latencies = [_latency_model(x) for x in args.latencies_ms.split(",") if x.strip()]
    except ValueError:
        p.error(f"--latencies-ms {args.latencies_ms!r}: use a comma list of A or A+C (milliseconds), e.g. 50,200,140+8")
    args.replans = [1, 5, 10]
    args.sim_render_every = [1, 5]
    args.latency_replans = [1, 5]
    args.emulated_configs, args.emulated_episode_length = EMULATED_CONFIGS, EMULATED_EPISODE_LENGTH
    if args.quick:
        # Minutes on a 16-core box: sim windows of 4 s (each N point ~4 windows, plus starting N LIBERO workers).
        args.episode_length, args.episodes_per_worker, args.sim_seconds = 20, 1, 4.0
        args.emulated_episodes_per_worker, args.emulated_sim_seconds = 1, 6.0
    if args.smoke:
        # Small enough for CI on 2 cores in a couple of minutes: every section runs, numbers are only sanity checks.
        args.image_size, args.fast_render = 64, True
        args.max_workers, args.latency_workers = 1, 1  # one worker: every runner below reuses the same env
        args.latencies = [(0.05, 0.0)]
        args.episode_length, args.episodes_per_worker, args.sim_seconds = 6, 1, 2.0
        args.replans, args.sim_render_every, args.latency_replans = [5], [1, 5], [1]
        args.emulated_configs = [("h200_a140_c8", 140.0, 8.0, 31.0, 14.0, 2)]
        args.emulated_episode_length, args.emulated_episodes_per_worker, args.emulated_sim_seconds = 10, 1, 1.0
    return args


def _latency_model(text: str) -> tuple[float, float]:
    """'200' -> (0.2, 0.0); '140+8' -> (0.14, 0.008): seconds per call and per sample."""
    fixed, _, per_sample = text.strip().partition("+")
    return float(fixed) / 1000, float(per_sample or 0) / 1000


def _latency_name(model: tuple[float, float]) -> str:
    fixed, per_sample = model
    return f"latency_{fixed * 1000:g}ms" + (f"+{per_sample * 1000:g}ms_per_sample" if per_sample else "")


def _spec(args, on: bool = True):
    if args.suite == "reach":  # the built-in CPU task: simulation nearly free, so the policy is the bottleneck
        from pi0.ript.env.reach_sim import ReachEnvSpec

        return ReachEnvSpec(image_size=args.image_size)
    from pi0.ript.env.libero_sim import LiberoEnvSpec

    return LiberoEnvSpec(benchmark_name=args.suite, image_size=args.image_size, seed=0, fast_render=args.fast_render,
                         render_on_demand=on, fast_reset=on)


def _worker_counts(args) -> list[int]:
    if args.quick and args.max_workers > 1:
        return [1, args.max_workers]
    return list(range(1, args.max_workers + 1))


def _rss_bytes(pid: int | None = None) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


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
    out, observation, step_s = {}, None, None
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


# ------------------------------------------------------------------------------------------------------- inference
def _policy(chunk_size: int = 50):
    from pi0.ript.policy.small_policy import SmallPolicy

    return SmallPolicy(chunk_size=chunk_size, seed=0)


def _fake_obs(args, rng):
    q = rng.normal(size=4)
    return {
        "agentview_image": rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8),
        "eef_pos": rng.normal(size=3), "eef_quat": q / np.linalg.norm(q), "gripper_qpos": rng.normal(size=2),
    }


def bench_inference(args, results) -> None:
    """Chunks/s per batch size; x replan = the env-steps/s one policy can feed when every call has that batch."""
    from pi0.ript.bench_policies import LatencyPolicy

    rng = np.random.default_rng(0)
    max_batch = max(args.max_workers, args.latency_workers)
    obs = [_fake_obs(args, rng) for _ in range(max_batch)]
    policies = {"small": _policy()}
    for model in args.latencies:
        policies[_latency_name(model)] = LatencyPolicy(policies["small"], *model)
    out = {}
    for name, policy in policies.items():
        out[name] = {}
        for batch in range(1, max_batch + 1):
            policy.predict_chunks(obs[:batch], ["x"] * batch)  # warm-up
            repeats = 3 if name != "small" else (5 if args.smoke else 30)
            started = time.perf_counter()
            for _ in range(repeats):
                policy.predict_chunks(obs[:batch], ["x"] * batch)
            call_s = (time.perf_counter() - started) / repeats
            out[name][str(batch)] = {"seconds_per_call": call_s, "chunks_per_second": batch / call_s}
        _print_row(f"inference {name}", {f"B={b}": v["chunks_per_second"] for b, v in out[name].items()}, "chunks/s")
    results["inference"] = out


def inference_limit(results, policy: str, batch: int, replan: int) -> float | None:
    """Env-steps/s the policy can feed with `batch` envs per call, each executing `replan` actions per chunk."""
    point = results.get("inference", {}).get(policy, {}).get(str(batch))
    return point["chunks_per_second"] * replan if point else None


# ------------------------------------------------------------------------------------------------------- runners
class _RunnerPool:
    """One runner (and its workers) at a time, reused across measurements that share its env spec and N: building
    LIBERO envs costs ~8 s per worker, more than many measurements."""

    def __init__(self, args):
        self.args, self.key, self.runner = args, None, None

    def get(self, n: int, features_on: bool = True, serial: bool = False):
        key = (n, features_on, serial)
        if key != self.key:
            self.close()
            from pi0.ript.config.schema import load_config
            from pi0.ript.env.serial_runner import LIBEROEnvRunner
            from pi0.ript.env.parallel_runner import PI0LiberoRunner

            cfg = load_config(None, [f"task.benchmark_name={self.args.suite}", f"task.num_parallel_envs={n}",
                                     f"task.image_size={self.args.image_size}"])
            cls = LIBEROEnvRunner if serial else PI0LiberoRunner
            self.runner = cls(_policy(), config=cfg, env_spec=_spec(self.args, features_on))
            self.key = key
        return self.runner

    def close(self):
        if self.runner is not None:
            self.runner.close()
        self.runner, self.key = None, None


def _requests(args, runner, count: int):
    from pi0.ript.env.episode import EpisodeRequest

    return [EpisodeRequest(task_id=args.task, init_state=i % 50) for i in range(count)]


def _measure_runner(args, runner, policy, replan: int, overlap: bool = True, warm: bool = True,
                    episodes_per_worker: int | None = None, groups: int = 0, episode_length: int | None = None) -> dict[str, Any]:
    """A measured run of episodes_per_worker x N episodes of episode_length steps, after a warm-up episode per
    worker (env build and first hard reset left out). Returns throughput, phases and per-episode outcomes.
    `groups`: the parallel runner's inference groups (0: its own choice), learnt afresh for each measurement."""
    from pi0.ript.env.schedule import GroupSchedule

    runner.policy = policy
    runner.replan_steps = replan
    runner.overlap_inference = overlap
    if hasattr(runner, "schedule"):
        runner.schedule = GroupSchedule(groups)
    n = getattr(runner, "num_parallel_envs", 1) if hasattr(runner, "start_workers") else 1
    if warm:
        runner.max_steps = 1
        for _ in runner.run_episodes(_requests(args, runner, n)):
            pass
    runner.max_steps = episode_length or args.episode_length
    runner.stats.reset()
    per_worker = episodes_per_worker or args.episodes_per_worker
    episodes = sorted(runner.run_episodes(_requests(args, runner, n * per_worker)), key=lambda e: e.request_id)
    stats = runner.stats.as_dict()
    wall = stats["wall_seconds"]
    seconds = dict(stats["seconds"])
    seconds["main_loop_other"] = max(0.0, wall - sum(seconds.values()))  # queueing, IPC (unpickling), bookkeeping
    return {
        "env_steps_per_second": stats["env_steps_per_second"],
        "episodes_per_hour": stats["episodes"] / wall * 3600 if wall > 0 else 0.0,
        "wall_seconds": wall,
        "env_steps": stats["env_steps"],
        "episodes": stats["episodes"],
        "mean_batch_size": stats["mean_batch_size"],
        "inference_calls": stats["inference_calls"],
        "phase_seconds": seconds,
        "env_seconds": stats["env_seconds"],  # summed over envs: in a call, held for batch-mates, queued behind a call
        "model_idle_with_waiters_seconds": stats["seconds_model_idle_with_waiters"],
        "schedule": stats["schedule"],
        "outcomes": [(e.success, e.steps) for e in episodes],
    }


def bench_runners(args, results, pool) -> None:
    out = {}
    policy = _policy()
    replan = 5
    runner = pool.get(1, serial=True)
    out["serial"] = _measure_runner(args, runner, policy, replan)
    _print_row("serial runner, replan 5", _brief(out["serial"]), "")
    for n in _worker_counts(args):
        runner = pool.get(n)
        point = _measure_runner(args, runner, policy, replan)
        limit = sim_limit(results, n, replan)
        if limit:
            point["ratio_to_sim_limit"] = point["env_steps_per_second"] / limit
        point["ratio_to_serial"] = point["env_steps_per_second"] / out["serial"]["env_steps_per_second"]
        if n <= 2 and "features" in args.sections:
            _features_points(args, results, runner, n, True)  # reuse these workers (same spec) for the features section
        out[f"parallel_{n}"] = point
        _print_row(f"parallel N={n}, replan 5", _brief(point), "")
        if n == max(_worker_counts(args)):
            _record_worker_memory(results, runner)
    results["runners"] = out


def _brief(point) -> dict[str, float]:
    keys = ("env_steps_per_second", "episodes_per_hour", "ratio_to_sim_limit", "ratio_to_serial", "mean_batch_size")
    return {k: point[k] for k in keys if k in point}


def bench_latency(args, results, pool) -> None:
    """Latency-L policy, `latency_workers` workers: overlapped vs lock-step, against min(sim limit, inference limit)."""
    from pi0.ript.bench_policies import LatencyPolicy

    n = args.latency_workers
    runner = pool.get(n)
    base = _policy()
    out = {}
    for model in args.latencies:
        name = _latency_name(model)
        for replan in args.latency_replans:
            policy = LatencyPolicy(base, *model)
            point = {}
            for overlap in (False, True):
                # Half the episodes per worker of the other sections: 8 runs at N workers would dominate the bench.
                point["overlapped" if overlap else "lockstep"] = _measure_runner(
                    args, runner, policy, replan, overlap, episodes_per_worker=max(1, args.episodes_per_worker // 2))
            on, off = point["overlapped"], point["lockstep"]
            limits = [x for x in (sim_limit(results, n, replan), inference_limit(results, name, n, replan)) if x]
            point["sim_limit"] = sim_limit(results, n, replan)
            point["inference_limit"] = inference_limit(results, name, n, replan)
            point["overlapped_over_lockstep"] = on["env_steps_per_second"] / off["env_steps_per_second"]
            if limits:
                point["overlapped_over_min_limit"] = on["env_steps_per_second"] / min(limits)
            # Scheduling must never change an episode: same success and steps, episode by episode.
            point["same_episodes"] = on["outcomes"] == off["outcomes"]
            out[f"{name}_replan_{replan}"] = point
            _print_row(f"{name} N={n} replan {replan}", {
                "lockstep": off["env_steps_per_second"], "overlapped": on["env_steps_per_second"],
                "over/lock": point["overlapped_over_lockstep"], "over/min(limits)": point.get("overlapped_over_min_limit", float("nan")),
                "batch(over)": on["mean_batch_size"]}, f"same_episodes={point['same_episodes']}")
    results["latency"] = out


def _features_points(args, results, runner, n: int, on: bool) -> None:
    policy = _policy()
    table = results.setdefault("features", {})
    for replan in args.replans:
        point = _measure_runner(args, runner, policy, replan)
        table.setdefault(f"workers_{n}_replan_{replan}", {})["on" if on else "off"] = point
        _print_row(f"features {'on ' if on else 'off'} N={n} replan {replan}", _brief(point), "")


def bench_features(args, results, pool) -> None:
    for n in sorted({1, min(2, args.max_workers)}):
        for on in (True, False):
            if on and "on" in results.get("features", {}).get(f"workers_{n}_replan_{args.replans[0]}", {}):
                continue  # measured with the runners section's workers already
            _features_points(args, results, pool.get(n, on), n, on)
    for key, point in results.get("features", {}).items():
        if "on" in point and "off" in point:
            point["steps_ratio_on_over_off"] = point["on"]["env_steps_per_second"] / point["off"]["env_steps_per_second"]
            point["episodes_ratio_on_over_off"] = point["on"]["episodes_per_hour"] / point["off"]["episodes_per_hour"]
            n, replan = int(key.split("_")[1]), int(key.split("_")[3])
            limit = sim_limit(results, n, replan)
            if limit:
                point["on_over_sim_limit_same_render"] = point["on"]["env_steps_per_second"] / limit


# ------------------------------------------------------------------------------------------------------- emulated
def _emulated_runner(args, workers: int, step_ms: float, render_ms: float, on: bool):
    """A parallel runner on reach with the step-time model, built from config keys like any run."""
    from pi0.ript.config.schema import load_config
    from pi0.ript.env.parallel_runner import PI0LiberoRunner

    cfg = load_config(None, [
        "task.benchmark_name=reach", f"task.num_parallel_envs={workers}", f"task.image_size={min(args.image_size, 64)}",
        # LIBERO's 10 settle steps after a reset, each a physics step
        "task.num_wait_steps=10", f"task.emulated_step_ms={step_ms}", f"task.emulated_render_ms={render_ms}",
        f"task.render_on_demand={str(on).lower()}", f"task.fast_reset={str(on).lower()}"])
    return PI0LiberoRunner(_policy(), config=cfg)


def _emulated_sim_limit(runner, seconds: float, render_every: int, episode_length: int) -> dict[str, float]:
    """The runner's own workers stepping with no policy (episodes with resets): the simulation limit."""
    from pi0.ript.env.worker import RESET

    workers = runner.start_workers()
    for w in workers:
        w.wait_started(300)
    for w in workers:
        w.send(RESET, {"task_id": 0, "init_state": w.index})
    for w in workers:
        w.receive()
    return _sim_point(workers, seconds, render_every, episode_length, 0)


def _call_seconds(policy, observation, batches: list[int], repeats: int) -> dict[int, float]:
    out = {}
    for batch in batches:
        started = time.perf_counter()
        for _ in range(repeats):
            policy.predict_chunks([observation] * batch, ["x"] * batch)
        out[batch] = (time.perf_counter() - started) / repeats
    return out


def bench_emulated(args, results) -> None:
    """Issue 17's GPU box on this machine: per configuration, the simulation limit and the call times measured
    here, the throughput the group-schedule model predicts for every k, and three runs of 220-step episodes,
    replan 5: the defaults, lock-step with the defaults' rendering, and the all-off way."""
    from pi0.ript.bench_policies import LatencyPolicy
    from pi0.ript.env.schedule import CallTimeFit, model_load, predicted_cycle_seconds

    replan, length = EMULATED_REPLAN, args.emulated_episode_length
    out = {}
    for name, a_ms, c_ms, step_ms, render_ms, workers in args.emulated_configs:
        policy = LatencyPolicy(_policy(), a_ms / 1000, c_ms / 1000)
        point: dict[str, Any] = {"config": {"call_fixed_ms": a_ms, "call_per_sample_ms": c_ms, "physics_ms": step_ms,
                                            "render_ms": render_ms, "workers": workers, "replan": replan, "episode_length": length}}
        runs = {}
        for on in (True, False):
            runner = _emulated_runner(args, workers, step_ms, render_ms, on)
            try:
                if on:
                    sim = _emulated_sim_limit(runner, args.emulated_sim_seconds, replan, length)
                    point["sim_limit"] = sim
                    # S: what one env takes to play one chunk, resets included, with every worker busy
                    point["sim_seconds_per_chunk"] = workers * replan / sim["env_steps_per_second"]
                    obs = runner.env_spec.make().reset(0, 0).observation
                    batches = sorted({1, 2, max(1, workers // 2), workers} if args.smoke else range(1, workers + 1))
                    calls = _call_seconds(policy, obs, batches, 1 if args.smoke else 2)
                    point["call_seconds"] = {str(b): t for b, t in calls.items()}
                    fit = CallTimeFit()
                    for b, t in calls.items():
                        fit.observe(b, t)
                    fixed, per_sample = fit.fit()
                    point["call_fit"] = {"fixed_seconds": fixed, "per_sample_seconds": per_sample}
                    sim_s = point["sim_seconds_per_chunk"]
                    predicted = {str(k): workers * replan / predicted_cycle_seconds(k, workers, sim_s, fixed, per_sample)
                                 for k in range(1, workers + 1)}
                    best = max(predicted, key=lambda k: predicted[k])
                    point["predicted_steps_per_second"] = predicted
                    point["best_k"] = int(best)
                    point["best_predicted_steps_per_second"] = predicted[best]
                    point["best_predicted_episodes_per_hour"] = predicted[best] / length * 3600
                    point["best_k_model_load"] = model_load(int(best), workers, sim_s, fixed, per_sample)
                    runs["defaults"] = _measure_runner(args, runner, policy, replan, overlap=True,
                                                       episodes_per_worker=args.emulated_episodes_per_worker, episode_length=length)
                    runs["lockstep"] = _measure_runner(args, runner, policy, replan, overlap=False,
                                                       episodes_per_worker=args.emulated_episodes_per_worker, episode_length=length)
                else:
                    runs["all_off"] = _measure_runner(args, runner, policy, replan, overlap=False,
                                                      episodes_per_worker=args.emulated_episodes_per_worker, episode_length=length)
            finally:
                runner.close()
        point["runs"] = runs
        steps = {k: r["env_steps_per_second"] for k, r in runs.items()}
        point["defaults_over_best_predicted"] = steps["defaults"] / point["best_predicted_steps_per_second"]
        # The same prediction with S as the runner measured it (its own per-step overhead included): how much of the
        # gap is the schedule, and how much the loop's round trips.
        runner_s = runs["defaults"]["schedule"].get("sim_seconds_per_chunk")
        if runner_s:
            fixed, per_sample = point["call_fit"]["fixed_seconds"], point["call_fit"]["per_sample_seconds"]
            point["runner_sim_seconds_per_chunk"] = runner_s
            point["best_predicted_with_runner_s"] = max(
                workers * replan / predicted_cycle_seconds(k, workers, runner_s, fixed, per_sample) for k in range(1, workers + 1))
            point["defaults_over_best_predicted_with_runner_s"] = steps["defaults"] / point["best_predicted_with_runner_s"]
        point["defaults_over_all_off"] = steps["defaults"] / steps["all_off"]
        point["defaults_over_lockstep"] = steps["defaults"] / steps["lockstep"]
        # Scheduling and render on demand must never change an episode: same success and steps, episode by episode.
        point["same_episodes"] = runs["defaults"]["outcomes"] == runs["lockstep"]["outcomes"] == runs["all_off"]["outcomes"]
        out[name] = point
        _print_row(f"emulated {name}", {
            "defaults": steps["defaults"], "lockstep": steps["lockstep"], "all_off": steps["all_off"],
            f"best_pred(k={best})": point["best_predicted_steps_per_second"],
            "def/pred": point["defaults_over_best_predicted"], "def/off": point["defaults_over_all_off"],
            "def/lock": point["defaults_over_lockstep"], "k(def)": runs["defaults"]["schedule"].get("groups", 1)},
            f"env-steps/s, same_episodes={point['same_episodes']}")
    results["emulated"] = out


# ------------------------------------------------------------------------------------------------------- memory
def _bare_env(spec, task: int, queue) -> None:
    """A process that only builds the env (and takes it to the same state as a worker: reset, a rendered step)."""
    from pi0.ript.env.sim import NOOP_ACTION

    env = spec.make()
    env.reset(task_id=task, init_state=0)
    env.step(NOOP_ACTION, True)
    queue.put(_rss_bytes())
    env.close()


def _record_worker_memory(results, runner) -> None:
    stats = [w.call("stats", timeout=120) for w in runner.start_workers()]
    results.setdefault("memory", {})["worker_rss_bytes"] = [s["rss_bytes"] for s in stats]


def bench_memory(args, results, pool) -> None:
    mem = results.setdefault("memory", {})
    if "worker_rss_bytes" not in mem:
        runner = pool.get(min(2, args.max_workers))
        _measure_runner(args, runner, _policy(), 5, warm=True)
        _record_worker_memory(results, runner)
    pool.close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_bare_env, args=(_spec(args), args.task, queue))
    process.start()
    mem["bare_env_rss_bytes"] = queue.get(timeout=600)
    process.join(60)
    mem["main_rss_bytes"] = _rss_bytes()
    mem["worker_over_bare"] = [r / mem["bare_env_rss_bytes"] for r in mem["worker_rss_bytes"]]
    print(f"memory: main {mem['main_rss_bytes'] / 2**20:.0f} MiB; workers "
          + ", ".join(f"{r / 2**20:.0f} MiB" for r in mem["worker_rss_bytes"])
          + f"; bare env {mem['bare_env_rss_bytes'] / 2**20:.0f} MiB; worker/bare "
          + ", ".join(f"{x:.3f}" for x in mem["worker_over_bare"]))


# ------------------------------------------------------------------------------------------------------- output
def _print_row(label: str, values: dict[str, float], unit: str) -> None:
    cells = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"{label:<34} {cells}  {unit}", flush=True)


def targets(results) -> list[dict[str, Any]]:
    """The issues' targets, each with the ratio this run measured (None when its section did not run)."""
    rows = []

    def add(name, value, goal, op=">="):
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        rows.append({"target": name, "measured": value, "goal": f"{op} {goal}", "met": met})

    runners = results.get("runners", {})
    for n in (1, 2):
        point = runners.get(f"parallel_{n}", {})
        add(f"parallel runner / sim limit, N={n}, replan 5 (#2, #5)", point.get("ratio_to_sim_limit"), 0.9)
    lat = results.get("latency", {})
    for key, point in lat.items():
        if key.endswith("_replan_1") and key.startswith("latency_200ms"):
            add("L=200ms replan 1: overlapped / lock-step (#5)", point["overlapped_over_lockstep"], 1.3)
        add(f"{key}: overlapped / min(sim, inference limit) (#5)", point.get("overlapped_over_min_limit"), 0.9)
    feats = results.get("features", {})
    p = feats.get("workers_2_replan_5", {})
    add("N=2 replan 5: render on demand / render every step, env-steps/s (#8)", p.get("steps_ratio_on_over_off"), 3.0)
    add("N=2 replan 5: features on / sim limit rendering every 5th step (#8)", p.get("on_over_sim_limit_same_render"), 0.9)
    best = max((v.get("episodes_ratio_on_over_off", 0) for v in feats.values()), default=None)
    add("episodes/hour, features on / off, best point (#8)", best or None, 3.5)
    for key, v in feats.items():
        if key.endswith("_replan_1"):
            add(f"{key}: features on / off >= ~1 (#8, within noise)", v.get("steps_ratio_on_over_off"), 0.95)
    for name, point in results.get("emulated", {}).items():
        goals = {"h200_a140_c8": (0.9, 1.15), "compiled_a20_c3": (0.9, 1.3)}.get(name)
        if goals:
            add(f"emulated {name}: defaults / best predicted schedule (#17)", point["defaults_over_best_predicted"], goals[0])
            add(f"emulated {name}: defaults / all-off (#17)", point["defaults_over_all_off"], goals[1])
        elif name == "reach_a140_c8":
            add(f"emulated {name}: defaults / lock-step (#17)", point["defaults_over_lockstep"], 0.95)
    mem = results.get("memory", {})
    if mem.get("worker_over_bare"):
        add("worker RSS / bare env RSS (#5)", max(mem["worker_over_bare"]), 1.05, "<=")
    if "pickle" in results:
        add("observation pipe cost / rendered step (#5)", results["pickle"].get("fraction_of_rendered_step"), 0.05, "<=")
    return rows


def _f(x, digits=3):
    return "n/a" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


def _emulated_markdown(emulated: dict[str, Any]) -> str:
    lines = ["Emulated GPU box (reach workers sleeping a step-time model, a latency policy L(b) = a + c*b; replan 5; "
             "all-off = render every step + lock-step, hard reset not emulated):\n",
             "| configuration | workers | physics + render ms | a + c ms | S per chunk: sim limit / runner | best k: predicted | defaults | lock-step | all-off | "
             "defaults / best predicted | same, with the runner's S | defaults / all-off | defaults / lock-step | defaults: k, mean batch | same episodes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in emulated.items():
        c, runs = p["config"], p["runs"]

        def cell(run):
            return f"{_f(run['env_steps_per_second'])} ({_f(run['episodes_per_hour'])} ep/h)"

        lines.append(
            f"| {name} | {c['workers']} | {c['physics_ms']:g} + {c['render_ms']:g} | {c['call_fixed_ms']:g} + {c['call_per_sample_ms']:g} | "
            f"{p['sim_seconds_per_chunk'] * 1000:.0f} / {_f(p['runner_sim_seconds_per_chunk'] * 1000) if p.get('runner_sim_seconds_per_chunk') else 'n/a'} ms | "
            f"k={p['best_k']}: {_f(p['best_predicted_steps_per_second'])} ({_f(p['best_predicted_episodes_per_hour'])} ep/h) | "
            f"{cell(runs['defaults'])} | {cell(runs['lockstep'])} | {cell(runs['all_off'])} | {_f(p['defaults_over_best_predicted'])} | "
            f"{_f(p.get('defaults_over_best_predicted_with_runner_s'))} | "
            f"{_f(p['defaults_over_all_off'])} | {_f(p['defaults_over_lockstep'])} | {runs['defaults']['schedule'].get('groups', 1)}, "
            f"{_f(runs['defaults']['mean_batch_size'])} | {p['same_episodes']} |")
    lines.append("\n(env-steps/s (episodes/hour). Predicted: N x replan / max(S + L(N/k), k L(N/k)), S from the simulation "
                 "limit, a and c fitted to this run's measured calls.)\n")
    for name, p in emulated.items():
        fit = p["call_fit"]
        lines.append(f"- {name}: fitted a = {fit['fixed_seconds'] * 1000:.1f} ms, c = {fit['per_sample_seconds'] * 1000:.2f} ms; predicted env-steps/s by k: "
                     + ", ".join(f"{k}: {_f(v)}" for k, v in list(p["predicted_steps_per_second"].items())[:8]))
    lines.append("\nWhere each run's env time went (env-seconds summed over envs, as a share of workers x wall):\n")
    lines.append("| configuration, run | in a call | held for batch-mates (model idle) | queued behind a call | simulating and the rest | model idle while envs waited (s of wall) |")
    lines.append("|---|---|---|---|---|---|")
    for name, p in emulated.items():
        for run_name, run in p["runs"].items():
            total = p["config"]["workers"] * run["wall_seconds"]
            env = run["env_seconds"]
            rest = total - sum(env.values())
            lines.append(f"| {name}, {run_name} | {env['in_call'] / total:.1%} | {env['held_for_batch_mates'] / total:.1%} | "
                         f"{env['queued_behind_a_call'] / total:.1%} | {rest / total:.1%} | {run['model_idle_with_waiters_seconds']:.1f} of {run['wall_seconds']:.1f} |")
    lines.append("")
    return "\n".join(lines)


def markdown(results) -> str:
    """The tables of docs/PERFORMANCE.md, from a saved run (so the doc shows exactly what the bench measured)."""
    lines = []
    add = lines.append
    st, m = results["settings"], results["machine"]
    add(_machine_line(m) + ".\n")
    partial = set(st["sections"]) != set(ALL_SECTIONS)
    if st["sections"] == ["emulated"]:  # its settings are in its own table; the LIBERO ones below do not apply
        add(f"Load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at end "
            f"{', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}; bench wall time {results['wall_seconds']:.0f} s.\n")
    else:
        add(f"Settings: {st['suite']} task {st['task']}, {st['image_size']}x{st['image_size']} px, two cameras, fast_render={st['fast_render']}, "
            f"episodes of {st['episode_length']} steps; load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, "
            f"at end {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}; 1-min load after each section "
            f"{', '.join(f'{k} {v:.1f}' for k, v in m.get('load_after_section', {}).items())}; bench wall time {results['wall_seconds']:.0f} s"
            + (" (" + ", ".join(f"{k} {v:.0f} s" for k, v in results["section_seconds"].items()) + ")" if results.get("section_seconds") else "")
            + ".\n")
    if "sim" in results:
        add("| simulation limit (no policy) | " + " | ".join(results["sim"]["1"].keys()) + " |")
        add("|---" * (1 + len(results["sim"]["1"])) + "|")
        for n, point in results["sim"].items():
            add(f"| N={n} workers | " + " | ".join(_f(v["env_steps_per_second"]) + (f" ({_f(v['episodes_per_hour'])} ep/h)" if "episodes_per_hour" in v else "")
                                                  for v in point.values()) + " |")
        add("\n(env-steps/s (episodes/hour); `render_every_k`: observation rendered every k-th step; `episodes_...`: episodes of the bench's length with resets between them, the runner's exact env work)\n")
    if "pickle" in results:
        pk = results["pickle"]
        add(f"Observation transport: {pk['bytes'] / 1e3:.0f} kB pickled, {pk['pipe_seconds'] * 1e3:.2f} ms through a pipe "
            f"(pickle round trip alone {pk['pickle_roundtrip_seconds'] * 1e3:.2f} ms), a rendered step {_f((pk['rendered_step_seconds'] or 0) * 1e3)} ms: "
            f"**{_f((pk['fraction_of_rendered_step'] or 0) * 100)}%** of a step.\n")
    if "inference" in results:
        inf = results["inference"]
        batches = list(next(iter(inf.values())).keys())
        add("| inference limit (chunks/s) | " + " | ".join(f"B={b}" for b in batches) + " |")
        add("|---" * (1 + len(batches)) + "|")
        for name, point in inf.items():
            add(f"| {name} | " + " | ".join(_f(point[b]["chunks_per_second"]) for b in batches) + " |")
        add("")
    def row(name, p):
        ph = p["phase_seconds"]  # runs saved before the rename call stepping_envs waiting_on_workers
        return (f"| {name} | {_f(p['env_steps_per_second'])} | {_f(p['episodes_per_hour'])} | {_f(p.get('ratio_to_sim_limit'))} | "
                f"{_f(p.get('ratio_to_serial'))} | {_f(p['mean_batch_size'])} | {ph.get('stepping_envs', ph.get('waiting_on_workers', 0.0)):.1f} / {ph['inference']:.1f} / {ph['main_loop_other']:.1f} of {p['wall_seconds']:.1f} |")
    head = "| run | env-steps/s | episodes/h | / sim limit | / serial | mean batch | s waiting / inference / other of wall |\n|---|---|---|---|---|---|---|"
    if "runners" in results:
        add("Runners, small policy, replan 5:\n")
        add(head)
        for name, p in results["runners"].items():
            add(row(name, p))
        add("")
    if "latency" in results:
        add(f"Latency policy, {st['latency_workers']} workers:\n")
        add("| policy, replan | lock-step | overlapped | overlapped / lock-step | sim limit | inference limit | overlapped / min(limits) | batch (lock / over) | same episodes |")
        add("|---|---|---|---|---|---|---|---|---|")
        for name, p in results["latency"].items():
            add(f"| {name} | {_f(p['lockstep']['env_steps_per_second'])} | {_f(p['overlapped']['env_steps_per_second'])} | "
                f"{_f(p['overlapped_over_lockstep'])} | {_f(p['sim_limit'])} | {_f(p['inference_limit'])} | {_f(p.get('overlapped_over_min_limit'))} | "
                f"{_f(p['lockstep']['mean_batch_size'])} / {_f(p['overlapped']['mean_batch_size'])} | {p['same_episodes']} |")
        add("\nPhases (s waiting on workers / inference / other, of wall; with overlap, inference runs during the waiting):\n")
        add(head)
        for name, p in results["latency"].items():
            for mode in ("lockstep", "overlapped"):
                add(row(f"{name} {mode}", p[mode]))
        add("")
    if "features" in results:
        add("Render on demand + fast reset, on vs off, small policy:\n")
        add("| workers, replan | on: env-steps/s | off: env-steps/s | ratio | on: episodes/h | off: episodes/h | ratio | on / sim limit (same rendering) |")
        add("|---|---|---|---|---|---|---|---|")
        for name, p in results["features"].items():
            on, off = p.get("on", {}), p.get("off", {})
            add(f"| {name} | {_f(on.get('env_steps_per_second'))} | {_f(off.get('env_steps_per_second'))} | {_f(p.get('steps_ratio_on_over_off'))} | "
                f"{_f(on.get('episodes_per_hour'))} | {_f(off.get('episodes_per_hour'))} | {_f(p.get('episodes_ratio_on_over_off'))} | {_f(p.get('on_over_sim_limit_same_render'))} |")
        add("")
    if "emulated" in results:
        add(_emulated_markdown(results["emulated"]))
    if "main_rss_bytes" in results.get("memory", {}):  # the runners section records worker RSS alone
        mem = results["memory"]
        add(f"Memory: main process {mem['main_rss_bytes'] / 2**20:.0f} MiB; workers "
            + ", ".join(f"{r / 2**20:.0f} MiB" for r in mem["worker_rss_bytes"])
            + f"; bare env process {mem['bare_env_rss_bytes'] / 2**20:.0f} MiB; worker / bare " + ", ".join(f"{x:.3f}" for x in mem["worker_over_bare"]) + ".\n")
    add("| target | measured | goal | verdict |\n|---|---|---|---|")
    for t in results.get("targets", []):
        if partial and t["measured"] is None:
            continue  # a section this run left out
        verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        add(f"| {t['target']} | {_f(t['measured'])} | {t['goal']} | {verdict} |")
    return "\n".join(lines)


def _machine(torch) -> dict[str, Any]:
    """What the numbers were measured on (torch is imported by the caller, in the main process only)."""
    try:
        import mujoco

        mujoco_version = mujoco.__version__
    except ImportError:
        mujoco_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "mujoco": mujoco_version, "platform": platform.platform()}


def _machine_line(m: dict[str, Any]) -> str:
    return (f"Machine: {m.get('cpus')} CPU cores, GPU {m.get('gpu') or 'none'}, python {m.get('python')}, "
            f"torch {m.get('torch')}, MuJoCo {m.get('mujoco') or 'n/a'}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return 0
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import torch

    # The policy shares the cores with the env workers; one intra-op thread keeps it from fighting them.
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "settings": {"suite": args.suite, "task": args.task, "image_size": args.image_size, "fast_render": args.fast_render,
                     "episode_length": args.episode_length, "episodes_per_worker": args.episodes_per_worker,
                     "sim_seconds": args.sim_seconds, "sections": args.sections, "smoke": args.smoke, "quick": args.quick,
                     "latency_workers": args.latency_workers, "argv": sys.argv[1:] if argv is None else list(argv)},
        "machine": {**_machine(torch), "load_average_at_start": os.getloadavg()},
    }
    print(_machine_line(results["machine"]), flush=True)
    started = time.perf_counter()
    # Other jobs on a shared machine skew every number: the 1-minute load after each section goes in the JSON.
    results["machine"]["load_after_section"] = {}
    results["section_seconds"] = {}
    pool = _RunnerPool(args)
    state = {"observation": None}
    sections = {
        "sim": lambda: state.update(observation=bench_sim(args, results)),
        "pickle": lambda: bench_pickle(args, results, state["observation"]),
        "inference": lambda: bench_inference(args, results),
        "runners": lambda: bench_runners(args, results, pool),
        "latency": lambda: bench_latency(args, results, pool),
        "features": lambda: bench_features(args, results, pool),
        "memory": lambda: bench_memory(args, results, pool),
        "emulated": lambda: (pool.close(), bench_emulated(args, results)),  # its own workers: free the LIBERO ones
    }
    try:
        for name in ALL_SECTIONS:
            if name in args.sections:
                section_started = time.perf_counter()
                sections[name]()
                results["section_seconds"][name] = time.perf_counter() - section_started
                results["machine"]["load_after_section"][name] = os.getloadavg()[0]
                print(f"[{name}: {results['section_seconds'][name]:.0f} s]", flush=True)
    finally:
        pool.close()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = targets(results)
    print("\ntargets (ratios from this run):")
    for row in results["targets"]:
        value = "n/a" if row["measured"] is None else f"{row['measured']:.3f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[row["met"]]
        print(f"  {row['target']:<72} {value:>8} (goal {row['goal']}): {verdict}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
