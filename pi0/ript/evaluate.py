"""`pi0-ript eval`: run a suite's tasks through the chosen runner and write results a reader can reproduce.

Output directory:
    protocol.json    everything that decides the numbers (suite, tasks, init states, seed, image size, settle
                     steps, max steps, replan steps, render/reset modes, policy and checkpoint hash)
    episodes.jsonl   one line per finished episode, appended and flushed as it finishes, so a crash loses nothing
                     and a re-run skips what is done
    results.json     protocol + per-task and overall success, written at the end
    success.png      per-task success bar chart
    videos/          one mp4 per episode when eval.save_videos is true
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from pi0.ript.config.schema import ConfigError, apply_debug_mode, max_episode_length, to_container
from pi0.ript.env import create_env_runner
from pi0.ript.env.episode import Episode, EpisodeRequest
from pi0.ript.policy.loading import load_policy

log = logging.getLogger(__name__)


def evaluation_protocol(cfg: DictConfig, runner, policy_description: dict[str, Any]) -> dict[str, Any]:
    t = cfg.task
    return {
        "benchmark_name": t.benchmark_name,
        "task_ids": list(runner.task_ids),
        "task_names": {str(i): runner.env_spec.task_name(i) for i in runner.task_ids},
        "init_state_indices": list(range(cfg.eval.init_state_offset, cfg.eval.init_state_offset + cfg.eval.episodes_per_task)),
        "seed": t.seed,
        "image_size": t.image_size,
        "num_wait_steps": t.num_wait_steps,
        "max_episode_length": max_episode_length(cfg),
        "replan_steps": t.replan_steps,
        "fast_render": t.fast_render,
        "render_on_demand": t.render_on_demand,
        "fast_reset": t.fast_reset,
        "runner": type(runner).__name__,
        "policy": policy_description,
    }


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


def _save_video(episode: Episode, directory: Path, fps: int) -> None:
    import imageio.v2 as imageio

    directory.mkdir(parents=True, exist_ok=True)
    name = f"task{episode.task_id:02d}_init{episode.init_state_index:03d}_{'success' if episode.success else 'failure'}.mp4"
    frames = [np.ascontiguousarray(frame[::-1, ::-1]) for frame in episode.frames or []]  # LIBERO renders upside down
    imageio.mimwrite(directory / name, frames, fps=fps, macro_block_size=1)


def summarize(records: list[dict[str, Any]], task_ids: list[int]) -> dict[str, Any]:
    per_task = {}
    for task_id in task_ids:
        rows = [r for r in records if r["task_id"] == task_id]
        successes = sum(r["success"] for r in rows)
        per_task[str(task_id)] = {
            "task_name": rows[0]["task_name"] if rows else None,
            "episodes": len(rows),
            "successes": successes,
            "success_rate": successes / len(rows) if rows else None,
        }
    total = len(records)
    return {
        "per_task": per_task,
        "episodes": total,
        "successes": sum(r["success"] for r in records),
        "success_rate": sum(r["success"] for r in records) / total if total else None,
    }


def plot_success(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_ids = list(summary["per_task"])
    rates = [100 * (summary["per_task"][t]["success_rate"] or 0.0) for t in task_ids]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(task_ids) + 2), 3.5))
    ax.bar(range(len(task_ids)), rates, color="tab:blue", tick_label=task_ids)
    ax.set_ylim(0, 100)
    ax.set_xlabel("task id")
    ax.set_ylabel("success (%)")
    overall = summary["success_rate"]
    ax.set_title(f"{title}: {100 * overall:.1f}% overall" if overall is not None else title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'task':>4}  {'success':>9}  {'rate':>6}  name"]
    for task_id, row in summary["per_task"].items():
        rate = f"{100 * row['success_rate']:.1f}%" if row["success_rate"] is not None else "-"
        lines.append(f"{task_id:>4}  {row['successes']:>4}/{row['episodes']:<4}  {rate:>6}  {row['task_name']}")
    if summary["success_rate"] is not None:
        lines.append(f" all  {summary['successes']:>4}/{summary['episodes']:<4}  {100 * summary['success_rate']:.1f}%")
    return "\n".join(lines)


def run_eval(cfg: DictConfig, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    cfg = apply_debug_mode(cfg)
    output_dir = Path(cfg.eval.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    policy, policy_description = load_policy(cfg)
    runner = create_env_runner(cfg, policy, rank=rank, world_size=world_size)
    try:
        protocol = evaluation_protocol(cfg, runner, policy_description)
        protocol_path = output_dir / "protocol.json"
        if protocol_path.exists() and json.loads(protocol_path.read_text()) != protocol:
            raise ConfigError(
                f"eval.output_dir={str(output_dir)!r} holds results of a different protocol ({protocol_path}): "
                "use a new eval.output_dir, or delete that one to start over"
            )
        for task_id in runner.task_ids:
            available = runner.env_spec.num_init_states(task_id)
            if protocol["init_state_indices"][-1] >= available:
                raise ConfigError(
                    f"eval.init_state_offset + eval.episodes_per_task = {protocol['init_state_indices'][-1] + 1} exceeds the "
                    f"{available} init states of task {task_id}: lower one of them"
                )
        _write_json_atomically(protocol_path, protocol)
        episodes_path = output_dir / "episodes.jsonl"
        finished = _load_finished(episodes_path)
        requests = [
            EpisodeRequest(task_id=task_id, init_state=index)
            for task_id in runner.task_ids
            for index in protocol["init_state_indices"]
            if (task_id, index) not in finished
        ]
        if finished:
            log.info("resuming: %d episodes already in %s, %d to run", len(finished), episodes_path, len(requests))
        progress = tqdm(total=len(requests), desc="eval episodes", unit="ep", disable=not requests)
        with open(episodes_path, "a") as stream:
            for episode in runner.run_episodes(requests, want_frames=cfg.eval.save_videos):
                record = episode.summary()
                stream.write(json.dumps(record) + "\n")
                stream.flush()
                os.fsync(stream.fileno())  # an episode on disk survives a crash or Ctrl-C one line later
                finished[(record["task_id"], record["init_state_index"])] = record
                if cfg.eval.save_videos:
                    _save_video(episode, output_dir / "videos", cfg.eval.video_fps)
                progress.update(1)
                progress.set_postfix(success=f"{sum(r['success'] for r in finished.values())}/{len(finished)}")
        progress.close()
        records = [finished[key] for key in sorted(finished) if key[0] in runner.task_ids]
        summary = summarize(records, list(runner.task_ids))
        results = {"protocol": protocol, "config": to_container(cfg), **summary, "runner_stats": runner.stats.as_dict()}
        _write_json_atomically(output_dir / "results.json", results)
        plot_success(summary, output_dir / "success.png", cfg.task.benchmark_name)
        print(format_table(summary))
        if policy_description["kind"] == "small":
            print("note: the small built-in policy has random weights; its success rate means nothing (no checkpoint was given)")
        print(f"results: {output_dir / 'results.json'}")
        return results
    finally:
        runner.close()
