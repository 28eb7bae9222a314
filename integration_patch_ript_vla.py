#!/usr/bin/env python
"""The programmatic integration example from the user's guide, runnable:

    python integration_patch_ript_vla.py [--config pi0/ript/config/ript_vla_test.yaml] [key=value ...]

A training script needs only `create_env_runner` (it reads `features.use_ript_vla_runner`) and the runner's
`run_policy_in_env` generator. This script builds the configured policy, creates the runner and collects one
group of rollouts, printing what a training loop would receive.
"""

from __future__ import annotations

import argparse

from pi0.ript.config.schema import load_config
from pi0.ript.env import create_env_runner  # the guide's create_env_runner(config, policy, rank=0, world_size=1)
from pi0.ript.policy.loading import load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description="collect one group of rollouts through create_env_runner")
    parser.add_argument("--config", "--config_path", dest="config", default="pi0/ript/config/ript_vla_test.yaml")
    parser.add_argument("overrides", nargs="*", default=["task.max_episode_length=10"])
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    policy, _ = load_policy(config)
    with create_env_runner(config, policy, rank=0, world_size=1) as runner:
        print(f"runner: {type(runner).__name__} with {runner.num_parallel_envs} env(s), tasks {runner.task_ids}")
        for success, total_reward, episode in runner.run_policy_in_env(runner.task_ids[0]):
            print(
                f"task {episode.task_id} init state {episode.init_state_index}: success={success} "
                f"reward={total_reward:.1f} steps={episode.steps} policy calls={len(episode.inference)}"
            )
        print(runner.stats.as_dict())


if __name__ == "__main__":
    main()
