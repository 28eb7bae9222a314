"""`pi0-ript bench model`: pi0 inference time per call by batch size, the preprocessing share, compile time, peak memory.

For each configuration (compile mode x preprocessing path) and batch size: the wall time of one `predict_chunks`
call (preprocessing + prefix + Euler steps + postprocessing), per sample, the time of `prepare_batch` alone and its
share of the call, and peak memory (CUDA: `max_memory_allocated` per batch size; CPU: the process's peak RSS so far).
Compiled modes first compile every bucket the batch sizes fall in; the time of that first call is printed.

The model has random weights: `--size tiny` (the test model) or `--size full` (`PI0Config.full()`, 3.3 B parameters),
built directly on the target device in the target dtype. Images are synthetic uint8 camera frames, two per sample.

`--preprocess-only` times `prepare_batch` alone. With `--device meta` (no data, no arithmetic: a stand-in accelerator
on a CPU-only machine) it shows what preprocessing costs the host when the image arithmetic runs on a device; meta's
shape bookkeeping runs in Python, so this overstates the host's share, and the host-to-device copy is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from pi0.model.config import PI0Config
from pi0.model.fast_sampling import COMPILE_MODES
from pi0.model.modeling import PI0Model
from pi0.model.normalization import identity_stats
from pi0.model.tokenizer import build_word_tokenizer
from pi0.ript.policy.devices import resolve_device
from pi0.ript.policy.pi0_policy import PREPROCESS_MODES, PI0Policy

BENCH_INSTRUCTIONS = ["put the bowl on the plate", "open the top drawer of the cabinet"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
VARIANTS = ("pi0", "pi05")


def _obs(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    q = rng.normal(size=4)
    return {
        "agentview_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "eef_pos": rng.normal(size=3),
        "eef_quat": q / np.linalg.norm(q),
        "gripper_qpos": rng.normal(scale=0.02, size=2),
    }


def machine_info(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    size: str, device: torch.device, dtype: torch.dtype, image_size: int, num_steps: int, vocab: int, variant: str = "pi0"
) -> PI0Model:
    """Random weights, created on `device` in `dtype` (a full model never exists in fp32 on the CPU first);
    `variant` pi0 or pi05."""
    pi05 = {"pi05": True} if variant == "pi05" else {}
    if size == "tiny":
        cfg = PI0Config.tiny(image_size=image_size, vocab_size=max(vocab, 8), num_inference_steps=num_steps, **pi05)
    else:
        cfg = PI0Config.full(num_inference_steps=num_steps, **pi05)
    with torch.device(device), _default_dtype(dtype), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PI0Model(cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return 1000 * (time.perf_counter() - start)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_batch(policies: Sequence[PI0Policy], observations: list[dict], batch: int, repeats: int) -> list[dict]:
    """One row per policy at one batch size. The policies are timed in turn, call by call (round robin), so a change of
    machine load hits every configuration alike and their ratios stay meaningful on a shared machine."""
    device = policies[0].device
    obs, prompts = observations[:batch], [BENCH_INSTRUCTIONS[i % 2] for i in range(batch)]
    calls: list[list[float]] = [[] for _ in policies]
    preps: list[list[float]] = [[] for _ in policies]
    peaks = [0.0] * len(policies)
    for policy in policies:
        policy.predict_chunks(obs, prompts)  # warm-up: allocator, kernels, token cache
    for _ in range(repeats):
        for i, policy in enumerate(policies):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            calls[i].append(_time_ms(lambda: policy.predict_chunks(obs, prompts), device))
            peaks[i] = max(peaks[i], _peak_mib(device))
            preps[i].append(_time_ms(lambda: policy.prepare_batch(obs, prompts), device))
    rows = []
    for i, policy in enumerate(policies):
        call, prep = statistics.median(calls[i]), statistics.median(preps[i])
        rows.append(
            {
                "compile": policy.compile_label,
                "preprocess": policy.preprocess,
                "batch": batch,
                "ms_per_call": call,
                "ms_per_sample": call / batch,
                "preprocess_ms": prep,
                "preprocess_share": prep / call,
                "peak_memory_mib": peaks[i],
            }
        )
    return rows


def print_rows(rows: list[dict], peak_label: str, by: str = "batch") -> None:
    """One line per row, labelled by batch size or by configuration (compile/preprocess)."""
    label = (lambda r: f"{r['batch']:>6}") if by == "batch" else (lambda r: f"{r['compile'] + '/' + r['preprocess']:>26}")
    head = f"{'batch':>6}" if by == "batch" else f"{'compile/preprocess':>26}"
    print(f"{head} {'ms/call':>9} {'ms/sample':>10} {'preprocess ms':>14} {'share':>6} {peak_label:>16}")
    for r in rows:
        print(
            f"{label(r)} {r['ms_per_call']:>9.1f} {r['ms_per_sample']:>10.2f} {r['preprocess_ms']:>14.1f}"
            f" {r['preprocess_share']:>6.1%} {r['peak_memory_mib']:>16.0f}"
        )


def _preprocess_only(policies: Sequence[PI0Policy], observations: list[dict], a: argparse.Namespace, settings: dict, machine: dict) -> int:
    """`prepare_batch` alone, the preprocessing paths timed in turn, call by call."""
    results = []
    print(f"\n{'batch':>6} " + " ".join(f"{p.preprocess + ' ms':>16}" for p in policies))
    for b in a.batch_sizes:
        obs, prompts = observations[:b], [BENCH_INSTRUCTIONS[i % 2] for i in range(b)]
        times: list[list[float]] = [[] for _ in policies]
        for policy in policies:
            policy.prepare_batch(obs, prompts)  # warm-up: token cache, coefficient tables
        for _ in range(a.repeats):
            for i, policy in enumerate(policies):
                times[i].append(_time_ms(lambda: policy.prepare_batch(obs, prompts), policy.device))
        medians = [statistics.median(t) for t in times]
        results += [{"preprocess": p.preprocess, "batch": b, "preprocess_ms": m} for p, m in zip(policies, medians)]
        print(f"{b:>6} " + " ".join(f"{m:>16.1f}" for m in medians))
    settings["load_average_end"] = os.getloadavg()
    print(f"load average (1 min) at the start / end: {settings['load_average_start'][0]:.2f} / {settings['load_average_end'][0]:.2f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": machine, "settings": {**settings, "preprocess_only": True}, "results": results}, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pi0-ript bench model", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "full"), default="tiny", help="tiny test model or full pi0 (random weights)")
    p.add_argument("--variant", choices=VARIANTS, default="pi0", help="pi0 or pi05 (pi0.5)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, auto (cuda if available); meta with --preprocess-only")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["none"], help="sampling modes to compare")
    p.add_argument("--preprocess", nargs="+", choices=PREPROCESS_MODES, default=["batched"], help="preprocessing paths to compare")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="also time each torch.compile mode given with a symbolic batch size (one compilation for buckets >= 2)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per batch size (median reported)")
    p.add_argument("--num-steps", type=int, default=10, help="Euler (denoising) steps per chunk")
    p.add_argument("--image-size", type=int, default=112, help="model image size of the tiny config (full: 224)")
    p.add_argument("--env-image-size", type=int, default=None, help="camera image size (default: 128 tiny, 256 full)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on a CPU (0 = torch default)")
    p.add_argument("--preprocess-only", action="store_true", help="time prepare_batch alone (see the module doc)")
    p.add_argument("--out", type=Path, default=None, help="write the results and the machine as JSON")
    a = p.parse_args(argv)

    if a.device == "auto":
        device = torch.device(resolve_device("auto"))
    else:
        device = torch.device(a.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            p.error(f"--device {a.device}: no CUDA device is visible; use --device cpu or auto")
        if device.type not in ("cpu", "cuda") and not (device.type == "meta" and a.preprocess_only):
            p.error(f"--device {a.device}: use cpu, cuda, cuda:N or auto (meta only with --preprocess-only)")
    if a.dynamic_batch and not set(a.compile) & {"default", "reduce-overhead"}:
        p.error("--dynamic-batch applies to the torch.compile modes: add --compile default or reduce-overhead")
    if a.preprocess_only and a.compile != ["none"]:
        p.error("--preprocess-only times prepare_batch, which does not depend on --compile: leave --compile out")
    if min(a.batch_sizes) < 1 or a.repeats < 1 or a.num_steps < 1:
        p.error("--batch-sizes, --repeats and --num-steps must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = DTYPES[a.dtype]
    camera = a.env_image_size or (128 if a.size == "tiny" else 256)
    tokenizer = build_word_tokenizer(BENCH_INSTRUCTIONS)

    start = time.perf_counter()
    model = build_model(a.size, device, dtype, a.image_size, a.num_steps, tokenizer.vocab_size, a.variant)
    build_s = time.perf_counter() - start
    machine = machine_info(device)
    params = sum(t.numel() for t in model.parameters())
    where = f"{machine['gpu']}" if machine["gpu"] else f"CPU, {machine['cpu_cores_usable']} cores, {torch.get_num_threads()} thread(s)"
    if device.type == "meta":
        where = f"meta device (no arithmetic) on a {where}"
    print(
        f"{a.variant} {a.size} ({params / 1e6:.1f} M parameters, random weights, built in {build_s:.1f} s), {where}, {a.dtype}, "
        f"torch {torch.__version__}; {model.config.image_size} px model images from two {camera} px cameras, "
        f"{a.num_steps} Euler steps, median of {a.repeats}"
    )
    peak_label = "peak alloc MiB" if device.type == "cuda" else "peak RSS MiB"
    variants = [(mode, False) for mode in a.compile]
    if a.dynamic_batch:
        variants += [(mode, True) for mode in a.compile if mode in ("default", "reduce-overhead")]
    policies = [
        PI0Policy(model, tokenizer, identity_stats(), device=device, dtype=dtype, seed=0, compile=mode, preprocess=prep,
                  dynamic_batch=dynamic)
        for mode, dynamic in variants
        for prep in a.preprocess
    ]
    rng = np.random.default_rng(0)
    observations = [_obs(rng, camera) for _ in range(max(a.batch_sizes))]
    settings = {
        "size": a.size, "variant": a.variant, "device": str(device), "dtype": a.dtype, "parameters": params, "model_image_size": model.config.image_size,
        "camera_size": camera, "num_steps": a.num_steps, "repeats": a.repeats, "threads": torch.get_num_threads(),
        "build_seconds": build_s, "load_average_start": os.getloadavg(),
    }
    results: list[dict] = []
    compile_times: dict[str, dict[int, float]] = {}
    capture_errors: dict[str, dict[int, str]] = {}
    # Batch size by batch size, each bucket compiled just before it is timed, the JSON rewritten after each: a run
    # killed by a time limit (long compilations of the full model) keeps every batch size it finished.
    if a.preprocess_only:
        return _preprocess_only(policies, observations, a, settings, machine)
    for b in a.batch_sizes:
        for policy in policies:
            for (bucket, _, _), seconds in policy.warmup([b]).items():
                name = f"{policy.compile_label}/{policy.preprocess}"
                if bucket not in compile_times.setdefault(name, {}):
                    compile_times[name][bucket] = seconds
                    print(f"compile={policy.compile_label} preprocess={policy.preprocess}: bucket {bucket} first call "
                          f"(compilation or capture + one run) {seconds:.1f} s")
            for (bucket, _, _), reason in (policy.fast_sampler.capture_errors if policy.fast_sampler else {}).items():
                capture_errors.setdefault(f"{policy.compile_label}/{policy.preprocess}", {})[bucket] = reason
                print(f"compile={policy.compile_label}: capture failed for bucket {bucket}, timed eagerly: {reason}")
        rows = bench_batch(policies, observations, b, a.repeats)
        results.extend(rows)
        print(f"\nbatch {b}:")
        print_rows(rows, peak_label, by="config")
        if a.out:
            settings["load_average_end"] = os.getloadavg()
            a.out.parent.mkdir(parents=True, exist_ok=True)
            report = {"machine": machine, "settings": settings, "results": results, "compile_seconds": compile_times,
                      "capture_errors": capture_errors}
            a.out.write_text(json.dumps(report, indent=2) + "\n")
    for policy in policies:
        print(f"\ncompile={policy.compile_label} preprocess={policy.preprocess}")
        print_rows([r for r in results if (r["compile"], r["preprocess"]) == (policy.compile_label, policy.preprocess)], peak_label)
    if len(policies) > 1:
        base = (policies[0].compile_label, policies[0].preprocess)
        ref = {r["batch"]: r["ms_per_call"] for r in results if (r["compile"], r["preprocess"]) == base}
        print(f"\nms/call relative to compile={base[0]} preprocess={base[1]} (same run, calls interleaved):")
        for policy in policies[1:]:
            mine = [r for r in results if (r["compile"], r["preprocess"]) == (policy.compile_label, policy.preprocess)]
            print(f"  compile={policy.compile_label} preprocess={policy.preprocess}: "
                  + ", ".join(f"B={r['batch']}: {r['ms_per_call'] / ref[r['batch']]:.2f}" for r in mine))
    print(f"\nload average (1 min) at the start / end: {settings['load_average_start'][0]:.2f} / {os.getloadavg()[0]:.2f}")
    if device.type == "cpu":
        print(f"({peak_label}: the process's peak resident memory so far, not per batch size)")
    if a.out:
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
