"""`pi0-ript bench eval`: `pi0-ript eval` itself, timed, with one pi0 shared by every runner setting compared.

The runner's target case is a GPU box: a full-size pi0 on the GPU, LIBERO in many worker processes. This runs the
real evaluation (`evaluate.run_eval`: real LIBERO workers, the real runner, episodes written as usual) once per
runner setting, with one random-weight pi0 built in place on the device (no checkpoint to write or read), sampling
compiled or captured ahead of time (`PI0Policy.warmup` over every batch size the runner can form, so no setting pays
it), and prints per setting: env-steps/s and episodes/hour (the runner's own counters over the run's wall time,
worker start and env build included, as `results.json` reports them), env-steps/s after the first step (start-up
apart: what a longer run tends to), inference calls, mean batch, model busy time, where the envs waited, and the
ratios to the first setting.

Before the first setting, one worker builds the first task's env and resets it once (`machine_warmup_seconds`), so
the first setting does not pay alone what only a machine's first LIBERO env pays (file cache, GL driver caches). On
the H200 without it, the first setting (all-off) took 27.6 s to its first step against 8.0 s for the later ones; how
much of that was the cold machine and how much all-off's own start (it renders every settle step of the first reset:
17.0 s against 10.7 s on the 2-core CPU, warm) that run could not tell apart.
The warm-up env also writes the first task's compiled scene to the cache (task.model_cache_gb) if it is not there
yet, so settings with the cache load it from the first build on.

Settings (`--settings`, in this order; the first is the baseline of the ratios):
  all-off   render every step, hard reset, robosuite's three forward passes per physics substep, every scene
            compiled, lock-step inference, one worker command per step: how openpi, LeRobot, RIPT-VLA and RLinf step
  defaults  the defaults: render on demand, fast reset, one forward pass per substep, overlapped inference in the
            runner's group schedule, tasks spread over the workers
  task-major  the defaults, but each free worker takes the next request in order (runner.spread_tasks=false), so
            all workers start on the first task and rebuild together when it runs out
  per-step  the defaults, but one worker command per env step instead of one per chunk (runner.step_chunks=false)
  robosuite-physics  the defaults, but robosuite's three forward passes per physics substep
            (task.skip_repeated_forward=false)
  compiled-scenes  the defaults, but every env build compiles its scene instead of loading it from the cache
            (task.model_cache_gb=0): what the cache saves at the start
  serial    openpi's loop: one env, one call per replan (slow: give it few episodes)

    pi0-ript bench eval --size full --device cuda --dtype bfloat16 --compile cuda-graph --workers 14 \\
        --task-ids 0 1 --episodes-per-task 14 --episode-length 220 --image-size 256 --out bench_eval.json
    pi0-ript bench eval --size tiny --workers 2 --episodes-per-task 1 --episode-length 6 --image-size 64   # a CPU
    pi0-ript bench eval --report bench_eval.json   # a saved run's table again, and its schedule lines

After the table, one line per setting: the runner's own simulation time per chunk S and call time L(b) = a + c*b,
what the group schedule's model predicts with them for each group count k, and the measured rate after the first
step against the best prediction.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "all-off": ["task.render_on_demand=false", "task.fast_reset=false", "task.skip_repeated_forward=false",
                "task.model_cache_gb=0", "runner.overlap_inference=false", "runner.step_chunks=false"],
    "defaults": [],
    "task-major": ["runner.spread_tasks=false"],
    "per-step": ["runner.step_chunks=false"],
    "robosuite-physics": ["task.skip_repeated_forward=false"],
    "compiled-scenes": ["task.model_cache_gb=0"],
    "serial": ["features.use_ript_vla_runner=false", "task.num_parallel_envs=1"],
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from pi0.model.fast_sampling import COMPILE_MODES

    p = argparse.ArgumentParser(prog="pi0-ript bench eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny", help="random-weight pi0 (full: 3.3 B parameters)")
    p.add_argument("--variant", choices=("pi0", "pi05"), default="pi0", help="pi0 or pi05 (pi0.5)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--compile", choices=COMPILE_MODES, default="none", help="policy.compile for every setting")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="with --compile default or reduce-overhead: one compilation for every batch bucket from 2 up")
    p.add_argument("--suite", default="libero_spatial", help="a LIBERO suite, or reach (simulation nearly free)")
    p.add_argument("--task-ids", type=int, nargs="+", default=[0, 1])
    p.add_argument("--workers", type=int, default=2, help="task.num_parallel_envs (the serial setting uses 1)")
    p.add_argument("--episodes-per-task", type=int, default=2)
    p.add_argument("--episode-length", type=int, default=40, help="task.max_episode_length (libero_spatial: 220)")
    p.add_argument("--image-size", type=int, default=128, help="task.image_size: the cameras' pixels")
    p.add_argument("--settings", default="all-off,defaults", help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--out", type=Path, default=None, help="write the results and the machine as JSON")
    p.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="print the table and schedule lines of a saved --out file, run nothing")
    a = p.parse_args(argv)
    a.settings = a.settings.split(",")
    unknown = [s for s in a.settings if s not in SETTINGS]
    if unknown:
        p.error(f"--settings: unknown {', '.join(unknown)}; use {', '.join(SETTINGS)}")
    if len(set(a.settings)) < len(a.settings):
        # Each setting writes to its own output directory; a second run of one would resume the first's episodes.
        p.error(f"--settings {','.join(a.settings)}: name each setting once")
    if a.dynamic_batch and a.compile not in ("default", "reduce-overhead"):
        p.error(f"--dynamic-batch applies to --compile default or reduce-overhead, not {a.compile}")
    if min(a.workers, a.episodes_per_task, a.episode_length) < 1:
        p.error("--workers, --episodes-per-task and --episode-length must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    if a.report:
        from pi0.ript.config.schema import TaskConfig

        saved = json.loads(a.report.read_text())
        needed = ("env_steps_per_second_after_first_step", "seconds_to_first_step", "schedule")
        missing = sorted({key for row in saved["results"] for key in needed if key not in row})
        if missing:
            raise SystemExit(f"pi0-ript bench eval --report {a.report}: written by an older bench eval, its rows lack "
                             f"{', '.join(missing)}; run the bench again to get them")
        print(format_table(saved["results"]))
        for row in saved["results"]:
            # Files saved before rows recorded these: every setting but serial ran --workers, at the default replan.
            row.setdefault("workers", 1 if row["setting"] == "serial" else saved["settings"]["workers"])
            row.setdefault("replan_steps", TaskConfig().replan_steps)
            print(schedule_line(row))
        return 0
    import torch

    from pi0.ript.bench.model import DTYPES, build_model, machine_info
    from pi0.model.normalization import identity_stats
    from pi0.ript.policy.pi0_policy import PI0Policy
    from pi0.model.tokenizer import build_word_tokenizer
    from pi0.ript.config.schema import load_config
    from pi0.ript.env.factory import make_env_spec
    from pi0.ript.evaluate import run_eval
    from pi0.ript.policy.devices import resolve_device

    device = torch.device(resolve_device(a.device))
    dtype = DTYPES[a.dtype]
    # A word tokenizer over the suite's own instructions: the prompts tokenise to real ids (weights are random anyway).
    spec = make_env_spec(load_config(None, [f"task.benchmark_name={a.suite}", f"task.image_size={a.image_size}"]))
    tokenizer = build_word_tokenizer([spec.instruction(t) for t in a.task_ids])
    start = time.perf_counter()
    model = build_model(a.size, device, dtype, 224, 10, tokenizer.vocab_size, a.variant)
    build_s = time.perf_counter() - start
    policy = PI0Policy(model, tokenizer, identity_stats(), device=device, dtype=dtype, seed=0, compile=a.compile,
                       dynamic_batch=a.dynamic_batch)
    start = time.perf_counter()
    compile_seconds = policy.warmup(range(1, a.workers + 1))
    warmup_s = time.perf_counter() - start
    machine_warmup_s = warm_up_machine(spec, a.task_ids[0])
    machine = machine_info(device)
    where = machine["gpu"] or f"CPU ({machine['cpu_cores_usable']} cores)"
    print(
        f"{a.variant} {a.size} (random weights, built in {build_s:.1f} s) on {where}, {a.dtype}, compile={policy.compile_label} "
        f"(warm-up of batches 1..{a.workers}: {warmup_s:.1f} s); {a.suite} tasks {a.task_ids}, "
        f"{a.episodes_per_task} episodes each, {a.episode_length} steps, {a.image_size} px cameras, {a.workers} workers; "
        f"{machine['cpu_cores']} cores, torch {machine['torch']}; one env built and reset before the first setting "
        f"(machine warm-up): {machine_warmup_s:.1f} s"
    )
    description = {"kind": a.variant, "checkpoint": None, "checkpoint_sha256": None, "random_weights": a.size}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as scratch:
        for name in a.settings:
            overrides = [
                f"task.benchmark_name={a.suite}", f"task.task_ids=[{','.join(map(str, a.task_ids))}]",
                f"task.num_parallel_envs={a.workers}", f"task.max_episode_length={a.episode_length}",
                f"task.image_size={a.image_size}", f"eval.episodes_per_task={a.episodes_per_task}",
                f"policy.device={a.device}", f"eval.output_dir={Path(scratch) / name}", *SETTINGS[name],
            ]
            cfg = load_config(None, overrides)
            results = run_eval(cfg, loaded_policy=(policy, description))
            stats = results["runner_stats"]
            wall = stats["wall_seconds"]
            rows.append({
                "setting": name, "overrides": SETTINGS[name], "env_steps": stats["env_steps"], "episodes": stats["episodes"],
                "wall_seconds": wall, "env_steps_per_second": stats["env_steps_per_second"],
                "seconds_to_first_step": stats["seconds_to_first_step"],
                "env_steps_per_second_after_first_step": stats["env_steps_per_second_after_first_step"],
                "episodes_per_hour": 3600 * stats["episodes"] / wall if wall > 0 else 0.0,
                "inference_calls": stats["inference_calls"], "task_loads": stats["task_loads"], "scene_models": stats["scene_models"],
                "mean_batch_size": stats["mean_batch_size"],
                "model_busy_seconds": stats["seconds"]["inference"], "env_seconds": stats["env_seconds"],
                "seconds_model_idle_with_waiters": stats["seconds_model_idle_with_waiters"], "schedule": stats["schedule"],
                "success_rate": results["success_rate"], "workers": cfg.task.num_parallel_envs,
                "replan_steps": cfg.task.replan_steps,
            })
            print(format_row(rows[-1], rows[0]))
            if a.out:
                a.out.parent.mkdir(parents=True, exist_ok=True)
                report = {"machine": machine, "settings": vars(a) | {"out": str(a.out), "build_seconds": build_s,
                          "warmup_seconds": warmup_s, "machine_warmup_seconds": machine_warmup_s, "compile_seconds": {str(k): v for k, v in compile_seconds.items()}},
                          "results": rows}
                a.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n" + format_table(rows))
    for row in rows:
        print(schedule_line(row))
    return 0


def warm_up_machine(spec, task_id: int) -> float:
    """Seconds for one worker process to start, build `task_id`'s env and reset it once; then it closes."""
    from pi0.ript.env.worker import RESET, EnvWorker

    start = time.perf_counter()
    worker = EnvWorker(0, spec)
    try:
        worker.call(RESET, {"task_id": task_id, "init_state": 0}, timeout=600)
    finally:
        worker.close()
    return time.perf_counter() - start


