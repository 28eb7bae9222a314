"""Env specs from config: the one place that maps `task.benchmark_name` to a picklable env recipe."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from pi0.ript.config.schema import BUILTIN_SUITES


def make_env_spec(cfg: DictConfig) -> Any:
    t = cfg.task
    if t.benchmark_name in BUILTIN_SUITES:
        from pi0.ript.env.reach_sim import ReachEnvSpec

        return ReachEnvSpec.from_config(cfg)
    from pi0.ript.env.libero_sim import LiberoEnvSpec

    return LiberoEnvSpec(
        benchmark_name=t.benchmark_name,
        image_size=t.image_size,
        seed=t.seed,
        num_wait_steps=t.num_wait_steps,
        fast_render=t.fast_render,
        render_on_demand=t.render_on_demand,
        fast_reset=t.fast_reset,
    )
