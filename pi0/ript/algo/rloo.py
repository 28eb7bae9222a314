"""Leave-one-out (RLOO) advantages: each rollout is compared with the mean reward of the other K-1 rollouts of the
same context, an unbiased baseline that needs no value network (Kool et al. 2019; RIPT-VLA)."""

from __future__ import annotations

import torch


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """`rewards` [C, K] (C contexts, K rollouts each) -> advantages [C, K], A_ck = r_ck - mean_{j != k} r_cj."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards shape {tuple(rewards.shape)}: expected [contexts, rollouts_per_env]")
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"rollouts_per_env={k}: leave-one-out needs at least 2 rollouts per context")
    rewards = rewards.to(torch.float64)
    mean_of_others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return (rewards - mean_of_others).to(torch.float32)
