"""Advantage-conditioned flow matching with classifier-free guidance (CFGRL, Frans et al. 2025).

The policy is trained with the ordinary flow-matching loss, but conditioned on whether the rollout beat its group
(advantage > 0: "positive", else "negative"), with the condition dropped (replaced by "null") at a fixed rate so the
same network also stays the unconditional policy. At sampling time the guided velocity
v = v_null + w * (v_positive - v_base) pushes samples towards better-than-average behaviour. With base = the null
condition (`algo.cfg_guidance_base=unconditional`) this is CFGRL's guidance (w = 1: the positive policy). With base = negative (the default) the guidance term is the difference
of two branches that both refit the policy's own samples, so what they share (drift from self-imitation) cancels and
what separates good from bad chunks remains; Bayes' rule makes it proportional to the gradient of log p(better | a).

Refitting its own samples also moves the null branch. The trainer therefore adds a pull (`algo.cfg_null_anchor`)
of the null velocity towards a frozen policy's sampling velocity: the policy that sampled this iteration's
rollouts, so each iteration the null becomes the last guided policy (improvements accumulate), or the start.
On the CPU demo this anchor is what turned CFG from flat or falling into a lift: +8 to +24 points over three
training seeds (docs/TRAINING.md).

The condition enters pi0 as an additive bias on every action token (`PI0Model.velocity(..., action_token_bias)`).
Embeddings start at zero, so before any update every condition is exactly the pretrained policy.

pi0.5 keeps the same mechanism unchanged, because it never depended on pi0's state token: the bias is added to the
action tokens only (in pi0 after its action-time MLP, the state token untouched). pi0.5 has no state token and its
action tokens are `action_in_proj(x_t)`; the same learned [width] vector is added to each of them before the expert,
and the flow time then modulates the biased tokens through the expert's adaRMS norms (as it modulates pi0's through the action-time MLP before the bias). A zero
bias is still exactly the unconditioned model (tests/test_pi05_model.py checks this and that a bias is read).
"""

from __future__ import annotations

import torch
from torch import nn

NULL, POSITIVE, NEGATIVE = 0, 1, 2


class AdvantageCondition(nn.Module):
    """Three learned [width] biases: null (index 0), positive (1), negative (2), all initialised to zero."""

    def __init__(self, width: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(3, width))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding[labels]


def condition_labels(advantages: torch.Tensor, dropout: float, generator: torch.Generator | None) -> torch.Tensor:
    """[B] advantages -> [B] labels: POSITIVE where A > 0 else NEGATIVE, replaced by NULL with probability `dropout`.
    The dropout draw is on `generator`'s device (the trainer's CPU generator); the labels follow `advantages`."""
    labels = torch.where(advantages > 0, POSITIVE, NEGATIVE)
    where = generator.device if generator is not None else torch.device("cpu")
    drop = (torch.rand(advantages.shape, generator=generator, device=where) < dropout).to(advantages.device)
    return torch.where(drop, torch.full_like(labels, NULL), labels)


def flow_matching_targets(
    actions: torch.Tensor, noise: torch.Tensor, time: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """pi0's interpolation x_t = t * noise + (1 - t) * actions and its target velocity u = noise - actions."""
    t = time[:, None, None]
    return t * noise + (1.0 - t) * actions, noise - actions


def cfg_flow_loss(predicted_velocity: torch.Tensor, target_velocity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample masked mean squared error [B] (the flow-matching loss on the entries that matter)."""
    mask = mask.to(predicted_velocity).expand_as(predicted_velocity)
    squared = (predicted_velocity - target_velocity).pow(2) * mask
    return squared.sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(1.0)


def guided_velocity(
    v_positive: torch.Tensor, v_null: torch.Tensor, weight: float, v_negative: torch.Tensor | None = None
) -> torch.Tensor:
    """v_null + w (v_positive - v_base), the base being the null condition or (given) the negative one."""
    base = v_null if v_negative is None else v_negative
    return v_null + weight * (v_positive - base)
