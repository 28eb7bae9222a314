"""Leave-one-out advantages."""

import pytest
import torch

from pi0.ript.algo.rloo import rloo_advantages


def test_matches_definition():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    advantages = rloo_advantages(rewards)
    for c in range(2):
        for k in range(4):
            others = torch.cat([rewards[c, :k], rewards[c, k + 1 :]])
            assert advantages[c, k] == pytest.approx(float(rewards[c, k] - others.mean()))


def test_uniform_groups_have_zero_advantage_and_groups_sum_to_zero():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.3, 2.0, -1.0]])
    advantages = rloo_advantages(rewards)
    assert torch.all(advantages[:2] == 0)
    assert torch.allclose(advantages.sum(dim=1), torch.zeros(3), atol=1e-6)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="rollouts_per_env"):
        rloo_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="shape"):
        rloo_advantages(torch.ones(3))
