"""`LIBEROEnvRunner`: the serial runner. One env in this process, one episode at a time, the same episode format
and interface as the parallel `PI0LiberoRunner` (which is what to use for speed)."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

from pi0.ript.env.episode import Episode, EpisodeRequest
from pi0.ript.env.runner_base import RunnerBase


class LIBEROEnvRunner(RunnerBase):
    def __init__(self, policy, benchmark_name=None, rollouts_per_env=None, num_parallel_envs=None, config=None,
                 rank=0, world_size=1, env_spec=None):
        super().__init__(policy, benchmark_name, rollouts_per_env, num_parallel_envs, config, rank, world_size, env_spec)
        self._env = None  # built on first use, kept between calls so its simulation can be reused
        self._loaded_task: int | None = None

    def run_episodes(self, requests: Iterable[EpisodeRequest], want_frames: bool = False) -> Iterator[Episode]:
        if self._env is None:
            self._env = self.env_spec.make()
        for request in self._numbered(requests):
            self.stats.task_loads += request.task_id != self._loaded_task
            self._loaded_task = request.task_id
            reset = self._env.reset(task_id=request.task_id, init_state=request.init_state)
            episode = self._new_episode(request, reset, want_frames, restarts=0, label="serial env")
            while not episode.done:
                if episode.needs_inference():
                    self._infer([episode])
                    if episode.done:  # the policy's chunk was rejected and the episode marked failed
                        break
                action, want_observation = episode.next_action()
                started = time.perf_counter()
                episode.record_step(self._env.step(action, want_observation))
                self.stats.seconds["stepping_envs"] += time.perf_counter() - started
                self.stats.count_steps()
            self.stats.episodes += 1
            yield episode.finish()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self._loaded_task = None