def _scenes(row: dict) -> str:
    """The run's env builds and hard resets by where their MuJoCo model came from: the scene cache / a compile."""
    if "scene_models" not in row:  # saved before the scene cache
        return "-"
    return f"{row['scene_models']['loaded']}/{row['scene_models']['compiled']}"


def format_row(row: dict, base: dict) -> str:
    return (f"{row['setting']}: {row['env_steps_per_second']:.1f} env-steps/s "
            f"({row['env_steps_per_second'] / max(base['env_steps_per_second'], 1e-9):.2f}x {base['setting']}; "
            f"{row['env_steps_per_second_after_first_step']:.1f} after the first step at {row['seconds_to_first_step'] or 0:.1f} s), "
            f"{row['episodes_per_hour']:.0f} episodes/h, {row['task_loads']} task loads (scenes loaded/compiled {_scenes(row)}), {row['inference_calls']} calls, mean batch {row['mean_batch_size']:.1f}, "
            f"model busy {row['model_busy_seconds']:.1f} of {row['wall_seconds']:.1f} s, env waits {row['env_seconds']}")


def schedule_line(row: dict) -> str:
    """The runner's own S and L(b) = a + c*b at the end of the setting, what the group schedule's model predicts
    with them for each k, and the measured rate after the first step against the best prediction."""
    from pi0.ript.env.schedule import predicted_cycle_seconds

    name, schedule = row["setting"], row["schedule"]
    fixed, per_sample = schedule.get("call_fixed_seconds"), schedule.get("call_per_sample_seconds")
    sim = schedule.get("sim_seconds_per_chunk")
    after = row["env_steps_per_second_after_first_step"]
    busy = f"model busy {row['model_busy_seconds']:.1f} of {row['wall_seconds'] - (row['seconds_to_first_step'] or 0):.1f} s after the first step"
    if fixed is None or sim is None:  # lock-step, or too few calls of different sizes to fit L
        return f"{name}: no schedule fit (lock-step or too few calls); {busy}"
    workers, replan = row["workers"], row["replan_steps"]
    predicted = {k: workers * replan / predicted_cycle_seconds(k, workers, sim, fixed, per_sample)
                 for k in range(1, workers + 1)}
    best = max(predicted, key=predicted.get)
    shown = sorted({*range(1, min(workers, 6) + 1), best})  # the first few, and the best wherever it is
    return (f"{name}: S = {sim * 1000:.1f} ms per chunk, calls {fixed * 1000:.1f} + {per_sample * 1000:.2f} ms per sample; "
            f"predicted env-steps/s by k: {', '.join(f'{k}: {predicted[k]:.0f}' for k in shown)}; k at the end "
            f"{schedule.get('groups')}; after the first step {after:.1f} = {after / predicted[best]:.2f}x the best "
            f"prediction (k = {best}); {busy}")


def format_table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{'setting':>10} {'env-steps/s':>12} {'x ' + base['setting']:>10} {'after start':>12} {'x':>6} {'start s':>8} "
             f"{'episodes/h':>11} {'loads':>6} {'scenes l/c':>10} {'calls':>6} {'batch':>6} {'model busy s':>13} {'wall s':>7} {'k':>3}"]
    steady = lambda r: r["env_steps_per_second_after_first_step"]  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['setting']:>10} {r['env_steps_per_second']:>12.1f} {r['env_steps_per_second'] / max(base['env_steps_per_second'], 1e-9):>10.2f} "
            f"{steady(r):>12.1f} {steady(r) / max(steady(base), 1e-9):>6.2f} {r['seconds_to_first_step'] or 0:>8.1f} "
            f"{r['episodes_per_hour']:>11.0f} {r['task_loads']:>6} {_scenes(r):>10} {r['inference_calls']:>6} {r['mean_batch_size']:>6.1f} "
            f"{r['model_busy_seconds']:>13.1f} {r['wall_seconds']:>7.1f} {str(r['schedule'].get('groups', '-')):>3}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
