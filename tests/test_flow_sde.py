"""The stochastic flow sampler: its log-probabilities are exact Gaussian densities, recomputation reproduces them,
gradients reach the velocity and the noise scale, the KL to a reference is zero only for the same policy, and the
ddpm step keeps the flow's marginals while forgetting the starting noise."""

import math

import pytest
import torch
from torch import nn

from pi0.ript.algo.flow_sde import NoiseScale, chain_log_prob, logprob_mask, sde_sample, step_times, stochastic_steps


class LinearVelocity(nn.Module):
    """v(x, t) = W x + b t: a tiny differentiable stand-in for the expert (the maths is what is under test here)."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x, t):
        return self.linear(x) + t[:, None, None]


def expected_step(x, v, t, t_next, scale, sampler):
    """Mean and std of one step, written out from the formulas in flow_sde's docstring (scalar scale)."""
    if sampler == "additive":
        return x + (t_next - t) * v, scale * math.sqrt(t - t_next)
    clean, noise = x - t * v, x + (1 - t) * v
    if t_next == 0:
        return clean, 0.0
    ddpm_var = t_next**2 * (1 - ((1 - t) * t_next / ((1 - t_next) * t)) ** 2)
    std = scale * math.sqrt(ddpm_var)
    return (1 - t_next) * clean + math.sqrt(t_next**2 - std**2) * noise, std


@pytest.mark.parametrize("sampler", ["ddpm", "additive"])
def test_log_prob_is_the_sum_of_step_gaussians(sampler):
    velocity = LinearVelocity(4, 0)
    mask = logprob_mask(horizon=3, model_action_dim=4, executed_steps=2, action_dims=3)
    scale = torch.full((4,), 0.5)
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    chain, step_log_probs = sde_sample(velocity, noise, 4, scale, mask, torch.Generator().manual_seed(1), sampler)
    assert chain.shape == (2, 5, 3, 4) and step_log_probs.shape == (2, 4)
    assert stochastic_steps(4, sampler) == ([0, 1, 2] if sampler == "ddpm" else [0, 1, 2, 3])
    times = step_times(4)
    assert times == [1.0, 0.75, 0.5, 0.25, 0.0]
    expected = torch.zeros(2, 4)
    with torch.no_grad():
        for k in range(4):
            v = velocity(chain[:, k], torch.full((2,), times[k]))
            mean, std = expected_step(chain[:, k], v, times[k], times[k + 1], 0.5, sampler)
            if std > 0:
                dist = torch.distributions.Normal(mean, std)
                expected[:, k] = (dist.log_prob(chain[:, k + 1]) * mask).sum(dim=(1, 2))
            # Unmasked entries follow the plain ODE (Euler) step exactly.
            euler = chain[:, k] + (times[k + 1] - times[k]) * v
            torch.testing.assert_close(chain[:, k + 1][:, mask == 0], euler[:, mask == 0])
    assert torch.all(step_log_probs[:, stochastic_steps(4, sampler)] != 0)
    torch.testing.assert_close(step_log_probs, expected)
    recomputed, kl = chain_log_prob(velocity, chain, scale, mask, sampler=sampler)
    torch.testing.assert_close(recomputed, step_log_probs)
    assert kl is None


def test_additive_noise_has_the_configured_total_variance():
    zero_velocity = lambda x, t: torch.zeros_like(x)  # noqa: E731
    mask = torch.ones(1, 1)
    scale = torch.tensor([0.3])
    chain, _ = sde_sample(zero_velocity, torch.zeros(20000, 1, 1), 10, scale, mask, torch.Generator().manual_seed(0), "additive")
    assert abs(chain[:, -1].std().item() - 0.3) < 0.01


def gaussian_data_velocity(mean: float, std: float):
    """The exact flow velocity E[eps - a | x_t] when the data is a ~ N(mean, std^2) (x_t = t*eps + (1-t)*a)."""

    def velocity(x, t):
        t = t[:, None, None]
        variance = t**2 + (1 - t) ** 2 * std**2
        centred = x - (1 - t) * mean
        return t * centred / variance - (mean + (1 - t) * std**2 * centred / variance)

    return velocity


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddpm_keeps_the_marginals_and_forgets_the_starting_noise(eta):
    """With the exact velocity of Gaussian data, ddpm chains end on the data distribution whatever eta (the additive
    sampler would widen it by its sigma); at eta = 1 the end is independent of the starting noise."""
    velocity = gaussian_data_velocity(mean=0.5, std=0.2)
    start = torch.randn(20000, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = torch.tensor([eta], dtype=torch.float64)
    # 200 steps: Euler's own discretisation error (the plain ODE too ends at std 0.156 with 10 steps) stays < 0.01.
    chain, _ = sde_sample(velocity, start, 200, scale, torch.ones(1, 1), torch.Generator().manual_seed(1))
    end = chain[:, -1].flatten()
    assert abs(end.mean().item() - 0.5) < 0.01 and abs(end.std().item() - 0.2) < 0.01
    correlation = torch.corrcoef(torch.stack([start.flatten(), end]))[0, 1].item()
    if eta == 1.0:
        assert abs(correlation) < 0.03
    else:
        assert correlation > 0.1  # eta < 1 keeps part of the starting noise


def test_gradients_reach_weights_and_learned_scale_and_kl_penalises_drift():
    velocity, reference = LinearVelocity(4, 0), LinearVelocity(4, 0)
    scale = NoiseScale(4, 0.3, learnable=True)
    mask = logprob_mask(3, 4, 3, 4)
    chain, _ = sde_sample(velocity, torch.randn(2, 3, 4), 5, scale().detach(), mask)
    step_log_probs, kl = chain_log_prob(velocity, chain, scale(), mask, reference_velocity=reference)
    log_prob = step_log_probs.sum(dim=1)
    assert torch.all(log_prob != 0)
    torch.testing.assert_close(kl, torch.zeros(2))
    log_prob.sum().backward()
    assert velocity.linear.weight.grad.abs().sum() > 0 and scale.log_scale.grad.abs().sum() > 0
    with torch.no_grad():
        velocity.linear.weight.add_(0.1)
    _, kl = chain_log_prob(velocity, chain, scale(), mask, reference_velocity=reference)
    assert torch.all(kl > 0)


def test_fixed_scale_is_a_buffer():
    scale = NoiseScale(4, 0.3, learnable=False)
    assert not list(scale.parameters()) and "log_scale" in scale.state_dict()
