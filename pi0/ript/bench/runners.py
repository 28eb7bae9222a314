"""Sections `runners` (serial and parallel runner, small policy), `latency` (a policy of artificial latency,
overlapped vs lock-step) and `features` (render on demand + fast reset + one forward pass per substep, on vs off)."""

from __future__ import annotations

from pi0.ript.bench.common import _brief, _latency_name, _measure_runner, _policy, _print_row, _worker_counts
from pi0.ript.bench.inference import inference_limit
from pi0.ript.bench.memory import _record_worker_memory
from pi0.ript.bench.sim import sim_limit


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

def bench_latency(args, results, pool) -> None:
    """Latency-L policy, `latency_workers` workers: overlapped vs lock-step, against min(sim limit, inference limit)."""
    from pi0.ript.bench.policies import LatencyPolicy

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
