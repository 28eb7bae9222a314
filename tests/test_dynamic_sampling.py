"""Dynamic sampling: drops no-signal groups, replaces them, always ends, counts drops, remembers solved states."""

import torch

from pi0.ript.algo.dynamic_sampling import ContextSampler, has_signal, sample_groups

CONTEXTS = [(task, index) for task in range(2) for index in range(10)]


def rollout_with(outcome):
    """A rollout function whose K=4 rewards per context come from `outcome(context)`; counts calls."""
    calls = []

    def rollout(contexts):
        calls.append(list(contexts))
        return [(["episode"] * 4, torch.tensor(outcome(c), dtype=torch.float32)) for c in contexts]

    return rollout, calls


def test_has_signal():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert has_signal(rewards).tolist() == [False, False, True]


def test_keeps_mixed_groups_and_replaces_uniform_ones():
    # Even init indices: mixed outcomes; odd: all succeed.
    rollout, calls = rollout_with(lambda c: [1, 0, 1, 0] if c[1] % 2 == 0 else [1, 1, 1, 1])
    result = sample_groups(ContextSampler(CONTEXTS, seed=0), rollout, num_contexts=4, enabled=True, max_rounds=10)
    assert len(result.kept) == 4 and all(c[1] % 2 == 0 for c, _, _ in result.kept)
    assert result.dropped == result.dropped_all_success == sum(len(x) for x in calls) - 4
    assert result.rounds == len(calls)


def test_ends_when_every_rollout_succeeds_or_fails():
    for outcome, attr in (([1, 1, 1, 1], "dropped_all_success"), ([0, 0, 0, 0], "dropped_all_failure")):
        rollout, calls = rollout_with(lambda c: outcome)
        result = sample_groups(ContextSampler(CONTEXTS, seed=0), rollout, num_contexts=4, enabled=True, max_rounds=3)
        assert result.kept == [] and len(calls) == 3 and getattr(result, attr) == 12 and len(result.all_rewards) == 12


def test_disabled_keeps_everything_in_one_round():
    rollout, calls = rollout_with(lambda c: [1, 1, 1, 1])
    result = sample_groups(ContextSampler(CONTEXTS, seed=0), rollout, num_contexts=4, enabled=False, max_rounds=3)
    assert len(result.kept) == 4 and len(calls) == 1 and result.dropped == 0


def test_success_memory_skips_solved_contexts_and_survives_state_dict():
    sampler = ContextSampler(CONTEXTS, seed=1, success_memory_size=100)
    rollout, _ = rollout_with(lambda c: [1, 1, 1, 1] if c[0] == 0 else [0, 1, 0, 1])
    for _ in range(5):
        sample_groups(sampler, rollout, num_contexts=4, enabled=True, max_rounds=3)
    solved = set(sampler.solved)
    assert solved and all(c[0] == 0 for c in solved)
    assert not solved & set(sampler.draw(5))
    restored = ContextSampler(CONTEXTS, seed=99, success_memory_size=100)
    restored.load_state_dict(sampler.state_dict())
    assert restored.draw(6) == sampler.draw(6)


def test_all_solved_falls_back_to_every_context():
    sampler = ContextSampler(CONTEXTS[:2], seed=0, success_memory_size=10)
    for c in CONTEXTS[:2]:
        sampler.remember_solved(c)
    assert len(sampler.draw(3)) == 3
