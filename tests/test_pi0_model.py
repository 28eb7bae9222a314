"""pi0 model: numerical match with LeRobot's reference, full-size names/shapes, shapes, batching, caching, BC."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pi0.model.checkpoint import load_model
from pi0.model.config import PI0Config
from pi0.model.modeling import PI0Model
from pi0.ript.policy.pi0_policy import make_tiny_policy
from tests.pi0_fixtures import INSTRUCTIONS, make_obs, one_thread, require_reference

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread  # imported so pytest sees the fixture in this module


def _io_args(io):
    images = [io[f"image_{i}"] for i in range(3)]
    masks = [io[f"image_mask_{i}"] for i in range(3)]
    return images, masks, io["tokens"], io["lang_masks"], io["state"]


def test_reproduces_lerobot_reference_chunk_and_loss():
    ref = require_reference() / "lerobot_tiny"
    cfg = PI0Config.from_dims_json(ref / "dims.json")
    model = load_model(ref, config=cfg)  # our loader, LeRobot's parameter names
    io = load_file(str(ref / "io.safetensors"))
    args = _io_args(io)
    with torch.inference_mode():
        chunk = model.sample_actions(*args, noise=io["noise"])
        loss = model.flow_matching_loss(*args, io["actions"], noise=io["noise"], time=io["time"])
    torch.testing.assert_close(chunk, io["sampled_chunk"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, io["loss"], rtol=1e-4, atol=1e-4)


def test_full_size_model_matches_reference_names_and_shapes():
    ref = require_reference() / "lerobot_pi0_state_dict_shapes.json"
    expected = json.loads(ref.read_text())["keys"]
    # lm_head entries are skipped on purpose (pi0 computes no logits; the loader drops them, see checkpoint.py).
    expected = {k: list(v) for k, v in expected.items() if not k.endswith("lm_head.weight")}
    with torch.device("meta"):
        model = PI0Model(PI0Config.full())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert got == expected


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56)


@pytest.fixture(scope="module")
def batch(tiny):
    rng = np.random.default_rng(0)
    obs = [make_obs(rng, 64) for _ in range(3)]
    return tiny.prepare_batch(obs, INSTRUCTIONS[:3])


def test_shapes(tiny, batch):
    c = tiny.config
    assert [tuple(i.shape) for i in batch.images] == [(3, 3, 56, 56)] * 3
    assert batch.tokens.shape == (3, c.max_token_len) and batch.state.shape == (3, 32)
    m = tiny.model
    with torch.inference_mode():
        cache = m.compute_prefix_cache(*batch.model_args()[:4])
        # Right-wrist slot is masked for every sample, so it is left out: 2 images of (56/14)^2 tokens + 48.
        assert cache.pad_mask.shape == (3, 2 * 16 + 48)
        assert cache.keys[0].shape == (3, 1, 2 * 16 + 48, 16)
        v = m.velocity(cache, batch.state, torch.zeros(3, 50, 32), 0.5)
        assert v.shape == (3, 50, 32) and v.dtype == torch.float32
        chunk, traj = m.sample_actions(*batch.model_args(), num_steps=4, return_trajectory=True)
    assert chunk.shape == (3, 50, 32) and traj.shape == (3, 5, 50, 32)
    torch.testing.assert_close(traj[:, -1], chunk)
    observations = [make_obs(np.random.default_rng(1), 64)] * 2
    out = tiny.predict_chunks(observations, INSTRUCTIONS[:2])
    assert out.actions.shape == (2, 50, 7) and out.extras == [{}, {}]  # extras only when asked for
    tiny.record_extras = True
    out = tiny.predict_chunks(observations, INSTRUCTIONS[:2])
    assert out.extras[0]["noise"].shape == out.extras[0]["model_actions"].shape == (50, 32)
    assert out.extras[1]["raw_state"].shape == (8,)


def test_batched_equals_per_sample(tiny, batch):
    noise = torch.randn(3, 50, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = tiny.model.sample_actions(*batch.model_args(), noise=noise)
        for b in range(3):
            one = batch.index_select(torch.tensor([b]))
            single = tiny.model.sample_actions(*one.model_args(), noise=noise[b : b + 1])
            torch.testing.assert_close(single[0], full[b], rtol=1e-5, atol=1e-5)


def test_cached_prefix_equals_uncached(tiny, batch):
    m = tiny.model
    x_t = torch.randn(3, 50, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.5, 0.1])
    bias = torch.randn(3, m.config.expert.width, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        cache = m.compute_prefix_cache(*batch.model_args()[:4])
        for b in (None, bias):
            cached = m.velocity(cache, batch.state, x_t, t, action_token_bias=b)
            uncached = m.velocity_uncached(*batch.model_args(), x_t, t, action_token_bias=b)
            torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)
        zero = m.velocity(cache, batch.state, x_t, t, action_token_bias=torch.zeros_like(bias))
        torch.testing.assert_close(zero, m.velocity(cache, batch.state, x_t, t))
        assert not torch.allclose(m.velocity(cache, batch.state, x_t, t, action_token_bias=bias), zero)


def test_seeded_sampling_is_reproducible():
    rng = np.random.default_rng(3)
    obs = [make_obs(rng, 64) for _ in range(2)]
    a = make_tiny_policy(INSTRUCTIONS, seed=7, image_size=56, record_extras=True).predict_chunks(obs, INSTRUCTIONS[:2])
    b = make_tiny_policy(INSTRUCTIONS, seed=7, image_size=56, record_extras=True).predict_chunks(obs, INSTRUCTIONS[:2])
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.extras[1]["noise"], b.extras[1]["noise"])


def test_behaviour_cloning_drives_loss_down():
    pol = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=28)
    rng = np.random.default_rng(0)
    obs = [make_obs(rng, 32) for _ in range(4)]
    inputs = pol.prepare_batch(obs, INSTRUCTIONS[:4])
    # Each observation has its own fixed smooth target chunk (a synthetic expert).
    targets = torch.from_numpy(np.cumsum(rng.normal(scale=0.1, size=(4, 50, 32)), axis=1)).float()
    model = pol.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    eval_noise = torch.randn(4, 50, 32, generator=torch.Generator().manual_seed(9))
    eval_time = torch.tensor([0.2, 0.4, 0.6, 0.8])

    def eval_loss():
        with torch.no_grad():
            return pol.flow_matching_loss(inputs, targets, noise=eval_noise, time=eval_time).mean().item()

    before = eval_loss()
    for _ in range(25):
        loss = model.flow_matching_loss(*inputs.model_args(), targets, generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    model.eval()
    assert after < 0.8 * before, (before, after)


def test_tiny_batch_of_8_is_fast():
    pol = make_tiny_policy(INSTRUCTIONS, seed=0)  # the default tiny: 112 px
    rng = np.random.default_rng(0)
    obs = [make_obs(rng, 128) for _ in range(8)]
    pol.predict_chunks(obs, [INSTRUCTIONS[0]] * 8)  # warm-up
    best = min(_timed(lambda: pol.predict_chunks(obs, [INSTRUCTIONS[0]] * 8)) for _ in range(3))
    assert best < 1.0, best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_bf16_matches_fp32_closely():
    rng = np.random.default_rng(5)
    obs = [make_obs(rng, 32) for _ in range(2)]
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(5))
    fp32 = make_tiny_policy(INSTRUCTIONS, image_size=28).predict_chunks(obs, INSTRUCTIONS[:2], noise=noise).actions
    bf16_pol = make_tiny_policy(INSTRUCTIONS, image_size=28, dtype=torch.bfloat16)
    assert bf16_pol.model.dtype == torch.bfloat16
    bf16 = bf16_pol.predict_chunks(obs, INSTRUCTIONS[:2], noise=noise).actions
    assert np.abs(bf16 - fp32).max() < 0.05 * max(1.0, np.abs(fp32).max())
