"""pi0.5 as a variant of the project's pi0: numerical match with LeRobot 0.6.1's `PI05Pytorch`, full-size names and
shapes, checkpoint names and config detection, the shared cache/sampler paths, and that the state is not read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pi0.model.checkpoint import checkpoint_variant, load_model
from pi0.model.config import PI0Config
from pi0.model.fast_sampling import FastSampler
from pi0.model.modeling import PI0Model
from tests.pi0_fixtures import REPO_ROOT, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

# LeRobot's pi0.5 reference (copied from shared/pi05_reference, 5 MB): kept in the repository like pi0's.
REFERENCE = REPO_ROOT / "tests" / "data" / "pi05_reference"
TINY = REFERENCE / "lerobot_tiny"


def _require_reference() -> Path:
    assert (TINY / "model.safetensors").is_file(), f"{REFERENCE} is incomplete: restore tests/data"
    return TINY


def _io_args(io):
    images = [io[f"image_{i}"] for i in range(3)]
    masks = [io[f"image_mask_{i}"] for i in range(3)]
    return images, masks, io["tokens"], io["lang_masks"]


@pytest.fixture(scope="module")
def reference():
    ref = _require_reference()
    cfg = PI0Config.from_dims_json(ref / "dims.json")
    model = load_model(ref, config=cfg)  # our loader, LeRobot's parameter names
    return model, load_file(str(ref / "io.safetensors"))


def test_dims_json_builds_pi05():
    cfg = PI0Config.from_dims_json(_require_reference() / "dims.json")
    dims = json.loads((TINY / "dims.json").read_text())
    assert cfg.pi05 and cfg.variant == "pi05" and cfg.max_token_len == 200
    with torch.device("meta"):
        model = PI0Model(cfg)
    # dims.json counts both lm_heads (vocab x width each), which this model does not build (no logits).
    lm_heads = cfg.vocab_size * (cfg.vlm.width + cfg.expert.width)
    assert sum(p.numel() for p in model.parameters()) == dims["n_params"] - lm_heads


def test_reproduces_lerobot_reference_chunk_and_loss(reference):
    model, io = reference
    images, masks, tokens, lang = _io_args(io)
    with torch.inference_mode():
        # pi0.5 takes no state: None is accepted, and the chunk is the reference's.
        chunk = model.sample_actions(images, masks, tokens, lang, None, noise=io["noise"])
        loss = model.flow_matching_loss(images, masks, tokens, lang, None, io["actions"], noise=io["noise"], time=io["time"])
    assert (chunk - io["sampled_chunk"]).abs().max().item() <= 1e-4
    assert (loss - io["loss"]).abs().max().item() <= 1e-4


def test_reproduces_lerobot_intermediates(reference):
    model, io = reference
    images, masks, tokens, lang = _io_args(io)
    with torch.inference_mode():
        cond = model.time_condition(io["time"])
        cache = model.compute_prefix_cache(images, masks, tokens, lang)
        v1 = model.velocity(cache, None, io["noise"], 1.0)
        v1_uncached = model.velocity_uncached(images, masks, tokens, lang, None, io["noise"], torch.ones(2))
    assert (cond - io["adarms_cond"]).abs().max().item() <= 1e-5
    assert (v1 - io["velocity_t1"]).abs().max().item() <= 1e-4
    assert (v1_uncached - io["velocity_t1"]).abs().max().item() <= 1e-4


def test_state_is_ignored_and_action_token_bias_is_read(reference):
    model, io = reference
    images, masks, tokens, lang = _io_args(io)
    state = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(2, model.config.expert.width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cache = model.compute_prefix_cache(images, masks, tokens, lang)
        without = model.velocity(cache, None, io["noise"], 0.5)
        assert torch.equal(model.velocity(cache, state, io["noise"], 0.5), without)
        assert torch.equal(model.velocity(cache, state, io["noise"], 0.5, torch.zeros_like(bias)), without)
        biased = model.velocity(cache, state, io["noise"], 0.5, bias)
        assert (biased - without).abs().max().item() > 1e-4
        # The suffix is the chunk alone: no state token.
        suffix, cond = model.embed_suffix(state, io["noise"], torch.full((2,), 0.5))
    assert suffix.shape == (2, model.config.chunk_size, model.config.expert.width) and cond.shape == (2, 48)
    assert not hasattr(model, "state_proj") and not hasattr(model, "action_time_mlp_in")


def test_fast_sampler_composes_pi05(reference):
    model, io = reference
    images, masks, tokens, lang = _io_args(io)
    sampler = FastSampler(model, mode="none")
    state = torch.zeros(2, 32)  # the sampler pads rows of every input; pi0.5 never reads them
    with torch.inference_mode():
        chunk = sampler.sample(images, masks, tokens, lang, state, io["noise"], num_steps=10)
    assert (chunk - io["sampled_chunk"]).abs().max().item() <= 1e-4


def test_full_size_pi05_matches_reference_names_and_shapes():
    expected = json.loads((REFERENCE / "lerobot_pi05_state_dict_shapes.json").read_text())["keys"]
    assert len(expected) == 813
    # lm_head entries are skipped on purpose, as for pi0 (no logits; the loader drops them, see checkpoint.py).
    expected = {k: list(v) for k, v in expected.items() if not k.endswith("lm_head.weight")}
    with torch.device("meta"):
        model = PI0Model(PI0Config.full(pi05=True))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert got == expected


def test_loads_lerobot_prefix_and_state_dict(tmp_path):
    ref = _require_reference()
    sd = load_file(str(ref / "model.safetensors"))
    cfg = PI0Config.from_dims_json(ref / "dims.json")
    assert checkpoint_variant(sd) == "pi05"
    # LeRobot's PI05Policy: every name under "model.".
    prefixed = {f"model.{k}": v for k, v in sd.items()}
    save_file(prefixed, str(tmp_path / "model.safetensors"))
    model = load_model(tmp_path, config=cfg)
    name = "paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.weight"
    assert torch.equal(model.state_dict()[name], sd[name])
    assert torch.equal(model.time_mlp_in.weight, sd["time_mlp_in.weight"])
    # A state dict already in memory, with the caller's config (the LeRobot directory reader's path).
    in_memory = load_model(prefixed, config=cfg)
    assert torch.equal(in_memory.state_dict()["paligemma_with_expert.gemma_expert.model.norm.dense.bias"],
                       sd["paligemma_with_expert.gemma_expert.model.norm.dense.bias"])
    with pytest.raises(ValueError, match="pass config"):
        load_model(prefixed)


def test_variant_mismatch_is_named(tmp_path):
    ref = _require_reference()
    sd = load_file(str(ref / "model.safetensors"))
    pi0_cfg = PI0Config.tiny(image_size=224)
    with pytest.raises(ValueError, match="pi05 weights but the config builds pi0"):
        load_model(sd, config=pi0_cfg)


def test_config_json_detection_and_round_trip(tmp_path):
    # openpi's PyTorch conversion config.json and LeRobot's PI05Config.
    openpi = PI0Config.from_dict({"pi05": True, "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
                                  "action_horizon": 50, "action_dim": 32})
    lerobot = PI0Config.from_dict({"type": "pi05", "chunk_size": 50, "max_action_dim": 32, "max_state_dim": 32,
                                   "tokenizer_max_length": 200, "image_resolution": [224, 224]})
    assert openpi == lerobot == PI0Config.full(pi05=True)
    assert openpi.max_token_len == 200 and openpi.norm_mode == "quantile"
    assert not PI0Config.from_dict({"type": "pi0"}).pi05
    # Our own config.json keeps the variant.
    tiny = PI0Config.tiny(pi05=True)
    tiny.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["type"] == "pi05"
    assert PI0Config.load(tmp_path / "config.json") == tiny


def test_save_load_round_trip_and_training_step(tmp_path):
    from pi0.model.checkpoint import save_weights

    torch.manual_seed(0)
    cfg = PI0Config.tiny(image_size=28, pi05=True, max_token_len=8)
    model = PI0Model(cfg)
    save_weights(model, tmp_path)
    cfg.save(tmp_path / "config.json")
    loaded = load_model(tmp_path)
    assert loaded.config.pi05
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # One gradient step reaches the time MLP and the adaRMS norms (time conditioning is trained).
    images = [torch.rand(2, 3, 28, 28) * 2 - 1 for _ in range(3)]
    masks = [torch.ones(2, dtype=torch.bool)] * 2 + [torch.zeros(2, dtype=torch.bool)]
    tokens = torch.randint(1, cfg.vocab_size, (2, 8))
    loss = loaded.train().flow_matching_loss(images, masks, tokens, torch.ones(2, 8, dtype=torch.bool), None,
                                             torch.randn(2, 50, 32)).mean()
    loss.backward()
    assert loaded.time_mlp_in.weight.grad.abs().sum() > 0
    assert loaded.paligemma_with_expert.gemma_expert.model.layers[0].input_layernorm.dense.weight.grad.abs().sum() > 0


# ---- RIPT on pi0.5: the flow-SDE PPO and the CFG update run unchanged (they only call the prefix cache and velocity)


@pytest.mark.parametrize("optimizer", ["ppo", "cfg"])
def test_one_ript_update_step_on_tiny_pi05(optimizer):
    import numpy as np

    from pi0.ript.policy.pi0_policy import make_tiny_policy
    from pi0.ript.algo.cfg import NEGATIVE, NULL, POSITIVE
    from pi0.ript.algo.flow_sde import stochastic_steps
    from pi0.ript.algo.ppo import ppo_loss
    from pi0.ript.algo.rl_policy import RLPolicy
    from tests.pi0_fixtures import INSTRUCTIONS, make_obs

    policy = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=28, pi05=True, max_token_len=24)
    assert policy.model.config.pi05
    rl = RLPolicy(policy, optimizer, num_denoise_steps=3, noise_scale=1.0, learn_noise_scale=True,
                  logprob_action_dims=7, replan_steps=5, guidance_weight=2.0, seed=0)
    rng = np.random.default_rng(0)
    observations, instructions = [make_obs(rng, 32) for _ in range(3)], INSTRUCTIONS[:3]
    out = rl.predict_chunks(observations, instructions)
    assert out.actions.shape == (3, 50, 7)
    chains = torch.from_numpy(np.stack([e["chain"] for e in out.extras]))
    inputs = policy.prepare_batch(observations, instructions)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    opt = torch.optim.AdamW(rl.trainable_parameters(expert_only=False), lr=1e-2)
    before = {n: p.detach().clone() for n, p in rl.named_parameters()}
    rl.train()
    if optimizer == "ppo":
        scored = stochastic_steps(3, rl.sampler)
        old = torch.from_numpy(np.stack([e["step_log_probs"] for e in out.extras])).float()[:, scored]
        new, _ = rl.chain_log_prob(inputs, chains, prefix_grad=True)
        # Rescoring the chains under the sampling weights gives back the rollout's log-probabilities.
        torch.testing.assert_close(new[:, scored].detach(), old, rtol=1e-5, atol=1e-5)
        loss, _ = ppo_loss(new[:, scored], old, advantages, clip_eps=0.2)
    else:
        g = torch.Generator().manual_seed(1)
        labels = torch.tensor([POSITIVE, NEGATIVE, NULL])
        noise = torch.randn(chains[:, -1].shape, generator=g)
        loss, _, _ = rl.cfg_loss(inputs, chains[:, -1], labels, noise, rl.model.sample_time(3, g), prefix_grad=True)
    opt.zero_grad()
    loss.mean().backward()
    model = rl.model
    assert model.time_mlp_in.weight.grad.abs().sum() > 0
    assert model.paligemma_with_expert.gemma_expert.model.norm.dense.weight.grad.abs().sum() > 0
    if optimizer == "cfg":
        assert rl.condition.embedding.grad[[POSITIVE, NEGATIVE, NULL]].abs().sum(dim=1).min() > 0
    opt.step()
    after = dict(rl.named_parameters())
    assert not torch.equal(after["model.time_mlp_out.weight"], before["model.time_mlp_out.weight"])
    # The updated policy still samples.
    rl.eval()
    assert np.isfinite(rl.predict_chunks(observations, instructions).actions).all()


def test_bf16_pi05_matches_fp32_closely():
    import numpy as np

    from pi0.ript.policy.pi0_policy import make_tiny_policy
    from tests.pi0_fixtures import INSTRUCTIONS, make_obs

    rng = np.random.default_rng(5)
    obs = [make_obs(rng, 32) for _ in range(2)]
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(5))
    fp32 = make_tiny_policy(INSTRUCTIONS, image_size=28, pi05=True).predict_chunks(obs, INSTRUCTIONS[:2], noise=noise)
    bf16_pol = make_tiny_policy(INSTRUCTIONS, image_size=28, pi05=True, dtype=torch.bfloat16)
    assert bf16_pol.model.dtype == torch.bfloat16
    bf16 = bf16_pol.predict_chunks(obs, INSTRUCTIONS[:2], noise=noise).actions
    assert np.abs(bf16 - fp32.actions).max() < 0.05 * max(1.0, np.abs(fp32.actions).max())
