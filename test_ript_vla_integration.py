#!/usr/bin/env python
"""Integration check from the user's guide: config loading, runner creation, the subprocess envs, rollout collection
with a correct episode format and the training-loop interface, on real LIBERO. Exits non-zero on any failure.

    python test_ript_vla_integration.py [--config pi0/ript/config/ript_vla_test.yaml]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import numpy as np

CONFIG = "pi0/ript/config/ript_vla_test.yaml"
# Short episodes keep the check to about a minute on a CPU; the config's own values are used by real runs.
QUICK = ["task.task_ids=[0]", "task.max_episode_length=10", "algo.rollouts_per_env=2"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "--config_path", dest="config", default=CONFIG)
    args = parser.parse_args()
    checks: list[tuple[str, bool, str]] = []

    def check(name, fn):
        started = time.perf_counter()
        try:
            detail = fn() or ""
            checks.append((name, True, detail))
            print(f"✅ {name} ({time.perf_counter() - started:.1f} s) {detail}")
            return True
        except Exception as exc:  # report every failing check, then exit non-zero
            checks.append((name, False, str(exc)))
            print(f"❌ {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            return False

    state: dict = {}

    def load():
        from pi0.ript.config.schema import load_config

        state["cfg"] = cfg = load_config(args.config, QUICK)
        assert cfg.features.use_ript_vla_runner is True, "features.use_ript_vla_runner should be true in the test config"
        return f"{cfg.task.benchmark_name}, {cfg.task.num_parallel_envs} parallel envs"

    def create():
        from pi0.ript.env import create_env_runner
        from pi0.ript.env.pi0_libero_runner_ript_vla import PI0LiberoRunner
        from pi0.ript.policy.loading import load_policy

        policy, description = load_policy(state["cfg"])
        state["runner"] = runner = create_env_runner(state["cfg"], policy)
        assert isinstance(runner, PI0LiberoRunner), type(runner).__name__
        return f"policy: {description['kind']}"

    def subprocess_envs():
        runner = state["runner"]
        workers = runner.start_workers()
        for worker in workers:
            worker.wait_started(timeout=300)
        pids = runner.worker_pids()
        assert len(set(pids)) == runner.num_parallel_envs and all(p.process.is_alive() for p in workers)
        return f"worker pids {pids}"

    def rollouts():
        runner = state["runner"]
        outputs = list(runner.run_policy_in_env(runner.task_ids[0]))
        assert len(outputs) == runner.rollouts_per_env
        state["outputs"] = outputs
        return f"{len(outputs)} episodes, successes {[o[0] for o in outputs]}"

    def episode_format():
        from pi0.ript.env.episode import Episode
        from pi0.ript.env.sim import OBS_KEYS

        for success, total_reward, episode in state["outputs"]:
            assert isinstance(episode, Episode) and isinstance(success, bool) and isinstance(total_reward, float)
            assert episode.steps == len(episode.actions) > 0
            record = episode.inference[0]
            assert set(record.observation) == set(OBS_KEYS), sorted(record.observation)
            assert record.observation["agentview_image"].dtype == np.uint8 and record.chunk.shape[1] == 7
            assert episode.instruction and episode.task_name
        assert len({e.init_state_index for _, _, e in state["outputs"]}) == len(state["outputs"]), "init states must differ"

    def interface():
        import inspect

        from pi0.ript.env.pi0_libero_runner import LIBEROEnvRunner
        from pi0.ript.env.pi0_libero_runner_ript_vla import PI0LiberoRunner

        for cls in (PI0LiberoRunner, LIBEROEnvRunner):
            params = inspect.signature(cls.run_policy_in_env).parameters
            assert {"env_name", "all_init_states", "created_env"} <= set(params), f"{cls.__name__}: {list(params)}"
        runner = state["runner"]
        env = runner.create_env(runner.task_ids[0])
        outputs = list(runner.run_policy_in_env(runner.task_ids[0], all_init_states=[3], created_env=env))
        assert len(outputs) == 1 and outputs[0][2].init_state_index == 3

    try:
        for name, fn in [
            ("config loading", load),
            ("runner creation", create),
            ("subprocess envs", subprocess_envs),
            ("rollout collection", rollouts),
            ("episode format", episode_format),
            ("training-loop interface", interface),
        ]:
            if not check(name, fn):
                break
    finally:
        if "runner" in state:
            state["runner"].close()
    failed = [name for name, ok, _ in checks if not ok]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or len(checks) < 6 else 0


if __name__ == "__main__":
    sys.exit(main())
