"""A stochastic flow sampler with a tractable chunk log-probability (pi_RL's "flow-noise" idea).

pi0 integrates the flow ODE dx/dt = v(x, t) from pure noise at t = 1 to the action chunk at t = 0 with Euler steps
(dt = -1/N). That map is deterministic given the initial noise, so a chunk has no usable likelihood. Here each
step also draws Gaussian noise, making it a Gaussian transition x_{k+1} ~ N(mu_theta(x_k, t_k), std_k^2), so the
log-probability of a whole denoising chain is the sum of per-step Gaussian log-densities. The chain is
recorded at rollout time; at update time the same chain is scored under the current weights (`chain_log_prob`),
which gives the PPO ratio. Noise is injected only where `mask` is set (the executed horizon positions and the real
action dimensions), so exactly the stochastic part is scored; masked-out entries follow the plain ODE.

Two transition kinds (`algo.sampler`):

- `additive`: the Euler step x + dt*v plus N(0, sigma^2 |dt|) noise, sigma = `noise_scale`. Simple, but the
  injected noise adds to the spread the policy already gets from its starting noise, and that starting noise, which
  the chain log-probability does not score, keeps deciding most of the outcome, so PPO's credit assignment is weak.
- `ddpm` (the default): the generalised DDIM step (Song et al. 2021) for pi0's interpolant x_t = t*eps + (1-t)*a.
  From the velocity the model's clean-action and noise estimates are a_hat = x - t*v and eps_hat = x + (1-t)*v;
  the next state is x' = (1-t')*a_hat + sqrt(t'^2 - s^2)*eps_hat + s*z with s = eta * s_ddpm, where s_ddpm^2 =
  t'^2 * (1 - ((1-t)*t' / ((1-t')*t))^2) is the ancestral (DDPM posterior) variance and eta = `noise_scale` in
  (0, 1]. It keeps the ODE's marginals (eta = 0 is exactly the Euler step), so the injected noise does not blur the
  actions, and at t = 1 the posterior forgets the starting noise except through a_hat: the chain's randomness is
  the scored part. The last step (t' = 0) is deterministic: x' = a_hat, and carries no log-density.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from pi0.ript.config.algo_schema import SAMPLERS

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B,H,D], t [B]) -> v [B,H,D]


def standard_normal(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) draws from `generator` (a CPU generator: the RL code's only kind), moved to `device`.

    Every random draw of the RL path goes through here. Drawing on the generator's own device and moving the result
    keeps one seed giving the same samples on a CPU and on a GPU (up to floating point), and never asks a CUDA kernel
    to use a CPU generator (which raises). The copy costs microseconds next to a model call.
    """
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=where).to(device=device, dtype=dtype)


Generators = torch.Generator | Sequence[torch.Generator] | None  # one stream for the batch, or one per sample


