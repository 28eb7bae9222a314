"""A stochastic flow sampler with a tractable chunk log-probability (pi_RL's "flow-noise" idea).

pi0 integrates the flow ODE dx/dt = v(x, t) from pure noise at t = 1 to the action chunk at t = 0 with Euler steps
(dt = -1/N). That map is deterministic given the initial noise, so a chunk has no usable likelihood. Here every Euler
step also adds Gaussian noise, making each step a Gaussian transition

    x_{k+1} ~ N(mu_k, sigma^2 |dt|),   mu_k = x_k + dt * v_theta(x_k, t_k),

so the log-probability of a whole denoising chain is the sum of per-step Gaussian log-densities. The chain is
recorded at rollout time; at update time the same chain is scored under the current weights (`chain_log_prob`),
which gives the PPO ratio. Noise is injected only where `mask` is set (the executed horizon positions and the real
action dimensions), so exactly the stochastic part is scored; masked-out entries follow the plain ODE.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B,H,D], t [B]) -> v [B,H,D]


class NoiseScale(nn.Module):
    """Per-action-dimension noise scale sigma (in normalised action units): fixed, or learned through its log."""

    def __init__(self, action_dim: int, init_scale: float, learnable: bool):
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"algo.noise_scale={init_scale}: must be > 0 for a stochastic sampler")
        log_scale = torch.full((action_dim,), math.log(init_scale))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp()


def time_grid(num_steps: int) -> tuple[torch.Tensor, float]:
    """The Euler times t_0 = 1 > ... > t_{N-1} = 1/N and the step dt = -1/N (pi0's convention)."""
    dt = -1.0 / num_steps
    return torch.tensor([1.0 + k * dt for k in range(num_steps)]), dt


def step_std(scale: torch.Tensor, dt: float) -> torch.Tensor:
    """Standard deviation of one transition: sigma * sqrt(|dt|), so the total injected variance is sigma^2."""
    return scale * math.sqrt(abs(dt))


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over masked entries of log N(x; mean, std^2); x, mean [B,H,D], std broadcastable, mask [B,H,D] -> [B]."""
    log_std = torch.log(std).expand_as(x)
    z = (x - mean) / std
    per_element = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    return (per_element * mask).sum(dim=(1, 2))


@torch.no_grad()
def sde_sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    num_steps: int,
    scale: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a chain from `noise` [B,H,D]. Returns (chain [B, N+1, H, D], log-prob [B]); chain[:, -1] is the chunk."""
    times, dt = time_grid(num_steps)
    std = step_std(scale, dt).to(noise)
    mask = mask.to(noise).expand_as(noise)
    x = noise
    chain = [x]
    log_prob = torch.zeros(noise.shape[0], dtype=noise.dtype, device=noise.device)
    for k in range(num_steps):
        t = torch.full((noise.shape[0],), float(times[k]), dtype=noise.dtype, device=noise.device)
        mean = x + dt * velocity(x, t)
        eps = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
        x = mean + std * eps * mask
        log_prob = log_prob + gaussian_log_density(x, mean, std, mask)
        chain.append(x)
    return torch.stack(chain, dim=1), log_prob


def chain_log_prob(
    velocity: VelocityFn,
    chain: torch.Tensor,
    scale: torch.Tensor,
    mask: torch.Tensor,
    reference_velocity: VelocityFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability [B] of a recorded chain [B, N+1, H, D] under `velocity` (differentiable in its weights and in
    `scale`). With `reference_velocity`, also the KL [B] from this policy's transitions to the reference policy's on
    the same states: both are Gaussians with the same std, so KL = sum ||mu - mu_ref||^2 / (2 std^2)."""
    num_steps = chain.shape[1] - 1
    times, dt = time_grid(num_steps)
    std = step_std(scale, dt).to(chain)
    mask = mask.to(chain).expand_as(chain[:, 0])
    log_prob = torch.zeros(chain.shape[0], dtype=chain.dtype, device=chain.device)
    kl = torch.zeros_like(log_prob) if reference_velocity is not None else None
    for k in range(num_steps):
        x = chain[:, k]
        t = torch.full((chain.shape[0],), float(times[k]), dtype=chain.dtype, device=chain.device)
        mean = x + dt * velocity(x, t)
        log_prob = log_prob + gaussian_log_density(chain[:, k + 1], mean, std, mask)
        if reference_velocity is not None:
            with torch.no_grad():
                reference_mean = x + dt * reference_velocity(x, t)
            kl = kl + (((mean - reference_mean) / std).pow(2) * 0.5 * mask).sum(dim=(1, 2))
    return log_prob, kl


def logprob_mask(horizon: int, model_action_dim: int, executed_steps: int, action_dims: int) -> torch.Tensor:
    """[H, D] mask of the entries that are sampled stochastically and scored: the first `executed_steps` horizon
    positions (the ones the env executes before replanning) and the first `action_dims` dimensions (the env's)."""
    if not 1 <= executed_steps <= horizon:
        raise ValueError(f"executed steps {executed_steps}: allowed 1..{horizon} (the chunk size)")
    if not 1 <= action_dims <= model_action_dim:
        raise ValueError(f"algo.logprob_action_dims={action_dims}: allowed 1..{model_action_dim}")
    mask = torch.zeros(horizon, model_action_dim)
    mask[:executed_steps, :action_dims] = 1.0
    return mask
