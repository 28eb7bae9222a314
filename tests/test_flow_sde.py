"""The stochastic flow sampler: its log-probabilities are exact Gaussian densities, recomputation reproduces them,
gradients reach the velocity and the noise scale, and the KL to a reference is zero only for the same policy."""

import math

import torch
from torch import nn

from pi0.ript.algo.flow_sde import NoiseScale, chain_log_prob, logprob_mask, sde_sample, time_grid


class LinearVelocity(nn.Module):
    """v(x, t) = W x + b t: a tiny differentiable stand-in for the expert (the maths is what is under test here)."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x, t):
        return self.linear(x) + t[:, None, None]


def test_log_prob_is_the_sum_of_step_gaussians():
    velocity = LinearVelocity(4, 0)
    mask = logprob_mask(horizon=3, model_action_dim=4, executed_steps=2, action_dims=3)
    scale = torch.full((4,), 0.5)
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    chain, log_prob = sde_sample(velocity, noise, 4, scale, mask, torch.Generator().manual_seed(1))
    assert chain.shape == (2, 5, 3, 4)
    times, dt = time_grid(4)
    expected = torch.zeros(2)
    with torch.no_grad():
        for k in range(4):
            mean = chain[:, k] + dt * velocity(chain[:, k], torch.full((2,), float(times[k])))
            dist = torch.distributions.Normal(mean, 0.5 * math.sqrt(abs(dt)))
            expected += (dist.log_prob(chain[:, k + 1]) * mask).sum(dim=(1, 2))
            # Unmasked entries follow the plain ODE step exactly.
            torch.testing.assert_close(chain[:, k + 1][:, mask == 0], mean[:, mask == 0])
    torch.testing.assert_close(log_prob, expected)
    recomputed, kl = chain_log_prob(velocity, chain, scale, mask)
    torch.testing.assert_close(recomputed, log_prob)
    assert kl is None


def test_injected_noise_has_the_configured_total_variance():
    zero_velocity = lambda x, t: torch.zeros_like(x)  # noqa: E731
    mask = torch.ones(1, 1)
    chain, _ = sde_sample(zero_velocity, torch.zeros(20000, 1, 1), 10, torch.tensor([0.3]), mask, torch.Generator().manual_seed(0))
    assert abs(chain[:, -1].std().item() - 0.3) < 0.01


def test_gradients_reach_weights_and_learned_scale_and_kl_penalises_drift():
    velocity, reference = LinearVelocity(4, 0), LinearVelocity(4, 0)
    scale = NoiseScale(4, 0.3, learnable=True)
    mask = logprob_mask(3, 4, 3, 4)
    chain, _ = sde_sample(velocity, torch.randn(2, 3, 4), 5, scale().detach(), mask)
    log_prob, kl = chain_log_prob(velocity, chain, scale(), mask, reference_velocity=reference)
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
