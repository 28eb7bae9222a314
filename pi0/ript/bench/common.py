"""Pieces every `pi0-ript bench` section uses: the env spec, policies, the runner pool and one measured runner
run, process memory, the machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

ALL_SECTIONS = ("sim", "pickle", "inference", "runners", "latency", "features", "memory", "emulated")

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
                         render_on_demand=on, fast_reset=on, skip_repeated_forward=on,
                         **({} if on else {"model_cache_gb": 0}))

def _worker_counts(args) -> list[int]:
    if args.quick and args.max_workers > 1:
        return [1, args.max_workers]
    return list(range(1, args.max_workers + 1))


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
                    episodes_per_worker: int | None = None, groups: int = 0, episode_length: int | None = None,
                    step_chunks: bool = True) -> dict[str, Any]:
    """A measured run of episodes_per_worker x N episodes of episode_length steps, after a warm-up episode per
    worker (env build and first reset left out). Returns throughput, phases and per-episode outcomes.
    `groups`: the parallel runner's inference groups (0: its own choice), learnt afresh for each measurement;
    `step_chunks`: a worker plays a chunk per command (false: a command per step, the peers' way)."""
    parallel = hasattr(runner, "start_workers")
    runner.configure_run(policy=policy, replan_steps=replan, overlap_inference=overlap,
                         **({"inference_groups": groups, "step_chunks": step_chunks} if parallel else {}))
    n = runner.num_parallel_envs if parallel else 1
    if warm:
        runner.configure_run(max_steps=1)
        for _ in runner.run_episodes(_requests(args, runner, n)):
            pass
    runner.configure_run(max_steps=episode_length or args.episode_length)
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

def _brief(point) -> dict[str, float]:
    keys = ("env_steps_per_second", "episodes_per_hour", "ratio_to_sim_limit", "ratio_to_serial", "mean_batch_size")
    return {k: point[k] for k in keys if k in point}

# ------------------------------------------------------------------------------------------------------- output
def _print_row(label: str, values: dict[str, float], unit: str) -> None:
    cells = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"{label:<34} {cells}  {unit}", flush=True)

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
