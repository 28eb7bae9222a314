"""The clipped PPO objective (Schulman et al. 2017) on flow-sampler log-probabilities, as a small function."""

from __future__ import annotations

import torch


def ppo_loss(
    new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample clipped surrogate [B] (to be summed/averaged by the caller) and per-sample diagnostics: `clipped`
    (the fraction of ratios that left [1-eps, 1+eps]) and `approx_kl` ((r - 1) - log r, Schulman's low-variance
    estimator of KL(old || new)).

    Log-probabilities are [B] (one ratio per chunk: the whole denoising chain) or [B, S] (one ratio per denoising
    step, each clipped on its own and averaged, as Flow-GRPO does; the chain's ratio is the product of S step ratios,
    so it leaves the clip range far more often than any one of them)."""
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    adv = advantages if ratio.dim() == 1 else advantages[:, None]
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps))
    with torch.no_grad():
        stats = {
            "clipped": ((ratio - 1.0).abs() > clip_eps).float(),
            "approx_kl": (ratio - 1.0) - log_ratio,
            "ratio": ratio,
        }
    if ratio.dim() == 2:
        loss = loss.mean(dim=1)
        stats = {key: value.mean(dim=1) for key, value in stats.items()}
    return loss, stats
