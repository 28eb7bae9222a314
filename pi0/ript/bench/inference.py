"""Section `inference`: the inference limit, policy chunks/s at the runner's batch sizes."""

from __future__ import annotations

import time

import numpy as np

from pi0.ript.bench.common import _fake_obs, _latency_name, _policy, _print_row

def bench_inference(args, results) -> None:
    """Chunks/s per batch size; x replan = the env-steps/s one policy can feed when every call has that batch."""
    from pi0.ript.bench.policies import LatencyPolicy

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
