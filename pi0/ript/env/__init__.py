"""Rollout runners for LIBERO (and the built-in reach task). `create_env_runner` picks one from the config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def create_env_runner(config: DictConfig, policy: Any, rank: int = 0, world_size: int = 1):
    """`features.use_ript_vla_runner: true` -> PI0LiberoRunner (parallel workers), else LIBEROEnvRunner (serial).
    Tasks are sharded over ranks round-robin."""
    if bool(getattr(getattr(config, "features", None), "use_ript_vla_runner", False)):
        from pi0.ript.env.parallel_runner import PI0LiberoRunner as runner_class
    else:
        from pi0.ript.env.serial_runner import LIBEROEnvRunner as runner_class
    return runner_class(
        policy=policy,
        benchmark_name=config.task.benchmark_name,
        rollouts_per_env=config.algo.rollouts_per_env,
        num_parallel_envs=config.task.num_parallel_envs,
        config=config,
        rank=rank,
        world_size=world_size,
    )
