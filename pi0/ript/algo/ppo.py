"""The clipped PPO objective on chunk log-probabilities (Schulman et al. 2017), as a small function."""

from __future__ import annotations

import torch


def ppo_loss(
    new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample clipped surrogate (to be summed/averaged by the caller) and diagnostics (also per sample):
    `clipped` (1 where the ratio left [1-eps, 1+eps]) and `approx_kl` ((r - 1) - log r, Schulman's low-variance
    estimator of KL(old || new))."""
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        stats = {
            "clipped": ((ratio - 1.0).abs() > clip_eps).float(),
            "approx_kl": (ratio - 1.0) - log_ratio,
            "ratio": ratio,
        }
    return loss, stats
