"""The clipped PPO surrogate, per chain ([B] log-probabilities) and per denoising step ([B, S])."""

import math

import torch

from pi0.ript.algo.ppo import ppo_loss


def test_unchanged_policy_gives_minus_advantage_and_no_clipping():
    old = torch.tensor([-3.0, -5.0])
    loss, stats = ppo_loss(old.clone(), old, torch.tensor([0.5, -0.5]), clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor([-0.5, 0.5]))
    assert stats["clipped"].sum() == 0 and torch.allclose(stats["approx_kl"], torch.zeros(2))


def test_ratio_beyond_the_clip_stops_the_gradient_in_the_advantage_direction():
    old = torch.zeros(2)
    new = torch.tensor([math.log(1.5), math.log(0.5)], requires_grad=True)
    advantages = torch.tensor([1.0, 1.0])
    loss, stats = ppo_loss(new, old, advantages, clip_eps=0.2)
    loss.sum().backward()
    # Sample 0 already gained 50% > 20%: clipped, no gradient. Sample 1 lost probability: the unclipped term rules.
    torch.testing.assert_close(loss, torch.tensor([-1.2, -0.5]))
    assert new.grad[0] == 0 and new.grad[1] < 0
    torch.testing.assert_close(stats["clipped"], torch.tensor([1.0, 1.0]))


def test_per_step_ratios_are_clipped_one_by_one_and_averaged():
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(1.1), math.log(1.1), math.log(1.1)]], requires_grad=True)
    advantage = torch.tensor([2.0])
    step_loss, step_stats = ppo_loss(new, old, advantage, clip_eps=0.2)
    # Each step ratio 1.1 is inside the clip; the chain ratio 1.1^3 = 1.331 is not.
    torch.testing.assert_close(step_loss, torch.tensor([-2.2]))
    assert step_stats["clipped"].item() == 0
    chain_loss, chain_stats = ppo_loss(new.sum(dim=1), old.sum(dim=1), advantage, clip_eps=0.2)
    torch.testing.assert_close(chain_loss, torch.tensor([-2.4]))
    assert chain_stats["clipped"].item() == 1
    step_loss.sum().backward()
    assert torch.all(new.grad < 0)
