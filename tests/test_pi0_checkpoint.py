"""Checkpoint IO: save -> load bit-exact, LeRobot/openpi names, sharded index, lm_head skip, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pi0.model.checkpoint import load_model, read_state_dict
from pi0.model.config import PI0Config
from pi0.ript.policy.pi0_policy import PI0Policy, make_tiny_policy
from pi0.model.tokenizer import PromptTokenizer
from tests.pi0_fixtures import INSTRUCTIONS, make_obs, one_thread, require_reference

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pol = make_tiny_policy(INSTRUCTIONS, seed=3, image_size=28)
    d = tmp_path_factory.mktemp("ckpt")
    pol.save_pretrained(d)
    return pol, d


def test_save_load_round_trip_is_bit_exact(saved):
    pol, d = saved
    assert {p.name for p in d.iterdir()} >= {"model.safetensors", "config.json", "norm_stats.json", "tokenizer.json"}
    loaded = PI0Policy.from_pretrained(d, device="cpu")
    a, b = pol.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.config == pol.config
    obs = [make_obs(np.random.default_rng(0), 32) for _ in range(2)]
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(
        pol.predict_chunks(obs, INSTRUCTIONS[:2], noise=noise).actions,
        loaded.predict_chunks(obs, INSTRUCTIONS[:2], noise=noise).actions,
    )


def test_lerobot_prefix_sharded_index_and_lm_head(saved, tmp_path):
    pol, d = saved
    sd = load_file(str(d / "model.safetensors"))
    # LeRobot layout: "model." prefix, lm_heads present, two shards with an index.
    lerobot = {f"model.{k}": v for k, v in sd.items()}
    width = pol.config.vlm.width
    lerobot["model.paligemma_with_expert.paligemma.lm_head.weight"] = torch.zeros(pol.config.vocab_size, width)
    names = sorted(lerobot)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: lerobot[k].contiguous() for k in keys}, str(tmp_path / fname))
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    pol.config.save(tmp_path / "config.json")
    assert len(read_state_dict(tmp_path)) == len(lerobot)
    model = load_model(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_reference_loads_with_prefix_too(tmp_path):
    ref = require_reference() / "lerobot_tiny"
    sd = load_file(str(ref / "model.safetensors"))
    save_file({f"model.{k}": v for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    model = load_model(tmp_path, config=PI0Config.from_dims_json(ref / "dims.json"))
    assert torch.equal(model.state_proj.weight, sd["state_proj.weight"])


def test_errors_name_the_file_and_key(saved, tmp_path):
    pol, d = saved
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        read_state_dict(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        PromptTokenizer.from_dir(tmp_path)
    # Wrong size in config.json -> shape error naming the parameter.
    sd = load_file(str(d / "model.safetensors"))
    save_file(sd, str(tmp_path / "model.safetensors"))
    PI0Config.tiny(image_size=28, vocab_size=pol.config.vocab_size + 1).save(tmp_path / "config.json")
    with pytest.raises(ValueError, match="embed_tokens.weight has shape"):
        load_model(tmp_path)
    # A missing tensor -> names it.
    sd.pop("state_proj.bias")
    save_file(sd, str(tmp_path / "model.safetensors"))
    pol.config.save(tmp_path / "config.json")
    with pytest.raises(KeyError, match="state_proj.bias"):
        load_model(tmp_path)


def test_foreign_config_json_maps_variants():
    cfg = PI0Config.from_dict(
        {"type": "pi0", "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m", "chunk_size": 50,
         "max_action_dim": 32, "max_state_dim": 32, "tokenizer_max_length": 48, "image_resolution": [224, 224]}
    )
    assert cfg == PI0Config.full()
    assert PI0Config.from_dict(PI0Config.tiny().to_dict()) == PI0Config.tiny()