def normal_draws(
    shape: tuple[int, ...] | torch.Size, generators: Generators, device: torch.device | str, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) of `shape` [B, ...]: from one generator, or row b from generators[b] (CPU generators, one per sample:
    a sample's noise then depends on its own seed only, not on its batch-mates or its place in the batch)."""
    if generators is None or isinstance(generators, torch.Generator):
        return standard_normal(shape, generators, device, dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    rows = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(rows).to(device=device, dtype=dtype)  # one copy to the device for the batch


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


def step_times(num_steps: int) -> list[float]:
    """The Euler times 1 = t_0 > t_1 > ... > t_N = 0 (pi0's convention: noise at t = 1, the action at t = 0)."""
    return [1.0 - k / num_steps for k in range(num_steps)] + [0.0]




def transition(
    x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, scale: torch.Tensor, mask: torch.Tensor, sampler: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (both [B,H,D]) of the Gaussian step from x at time t to t_next < t, given the
    velocity v. The std is zero outside `mask` and wherever the step is deterministic; there the mean is the ODE's."""
    if sampler == "additive":
        return x + (t_next - t) * v, scale * math.sqrt(t - t_next) * mask
    if sampler != "ddpm":
        raise ValueError(f"algo.sampler={sampler!r}: use one of {', '.join(SAMPLERS)}")
    clean, noise = x - t * v, x + (1.0 - t) * v
    if t_next <= 0.0:
        return clean, torch.zeros_like(x)
    kept_noise = (1.0 - t) * t_next / ((1.0 - t_next) * t)  # in [0, 1): 0 at t = 1, where nothing of x is kept
    ddpm_std = t_next * math.sqrt(max(1.0 - kept_noise**2, 0.0))
    # eta is capped at 1 (the ancestral variance); straight through, so a learned eta that overshoots still gets a
    # gradient and can come back (a plain clamp would freeze it above 1).
    eta = scale - (scale - 1.0).clamp(min=0.0).detach()
    std = eta * ddpm_std * mask
    return (1.0 - t_next) * clean + torch.sqrt((t_next**2 - std.pow(2)).clamp_min(0.0)) * noise, std


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Sum of log N(x; mean, std^2) over the entries with std > 0 (the stochastic ones); [B,H,D] -> [B]."""
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    z = (x - mean) / safe_std
    per_element = -0.5 * z.pow(2) - torch.log(safe_std) - 0.5 * math.log(2 * math.pi)
    return (per_element * stochastic).sum(dim=(1, 2))


@torch.no_grad()
def sde_sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    num_steps: int,
    scale: torch.Tensor,
    mask: torch.Tensor,
    generator: Generators = None,
    sampler: str = "ddpm",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a chain from `noise` [B,H,D]. Returns (chain [B, N+1, H, D], per-step log-probs [B, N]); chain[:, -1]
    is the chunk and the chain's log-probability is the sum over steps. `generator`: the step noise's source, one
    for the batch or one per sample (normal_draws)."""
    times = step_times(num_steps)
    scale = scale.to(noise)
    mask = mask.to(noise).expand_as(noise)
    x = noise
    chain, step_log_probs = [x], []
    for k in range(num_steps):
        t = torch.full((noise.shape[0],), times[k], dtype=noise.dtype, device=noise.device)
        mean, std = transition(x, velocity(x, t), times[k], times[k + 1], scale, mask, sampler)
        eps = normal_draws(noise.shape, generator, noise.device, noise.dtype)
        x = mean + std * eps
        step_log_probs.append(gaussian_log_density(x, mean, std))
        chain.append(x)
    return torch.stack(chain, dim=1), torch.stack(step_log_probs, dim=1)


def chain_log_prob(
    velocity: VelocityFn,
    chain: torch.Tensor,
    scale: torch.Tensor,
    mask: torch.Tensor,
    reference_velocity: VelocityFn | None = None,
    sampler: str = "ddpm",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-step log-probabilities [B, N] of a recorded chain [B, N+1, H, D] under `velocity` (differentiable in its
    weights and in `scale`). With `reference_velocity`, also the KL [B] from this policy's transitions to the
    reference policy's on the same states: both are Gaussians with the same std, so KL = sum ||mu - mu_ref||^2 /
    (2 std^2) over the stochastic entries."""
    num_steps = chain.shape[1] - 1
    times = step_times(num_steps)
    scale = scale.to(chain)
    mask = mask.to(chain).expand_as(chain[:, 0])
    step_log_probs = []
    kl = torch.zeros(chain.shape[0], dtype=chain.dtype, device=chain.device) if reference_velocity is not None else None
    for k in range(num_steps):
        x = chain[:, k]
        t = torch.full((chain.shape[0],), times[k], dtype=chain.dtype, device=chain.device)
        mean, std = transition(x, velocity(x, t), times[k], times[k + 1], scale, mask, sampler)
        step_log_probs.append(gaussian_log_density(chain[:, k + 1], mean, std))
        if reference_velocity is not None:
            with torch.no_grad():
                reference_mean, _ = transition(x, reference_velocity(x, t), times[k], times[k + 1], scale, mask, sampler)
            stochastic = std > 0
            gap = (mean - reference_mean) / torch.where(stochastic, std, torch.ones_like(std))
            kl = kl + (gap.pow(2) * 0.5 * stochastic).sum(dim=(1, 2))
    return torch.stack(step_log_probs, dim=1), kl


def stochastic_steps(num_steps: int, sampler: str) -> list[int]:
    """Indices of the steps that draw noise (and so carry a log-density): all of them, except ddpm's last."""
    return list(range(num_steps - 1 if sampler == "ddpm" else num_steps))


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
