"""`pi0-ript bench model`: tiny pi0 inference time per chunk vs batch size on this machine, and batching gain.

Prints, per batch size, the wall time of one `predict_chunks` call (preprocessing + 10 Euler steps + postprocessing)
and the per-sample cost; then per-sample cost at batch 8 / batch 1 (the issue's target: <= 0.35).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Sequence

import numpy as np
import torch

from .policy import make_tiny_policy

BENCH_INSTRUCTIONS = ["put the bowl on the plate", "open the top drawer of the cabinet"]


def _obs(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    q = rng.normal(size=4)
    return {
        "agentview_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "eef_pos": rng.normal(size=3),
        "eef_quat": q / np.linalg.norm(q),
        "gripper_qpos": rng.normal(scale=0.02, size=2),
    }


def run(batch_sizes: Sequence[int], repeats: int, image_size: int, env_image_size: int, threads: int | None) -> dict[int, float]:
    if threads:
        torch.set_num_threads(threads)
    pol = make_tiny_policy(BENCH_INSTRUCTIONS, seed=0, image_size=image_size, device="cpu")
    rng = np.random.default_rng(0)
    obs = [_obs(rng, env_image_size) for _ in range(max(batch_sizes))]
    times: dict[int, float] = {}
    for b in batch_sizes:
        prompts = [BENCH_INSTRUCTIONS[i % 2] for i in range(b)]
        pol.predict_chunks(obs[:b], prompts)  # warm-up (allocator, kernels)
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            pol.predict_chunks(obs[:b], prompts)
            samples.append(time.perf_counter() - t)
        times[b] = statistics.median(samples)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pi0-ript bench model", description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per batch size (median reported)")
    p.add_argument("--image-size", type=int, default=112, help="model image size of the tiny config")
    p.add_argument("--env-image-size", type=int, default=128, help="size of the synthetic camera images")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    a = p.parse_args(argv)
    times = run(a.batch_sizes, a.repeats, a.image_size, a.env_image_size, a.threads or None)
    print(f"tiny pi0, CPU, {torch.get_num_threads()} thread(s), {a.image_size}px, 10 Euler steps, median of {a.repeats}")
    print(f"{'batch':>6} {'s/chunk-batch':>14} {'ms/sample':>10}")
    for b, t in times.items():
        print(f"{b:>6} {t:>14.4f} {1000 * t / b:>10.2f}")
    if 1 in times and 8 in times:
        ratio = (times[8] / 8) / times[1]
        print(f"per-sample cost ratio batch8/batch1: {ratio:.3f} (target <= 0.35)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
