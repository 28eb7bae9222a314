"""Section `emulated`: a GPU box emulated on any CPU (reach workers that sleep LIBERO's physics and render times, a
latency policy L(b) = a + c*b): the defaults against the all-off way and the best schedule's predicted throughput."""

from __future__ import annotations

import time
from typing import Any

from pi0.ript.bench.common import _measure_runner, _policy, _print_row
from pi0.ript.bench.sim import _sim_point


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
    replan 5: the defaults, lock-step with the defaults' rendering, and the all-off way (a command per step)."""
    from pi0.ript.bench.policies import LatencyPolicy
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
                    runs["all_off"] = _measure_runner(args, runner, policy, replan, overlap=False, step_chunks=False,
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
