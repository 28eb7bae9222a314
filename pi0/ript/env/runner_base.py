"""What both runners share: construction from the user's arguments, the request list, the RIPT-style
`run_policy_in_env` generator, and batched policy calls with action checks. Subclasses implement `run_episodes`."""

from __future__ import annotations

import dataclasses

import logging
import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from omegaconf import DictConfig

from pi0.ript.config.schema import ConfigError, apply_debug_mode, default_config, max_episode_length, validate
from pi0.ript.env.episode import Episode, EpisodeRequest
from pi0.ript.env.factory import make_env_spec
from pi0.ript.env.rollout import EpisodeInProgress, PolicyActionError
from pi0.ript.policy.protocol import RolloutPolicy, takes_sample_seeds

log = logging.getLogger(__name__)


class RunnerStats:
    """Counters the benchmarks and the trainer read: env steps, policy calls, and where the time went."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.env_steps = 0
        self.episodes = 0
        self.inference_calls = 0
        self.inference_samples = 0
        self.worker_restarts = 0
        self.task_loads = 0  # resets that load a task the env's simulation did not hold (a LIBERO env build)
        # MuJoCo models the envs' resets took from the compiled-scene cache or compiled (task.model_cache_gb)
        self.scene_models = {"loaded": 0, "compiled": 0}
        # stepping_envs: the parallel runner's main thread waiting for worker replies; the serial runner stepping its
        # env in-process.
        # policy_warmup: the parallel runner's warm-up of the policy (compiling or capturing its batch buckets), in the
        # policy thread while the workers start.
        self.seconds = {"inference": 0.0, "stepping_envs": 0.0, "policy_warmup": 0.0}
        # Env-seconds (summed over envs) an env spent in a policy call, waiting while the model was free (held for
        # batch-mates), or waiting while it computed for others (queued): where an inference-bound run loses time.
        self.env_seconds = {"in_call": 0.0, "held_for_batch_mates": 0.0, "queued_behind_a_call": 0.0}
        self.seconds_model_idle_with_waiters = 0.0  # wall seconds no call ran although some env waited
        self.schedule: dict[str, Any] = {}  # the parallel runner's group schedule: k, measured S, a, c
        self.started = time.perf_counter()
        # When the first env step came back (workers up, envs built), and how many steps that reply held (a worker
        # that plays a whole chunk per command answers for all of its steps at once).
        self.first_step_at: float | None = None
        self.first_reply_steps = 0

    def count_steps(self, steps: int = 1) -> None:
        self.env_steps += steps
        if self.first_step_at is None and steps:
            self.first_step_at = time.perf_counter()
            self.first_reply_steps = steps

    def as_dict(self) -> dict[str, Any]:
        now = time.perf_counter()
        wall = now - self.started
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "inference_calls": self.inference_calls,
            "mean_batch_size": self.inference_samples / max(self.inference_calls, 1),
            "worker_restarts": self.worker_restarts,
            "task_loads": self.task_loads,
            "scene_models": dict(self.scene_models),
            "wall_seconds": wall,
            "env_steps_per_second": self.env_steps / wall if wall > 0 else 0.0,
            # Start-up (worker processes, env builds, first resets) apart: the rate a longer run tends to.
            "seconds_to_first_step": None if self.first_step_at is None else self.first_step_at - self.started,
            "env_steps_per_second_after_first_step": (
                (self.env_steps - self.first_reply_steps) / (now - self.first_step_at)
                if self.first_step_at is not None and now > self.first_step_at else 0.0
            ),
            "seconds": dict(self.seconds),
            "env_seconds": dict(self.env_seconds),
            "seconds_model_idle_with_waiters": self.seconds_model_idle_with_waiters,
            "schedule": dict(self.schedule),
        }


class RunnerBase:
    def __init__(
        self,
        policy: RolloutPolicy,
        benchmark_name: str | None = None,
        rollouts_per_env: int | None = None,
        num_parallel_envs: int | None = None,
        config: DictConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        env_spec: Any = None,
    ):
        cfg = apply_debug_mode(config) if config is not None else default_config()
        cfg = cfg.copy()
        # The guide's explicit arguments win over the config, so `PI0LiberoRunner(policy, "libero_goal", 4, 2)` works.
        if benchmark_name is not None:
            cfg.task.benchmark_name = benchmark_name
        if rollouts_per_env is not None:
            cfg.algo.rollouts_per_env = rollouts_per_env
        if num_parallel_envs is not None:
            cfg.task.num_parallel_envs = num_parallel_envs
        if (benchmark_name, rollouts_per_env, num_parallel_envs) != (None, None, None):
            validate(cfg)  # the guide's arguments pass the same checks as the config's keys (one ConfigError each)
        self.cfg = cfg
        self.policy = policy
        self.benchmark_name = cfg.task.benchmark_name
        self.rollouts_per_env = int(cfg.algo.rollouts_per_env)
        self.num_parallel_envs = int(cfg.task.num_parallel_envs)
        self.rank, self.world_size = rank, world_size
        self.replan_steps = int(cfg.task.replan_steps)
        self.max_steps = max_episode_length(cfg)
        self.on_bad_action = cfg.runner.on_bad_action
        self.env_spec = env_spec if env_spec is not None else make_env_spec(cfg)
        all_tasks = list(cfg.task.task_ids) or list(range(self.env_spec.num_tasks()))
        for task_id in all_tasks:
            if task_id >= self.env_spec.num_tasks():
                raise ConfigError(f"task.task_ids: {task_id} is not a task of {self.benchmark_name}: use 0..{self.env_spec.num_tasks() - 1}")
        self.task_ids = all_tasks[rank::world_size]  # round-robin sharding of tasks over ranks
        self.stats = RunnerStats()
        if cfg.test.verbose_logging:
            logging.getLogger("pi0").setLevel(logging.DEBUG)

    def configure_run(
        self,
        *,
        policy: RolloutPolicy | None = None,
        replan_steps: int | None = None,
        max_steps: int | None = None,
        overlap_inference: bool | None = None,
    ) -> None:
        """Settings for the next `run_episodes`, for callers that reuse one runner and its workers across settings
        (the benchmarks). Only what is given changes; the config's values stay the defaults."""
        if replan_steps is not None and replan_steps < 1:
            raise ValueError(f"replan_steps={replan_steps} must be >= 1")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps={max_steps} must be >= 1")
        if policy is not None:
            self.policy = policy
        if replan_steps is not None:
            self.replan_steps = int(replan_steps)
        if max_steps is not None:
            self.max_steps = int(max_steps)
        if overlap_inference is not None:
            self.overlap_inference = bool(overlap_inference)  # read by the parallel runner; the serial one never overlaps

    # --- the user's interface ---------------------------------------------------------------------------------
    def run_policy_in_env(
        self,
        env_name: str | int,
        all_init_states: Sequence[int] | np.ndarray | None = None,
        created_env: Any = None,
        want_frames: bool = False,
    ) -> Iterator[tuple[bool, float, Episode]]:
        """RIPT-VLA's interface: one `(success, total_reward, episode)` per finished episode of task `env_name`
        (its index, name or instruction). `all_init_states`: init-state indices (or the states themselves), one
        episode each, repeated as given (pass an index K times for K rollouts of one context); None means
        `rollouts_per_env` episodes from distinct init states 0..K-1. `created_env`: what `create_env` returned."""
        if created_env is not None and created_env is not self.create_env(env_name):
            raise ValueError("created_env must be the object this runner's create_env() returned")
        task_id = self.resolve_task(env_name)
        if all_init_states is None:
            init_states: list[Any] = list(range(self.rollouts_per_env))
        elif isinstance(all_init_states, np.ndarray) and all_init_states.ndim == 2:
            init_states = [np.asarray(state) for state in all_init_states]
        else:
            init_states = [int(i) for i in all_init_states]
        requests = [EpisodeRequest(task_id=task_id, init_state=s, rollout_index=k) for k, s in enumerate(init_states)]
        for episode in self.run_episodes(requests, want_frames=want_frames):
            yield episode.success, episode.total_reward, episode

    def create_env(self, env_name: str | int | None = None) -> Any:
        """The env handle `run_policy_in_env(created_env=...)` accepts (the runner keeps its envs between calls)."""
        return self

    def resolve_task(self, env_name: str | int) -> int:
        if isinstance(env_name, (int, np.integer)) or (isinstance(env_name, str) and env_name.isdigit()):
            task_id = int(env_name)
            if not 0 <= task_id < self.env_spec.num_tasks():
                raise ValueError(f"task {task_id} is not in {self.benchmark_name}: use 0..{self.env_spec.num_tasks() - 1}")
            return task_id
        for task_id in range(self.env_spec.num_tasks()):
            if env_name in (self.env_spec.task_name(task_id), self.env_spec.instruction(task_id)):
                return task_id
        raise ValueError(f"env_name {env_name!r} is neither a task index, name nor instruction of {self.benchmark_name}")

    def run_episodes(self, requests: Iterable[EpisodeRequest], want_frames: bool = False) -> Iterator[Episode]:
        """One finished episode per request, in the order they finish. A list (any Sequence) is seen whole from the
        start; any other iterable is read only as workers free up, so a caller can hand out work as the run goes
        (the ranks of one eval take their episodes that way: pi0.ript.eval_ranks.EpisodeClaims)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- shared machinery -----------------------------------------------------------------------------------
    @staticmethod
    def _numbered(requests: Iterable[EpisodeRequest]) -> Iterator[EpisodeRequest]:
        """The runner's own numbered copies, made as the requests are read: the caller's requests are never written
        to (it may reuse them)."""
        for i, request in enumerate(requests):
            yield dataclasses.replace(request, request_id=i)

    def _new_episode(self, request: EpisodeRequest, reset, want_frames: bool, restarts: int, label: str) -> EpisodeInProgress:
        for source, count in (reset.info.get("scene_models") or {}).items():
            if source in self.stats.scene_models:
                self.stats.scene_models[source] += count
        return EpisodeInProgress(request, reset, self.replan_steps, self.max_steps, want_frames, restarts, label)

    def _infer(self, episodes: list[EpisodeInProgress]) -> None:
        """One batched policy call for every episode whose queue is empty."""
        started = time.perf_counter()
        observations, instructions = [e.observation for e in episodes], [e.instruction for e in episodes]
        seeds = [e.next_chunk_seed() for e in episodes] if takes_sample_seeds(self.policy) else [None]
        if None not in seeds:
            output = self.policy.predict_chunks(observations, instructions, sample_seeds=seeds)
        else:  # a batch that mixes seeded and unseeded episodes draws from the policy's stream
            output = self.policy.predict_chunks(observations, instructions)
        seconds = time.perf_counter() - started
        self.stats.seconds["inference"] += seconds
        self.stats.env_seconds["in_call"] += seconds * len(episodes)
        self.stats.inference_calls += 1
        self.stats.inference_samples += len(episodes)
        if len(output.actions) != len(episodes):
            raise PolicyActionError(f"policy returned {len(output.actions)} chunks for a batch of {len(episodes)}")
        for episode, chunk, extras in zip(episodes, output.actions, output.extras):
            try:
                episode.add_chunk(chunk, extras)
            except PolicyActionError as exc:
                if self.on_bad_action == "raise":
                    raise
                log.warning("episode marked failed: %s", exc)
                episode.fail(str(exc))
