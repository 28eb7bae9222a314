"""CFG pieces on a real tiny pi0: the guidance formula for both bases, and the null anchor (zero at the start, a
gradient that reaches the weights once the policy has moved away from its anchor)."""

import copy

import pytest
import torch

from pi0.ript.algo.bc import collect_demonstrations, make_reach_policy
from pi0.ript.algo.cfg import NEGATIVE, NULL, POSITIVE, guided_velocity
from pi0.ript.algo.rl_policy import RLPolicy
from pi0.ript.env.reach_sim import ReachEnvSpec

IMAGE_SIZE, CHUNK = 28, 5


def test_guidance_formula_for_both_bases():
    v_pos, v_null, v_neg = torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([2.0])
    assert guided_velocity(v_pos, v_null, 2.0).item() == 1.0 + 2.0 * (3.0 - 1.0)
    assert guided_velocity(v_pos, v_null, 2.0, v_neg).item() == 1.0 + 2.0 * (3.0 - 2.0)


@pytest.fixture(scope="module")
def batch():
    spec = ReachEnvSpec(image_size=IMAGE_SIZE)
    demos = collect_demonstrations(spec, range(3), range(1), CHUNK, 10)
    torch.manual_seed(0)
    policy = make_reach_policy(demos, IMAGE_SIZE, CHUNK, seed=0)
    rl = RLPolicy(policy, "cfg", num_denoise_steps=3, noise_scale=1.0, learn_noise_scale=False, logprob_action_dims=3,
                  replan_steps=CHUNK, guidance_weight=2.0, guidance_base="negative")
    n = 4
    inputs = policy.prepare_batch(demos.observations[:n], demos.instructions[:n])
    actions = torch.randn(n, CHUNK, rl.model.config.max_action_dim)
    noise, time = torch.randn_like(actions), torch.full((n,), 0.5)
    return rl, inputs, actions, noise, time


def test_anchor_gap_is_zero_at_the_start_and_pulls_the_null_back(batch):
    rl, inputs, actions, noise, time = batch
    labels = torch.tensor([POSITIVE, NEGATIVE, NULL, POSITIVE])
    anchor = copy.deepcopy(rl)
    _, _, gap = rl.cfg_loss(inputs, actions, labels, noise, time, prefix_grad=True, anchor=anchor)
    assert gap.abs().max().item() < 1e-10  # zero condition embeddings: the guided velocity is the null one

    # Move the anchor's positive condition: its guided velocity now differs from this policy's null velocity, and
    # the gap's gradient reaches the shared network.
    with torch.no_grad():
        anchor.condition.embedding[POSITIVE] += 0.5
    rl.zero_grad()
    _, _, gap = rl.cfg_loss(inputs, actions, labels, noise, time, prefix_grad=True, anchor=anchor)
    assert gap.min().item() > 1e-6
    gap.sum().backward()
    assert rl.model.action_out_proj.weight.grad.abs().sum().item() > 0
    assert rl.condition.embedding.grad[NULL].abs().sum().item() > 0
    assert rl.condition.embedding.grad[POSITIVE].abs().sum().item() == 0  # the gap reads only the null branch

    # A frozen prefix (expert_only) reuses this policy's prefix cache for the anchor: the same gap, one prefix pass.
    _, _, shared = rl.cfg_loss(inputs, actions, labels, noise, time, prefix_grad=False, anchor=anchor)
    torch.testing.assert_close(shared.detach(), gap.detach(), rtol=1e-5, atol=1e-7)


def test_negative_base_guidance_uses_the_negative_condition(batch):
    rl, inputs, actions, noise, time = batch
    cache = rl.prefix_cache(inputs, with_grad=False)
    x = torch.randn_like(actions)
    with torch.no_grad():
        before = rl.guided_velocity(cache, inputs.state, x, time)
        rl.condition.embedding[NEGATIVE] += 0.5  # only the negative condition changes
        after = rl.guided_velocity(cache, inputs.state, x, time)
        rl.condition.embedding[NEGATIVE] -= 0.5
    assert (after - before).abs().max().item() > 1e-6


def test_stacked_guidance_equals_one_pass_per_condition(batch):
    rl, inputs, actions, noise, time = batch
    cache = rl.prefix_cache(inputs, with_grad=False)
    x = torch.randn_like(actions)
    with torch.no_grad():
        rl.condition.embedding.copy_(torch.randn_like(rl.condition.embedding))
        stacked = rl.guided_velocity(cache, inputs.state, x, time)

        def one(label):
            return rl.model.velocity(cache, inputs.state, x, time, rl.condition(torch.full((x.shape[0],), label)))

        separate = guided_velocity(one(POSITIVE), one(NULL), rl.guidance_weight, one(NEGATIVE))
        rl.condition.embedding.zero_()
    torch.testing.assert_close(stacked, separate, rtol=1e-4, atol=1e-5)
