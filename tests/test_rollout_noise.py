"""train.policy_noise=per_episode: the RL policy draws each sample's starting and step noise from that sample's own
seed, so rollouts do not depend on batch-mates, worker counts or worker restarts. A real tiny pi0 in RLPolicy
(flow-SDE PPO sampling, noise injected at every step), real reach workers."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from conftest import reach_config
from pi0.ript.algo.rl_policy import RLPolicy
from pi0.ript.env.episode import EpisodeRequest
from pi0.ript.env.parallel_runner import PI0LiberoRunner
from pi0.ript.env.reach_sim import ReachEnvSpec
from pi0.ript.policy.pi0_policy import make_tiny_policy
from pi0.ript.success_rate import success_interval

IMAGE, CHUNK = 28, 5


@pytest.fixture(scope="module")
def rl_policy():
    spec = ReachEnvSpec(image_size=IMAGE)
    policy = make_tiny_policy([spec.instruction(t) for t in range(spec.num_tasks())], image_size=IMAGE, chunk_size=CHUNK)
    return RLPolicy(policy, "ppo", num_denoise_steps=3, noise_scale=0.5, learn_noise_scale=False, logprob_action_dims=7,
                    replan_steps=CHUNK, seed=0).eval()


def _observations(n: int):
    spec = ReachEnvSpec(image_size=IMAGE)
    env = spec.make()
    resets = [env.reset(t % spec.num_tasks(), t) for t in range(n)]
    return [r.observation for r in resets], [spec.instruction(t % spec.num_tasks()) for t in range(n)]


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(rl_policy):
    observations, instructions = _observations(3)
    seeds = [11, 12, 13]
    state = rl_policy.generator.get_state()
    together = rl_policy.predict_chunks(observations, instructions, sample_seeds=seeds)
    alone = [rl_policy.predict_chunks(observations[b:b + 1], instructions[b:b + 1], sample_seeds=seeds[b:b + 1]) for b in range(3)]
    assert torch.equal(rl_policy.generator.get_state(), state)  # seeded calls leave the stream alone
    for b in range(3):
        np.testing.assert_allclose(together.extras[b]["chain"], alone[b].extras[0]["chain"], atol=1e-5)
        np.testing.assert_allclose(together.extras[b]["step_log_probs"], alone[b].extras[0]["step_log_probs"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(together.actions[b], alone[b].actions[0], atol=1e-5)
    # The starting noise is what PI0Policy.seeded_noise draws for these seeds (eval and training agree on a seed).
    starts = np.stack([together.extras[b]["chain"][0] for b in range(3)])
    np.testing.assert_array_equal(starts, rl_policy.policy.seeded_noise(seeds).numpy())
    # Step noise is seeded too: same start, different seed later would differ; a different seed differs throughout.
    other = rl_policy.predict_chunks(observations[:1], instructions[:1], sample_seeds=[99])
    assert not np.allclose(other.extras[0]["chain"][1:], together.extras[0]["chain"][1:])
    # Without seeds the batch draws from the policy's generator, in call order.
    rl_policy.predict_chunks(observations, instructions)
    assert not torch.equal(rl_policy.generator.get_state(), state)


def _rollouts(policy, workers: int, kill_after: int | None = None):
    cfg = reach_config(f"task.num_parallel_envs={workers}", f"task.image_size={IMAGE}", "task.max_episode_length=30",
                       f"task.replan_steps={CHUNK}")
    requests = [EpisodeRequest(task_id=t, init_state=0, rollout_index=k, noise_seed=7) for t in range(2) for k in range(3)]
    episodes = {}
    with PI0LiberoRunner(policy, config=cfg) as runner:
        for episode in runner.run_episodes(requests):
            episodes[episode.request_id] = episode
            if kill_after is not None and len(episodes) == kill_after:
                os.kill(runner.worker_pids()[0], signal.SIGKILL)  # dies inside its next episode, which reruns
    return episodes, runner.stats.worker_restarts


def test_rollouts_agree_across_worker_counts_and_a_killed_worker(rl_policy, no_orphans):
    one, _ = _rollouts(rl_policy, 1)
    three, _ = _rollouts(rl_policy, 3)
    killed, restarts = _rollouts(rl_policy, 3, kill_after=1)
    assert restarts >= 1
    rollouts_of_a_context = [one[i].actions for i in range(3)]
    assert not all(np.array_equal(rollouts_of_a_context[0], a) for a in rollouts_of_a_context[1:])  # K rollouts differ
    for other in (three, killed):
        assert other.keys() == one.keys()
        for i, episode in one.items():
            assert other[i].success == episode.success and other[i].actions.shape == episode.actions.shape
            np.testing.assert_allclose(other[i].actions, episode.actions, atol=1e-4)


def test_training_with_per_episode_noise_is_the_same_on_one_or_two_workers(tmp_path):
    """One RIPT iteration (PPO) from a briefly behaviour-cloned tiny pi0 that succeeds now and then: with per_episode
    noise, one worker and two give the same rollouts, advantages, update and evals (the default stream draws in
    call order, so how the runner batches the calls decides its samples)."""
    from pi0.ript.algo.bc import behaviour_clone, collect_demonstrations, make_reach_policy
    from pi0.ript.algo.trainer import train

    spec = ReachEnvSpec(image_size=IMAGE)
    demos = collect_demonstrations(spec, range(2), range(10), chunk_size=CHUNK, max_steps=20, seed=0)
    policy = make_reach_policy(demos, image_size=IMAGE, chunk_size=CHUNK, seed=0, variant="pi0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count changes float reduction order
    try:
        behaviour_clone(policy, demos, steps=40, seed=0)
        policy.save_pretrained(tmp_path / "bc")

        def metrics(workers: int) -> dict:
            out = tmp_path / f"run{workers}"
            cfg = reach_config(f"task.num_parallel_envs={workers}", f"task.image_size={IMAGE}", "task.max_episode_length=20",
                               f"task.replan_steps={CHUNK}", "task.task_ids=[0,1]", f"policy.checkpoint_path={tmp_path / 'bc'}",
                               "algo.rollouts_per_env=4", "algo.num_contexts=2", "algo.num_denoise_steps=3",
                               "algo.dynamic_sampling=false", "train.num_iterations=1", "train.save_checkpoints=false",
                               "train.progress=false", "train.policy_noise=per_episode", f"train.output_dir={out}",
                               "train.eval_at_start=true", "train.eval_every=1", "train.eval_episodes_per_task=4")
            history = train(cfg)["success_history"]
            return {**json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]), "history": history}

        one, two = metrics(1), metrics(2)
    finally:
        torch.set_num_threads(threads)
    assert 0 < one["rollout/success_rate"] < 1 and one["advantage/std"] > 0 and one["update/loss"] != 0  # not a trivial run
    for key in ("rollout/success_rate", "advantage/mean", "advantage/std", "update/loss", "update/approx_kl", "update/grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-6), key
    # The evals (before and after the update, eval_seed per episode) agree too, each rate with its 95% interval.
    assert [h["eval_success_rate"] for h in two["history"]] == [h["eval_success_rate"] for h in one["history"]]
    assert len(one["history"]) == 2
    for entry in one["history"]:
        successes = round(entry["eval_success_rate"] * 8)
        assert entry["eval_success_rate_ci95"] == success_interval(successes, 8)
