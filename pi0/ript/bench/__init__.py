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
* emulated   a GPU box emulated on any CPU: reach workers whose steps sleep LIBERO's measured physics
             and render times, a latency policy L(b) = a + c*b; the defaults (render on demand, overlapped calls in
             the group schedule) against the all-off way (render every step, lock-step, a command per step) and the best
             schedule's predicted throughput (from this run's measured simulation and call times);
* features   render on demand + fast reset + one forward per substep, on vs off, replan 1/5/10, 1 and 2 workers, env-steps/s and episodes/hour;
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
import os
import sys
import time
from typing import Any

from pi0.ript.bench.common import ALL_SECTIONS, _RunnerPool, _latency_model, _machine, _machine_line
from pi0.ript.bench.emulated import EMULATED_CONFIGS, EMULATED_EPISODE_LENGTH, bench_emulated
from pi0.ript.bench.inference import bench_inference
from pi0.ript.bench.memory import bench_memory
from pi0.ript.bench.report import markdown, targets
from pi0.ript.bench.runners import bench_features, bench_latency, bench_runners
from pi0.ript.bench.sim import bench_pickle, bench_sim


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
                # A run stopped later (a time limit, a crash) keeps the sections done, marked unfinished.
                results["machine"]["load_average_at_end"] = os.getloadavg()
                results["wall_seconds"], results["finished"] = time.perf_counter() - started, False
                _write(args.out, results)
    finally:
        pool.close()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"], results["finished"] = targets(results), True
    print("\ntargets (ratios from this run):")
    for row in results["targets"]:
        value = "n/a" if row["measured"] is None else f"{row['measured']:.3f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[row["met"]]
        print(f"  {row['target']:<72} {value:>8} (goal {row['goal']}): {verdict}")
    if args.out:
        _write(args.out, results)
        print(f"wrote {args.out}")
    return 0


def _write(path: str | None, results: dict[str, Any]) -> None:
    """The results so far, replacing the file whole (written beside it, then renamed), so it is never half a JSON."""
    if not path:
        return
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(results, f, indent=1, default=float)
    os.replace(partial, path)
