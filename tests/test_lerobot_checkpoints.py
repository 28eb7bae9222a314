"""LeRobot's checkpoint layout (pi0 and pi0.5): config, processor statistics, prompts, tokenizer path, policy.kind.

The two tiny directories in tests/data/lerobot_checkpoints are LeRobot 0.6.1's own saves; their weights are the tiny
reference models of tests/data/pi0_reference and pi05_reference, put back under LeRobot's `model.` names here (see
that folder's README). `<name>_processor_io.*` hold what LeRobot's processors compute with these statistics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

from pi0.model.config import GEMMA_2B, GEMMA_300M, PALIGEMMA_VOCAB, SIGLIP_SO400M, PI0Config
from pi0.model.lerobot_layout import config_variant, lerobot_type, read_lerobot_checkpoint
from pi0.model.normalization import load_norm_stats, normalize, unnormalize
from pi0.ript.policy.pi0_policy import ModelInputs, PI0Policy
from pi0.model.tokenizer import build_prompt, build_word_tokenizer, discretize_state, pi0_prompt, pi05_prompt
from pi0.ript.config.schema import ConfigError, load_config
from pi0.ript.policy.loading import load_policy
from tests.pi0_fixtures import REPO_ROOT, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

DATA = REPO_ROOT / "tests" / "data"
LEROBOT = DATA / "lerobot_checkpoints"
SHARED = REPO_ROOT.parent / "shared" / "lerobot_checkpoints"
NAMES = ("pi0_tiny", "pi05_tiny")
REFERENCE = {"pi0_tiny": DATA / "pi0_reference" / "lerobot_tiny", "pi05_tiny": DATA / "pi05_reference" / "lerobot_tiny"}
LM_HEAD = "model.paligemma_with_expert.paligemma.lm_head.weight"
EMBED = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"


def lerobot_weights(name: str) -> dict[str, torch.Tensor]:
    """The directory's model.safetensors as LeRobot wrote it: the reference weights under `model.`, lm_head tied."""
    sd = {f"model.{k}": v for k, v in load_file(str(REFERENCE[name] / "model.safetensors")).items()}
    sd[LM_HEAD] = sd[EMBED].clone()
    return sd


def sizes(name: str) -> PI0Config:
    return PI0Config.from_dims_json(LEROBOT / f"{name}.dims.json")


def processor_io(name: str) -> tuple[dict[str, np.ndarray], dict]:
    return load_numpy(str(LEROBOT / f"{name}_processor_io.safetensors")), json.loads((LEROBOT / f"{name}_processor_io.json").read_text())


def word_tokenizer(name: str):
    """A word-level tokenizer whose vocabulary covers the reference prompts word for word (numbers 0-255 included),
    so equal ids mean equal prompts. No PaliGemma tokenizer exists offline."""
    _, meta = processor_io(name)
    spaced = [p.replace(":", " : ").replace(";", " ; ").replace("-", " - ") for p in meta["prompts"]]
    return build_word_tokenizer(spaced + [" ".join(map(str, range(256)))])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Each tiny directory, complete as LeRobot saved it, and a directory holding a tokenizer.json for it."""
    root = tmp_path_factory.mktemp("lerobot")
    out = {}
    for name in NAMES:
        d = root / name
        shutil.copytree(LEROBOT / name, d)
        save_file(lerobot_weights(name), str(d / "model.safetensors"))
        word_tokenizer(name).save(root / f"{name}_tokenizer")
        out[name] = d
    return out


def load(checkpoints, name: str, **kwargs) -> PI0Policy:
    tok = checkpoints[name].parent / f"{name}_tokenizer"
    return PI0Policy.from_pretrained(checkpoints[name], device="cpu", tokenizer_path=tok, sizes=sizes(name), **kwargs)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/lerobot_checkpoints not present (only the copy in tests/data)")
@pytest.mark.parametrize("name", NAMES)
def test_copies_and_rebuilt_weights_are_lerobots_files(name):
    for path in (LEROBOT / name).iterdir():
        assert path.read_bytes() == (SHARED / name / path.name).read_bytes(), path.name
    original, rebuilt = load_file(str(SHARED / name / "model.safetensors")), lerobot_weights(name)
    assert original.keys() == rebuilt.keys()
    for k in original:
        assert torch.equal(original[k], rebuilt[k]), k


# ---- the layout -> config, statistics, prompt format


@pytest.mark.parametrize("name", NAMES)
def test_layout_maps_to_project_config(name, checkpoints):
    d = checkpoints[name]
    pi05 = name == "pi05_tiny"
    assert lerobot_type(d) == config_variant(d) == ("pi05" if pi05 else "pi0")
    full = read_lerobot_checkpoint(d).config  # what a hub checkpoint gets: the sizes its variant names say
    assert (full.vlm, full.expert, full.vision, full.vocab_size) == (GEMMA_2B, GEMMA_300M, SIGLIP_SO400M, PALIGEMMA_VOCAB)
    ckpt = read_lerobot_checkpoint(d, sizes=sizes(name))
    c = ckpt.config
    assert c.pi05 == pi05 and c.vlm == sizes(name).vlm and c.vocab_size == 1024
    assert c.max_token_len == (200 if pi05 else 48)
    assert c.norm_mode == ("quantile" if pi05 else "mean_std")
    assert c.delta_action_dims == () and c.env_action_dim == 7 and c.chunk_size == 50
    assert ckpt.prompt_format == ("pi05_state" if pi05 else "lerobot_pi0")
    assert ckpt.cameras == ("observation.images.image", "observation.images.image2")
    for stats in ckpt.norm_stats.values():
        assert stats.convention == "lerobot" and stats.eps == 1e-8


@pytest.mark.parametrize("name", NAMES)
def test_statistics_give_lerobots_processor_values(name, checkpoints):
    io, meta = processor_io(name)
    ckpt = read_lerobot_checkpoint(checkpoints[name], sizes=sizes(name))
    mode, stats = ckpt.config.norm_mode, ckpt.norm_stats
    assert meta["normalization"] == {"mean_std": "MEAN_STD", "quantile": "QUANTILES"}[mode]
    np.testing.assert_allclose(normalize(io["raw_state"], stats["state"], mode), io["normalized_state"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(normalize(io["raw_action"], stats["actions"], mode), io["normalized_action"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(unnormalize(io["model_action"], stats["actions"], mode), io["unnormalized_action"], rtol=0, atol=1e-5)


def test_quantiles_unclipped_and_exactly_at_q01():
    io, meta = processor_io("pi05_tiny")
    # Config and statistics need no weights: the copy in tests/data is read directly.
    stats = read_lerobot_checkpoint(LEROBOT / "pi05_tiny", sizes=sizes("pi05_tiny")).norm_stats["state"]
    state = normalize(io["raw_state"], stats, "quantile")
    at_q01 = io["raw_state"] == stats.q01.astype(np.float32)
    assert at_q01.sum() == 1 and (state[at_q01] == -1.0).all()  # the value at q01 is -1 exactly: bin 0, not -1
    assert state.min() < -1 and state.max() > 1  # no clipping (sample 2 has a value below q01 and one above q99)
    bins = discretize_state(state)
    np.testing.assert_array_equal(bins, io["discretized_state"])
    assert bins[at_q01].tolist() == [0] and bins.min() == -1 and bins.max() == 255
    # A zero range uses eps instead (LeRobot: only then), and the inverse gives q01 back.
    flat = type(stats)(stats.mean, stats.std, stats.q01, stats.q01.copy(), convention="lerobot", eps=1e-8)
    x = stats.q01[None] + 1e-9
    assert np.isfinite(normalize(x, flat, "quantile")).all()
    np.testing.assert_allclose(unnormalize(np.full((1, 8), -1.0), flat, "quantile"), stats.q01[None], rtol=1e-6)


# ---- prompt builders against LeRobot's strings


def test_pi05_prompts_are_lerobots_strings():
    io, meta = processor_io("pi05_tiny")
    for task, state, expected, bins in zip(meta["tasks"], io["normalized_state"], meta["prompts"], io["discretized_state"]):
        assert pi05_prompt(task, state) == expected
        assert build_prompt("pi05_state", task, state) == expected
        assert expected == f"Task: {task.strip().replace('_', ' ').replace(chr(10), ' ')}, State: {' '.join(map(str, bins))};\nAction: "
    # From the raw state through the directory's statistics too (float32 like LeRobot, so edges land alike).
    stats = read_lerobot_checkpoint(LEROBOT / "pi05_tiny", sizes=sizes("pi05_tiny")).norm_stats["state"]
    ours = [pi05_prompt(t, normalize(s, stats, "quantile")) for t, s in zip(meta["tasks"], io["raw_state"])]
    assert ours == meta["prompts"]


def test_pi0_prompts_are_lerobots_strings():
    _, meta = processor_io("pi0_tiny")
    assert [pi0_prompt(t) for t in meta["tasks"]] == meta["prompts"]
    assert [build_prompt("lerobot_pi0", t) for t in meta["tasks"]] == meta["prompts"]
    assert pi0_prompt("done\n") == "done\n"  # LeRobot adds the newline only when it is missing
    assert build_prompt("openpi", meta["tasks"][1]) == meta["tasks"][1]  # openpi's: cleaned and "\n" at tokenisation


# ---- loading the directories as they are, through the policy


def _observations(raw_state: np.ndarray, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """LIBERO observations whose 8-dim state (eef pos, axis-angle of the quaternion, gripper) is `raw_state`."""
    rng = np.random.default_rng(seed)
    out = []
    for s in np.asarray(raw_state, dtype=np.float64):
        angle = np.linalg.norm(s[3:6])
        quat = np.concatenate([s[3:6] / angle * np.sin(angle / 2), [np.cos(angle / 2)]])
        out.append({
            "agentview_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "eef_pos": s[:3], "eef_quat": quat, "gripper_qpos": s[6:8],
        })
    return out


@pytest.mark.parametrize("name", NAMES)
def test_policy_feeds_lerobots_state_prompt_and_statistics(name, checkpoints):
    io, meta = processor_io(name)
    policy = load(checkpoints, name)
    assert policy.prompt_format == ("pi05_state" if name == "pi05_tiny" else "lerobot_pi0")
    raw_state, observations = io["raw_state"].astype(np.float64), _observations(io["raw_state"])
    for preprocess in ("batched", "per_sample"):
        policy.preprocess = preprocess
        inputs = policy.prepare_batch(observations, meta["tasks"])
        np.testing.assert_allclose(inputs.state[:, :8].numpy(), io["normalized_state"], rtol=0, atol=1e-5)
        assert inputs.tokens.shape[1] == policy.config.max_token_len
        ids, mask = policy.tokenizer.tokenize(meta["prompts"], policy.config.max_token_len, policy.prompt_format)
        np.testing.assert_array_equal(inputs.tokens.numpy(), ids)  # the prompts LeRobot builds, token for token
        np.testing.assert_array_equal(inputs.token_masks.numpy(), mask)
    targets = policy.normalize_actions(io["raw_action"], raw_state)
    np.testing.assert_allclose(targets[..., :7].numpy(), io["normalized_action"], rtol=0, atol=1e-5)
    assert (targets[..., 7:] == 0).all()
    padded = np.zeros((3, 50, 32), dtype=np.float32)
    padded[..., :7] = io["model_action"]
    np.testing.assert_allclose(policy.postprocess(padded, raw_state), io["unnormalized_action"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_loaded_directory_reproduces_the_reference_chunk(name, checkpoints):
    """pi0_tiny / pi05_tiny carry the reference models' weights, so their reference io applies."""
    io = load_file(str(REFERENCE[name] / "io.safetensors"))
    policy = load(checkpoints, name)
    masks = [io[f"image_mask_{i}"] for i in range(3)]
    inputs = ModelInputs(
        images=[io[f"image_{i}"] for i in range(3)], image_masks=masks, tokens=io["tokens"], token_masks=io["lang_masks"],
        state=io.get("state", torch.zeros(2, 32)), raw_state=torch.zeros(2, 8, dtype=torch.float64),
        slots_present=tuple(bool(m.any()) for m in masks),
    )
    chunk, _, _ = policy.sample(inputs, noise=io["noise"])
    assert (chunk - io["sampled_chunk"]).abs().max().item() <= 1e-4
    # And the env actions are the directory's unnormalisation of that chunk (absolute actions: no state added).
    stats = policy.norm_stats["actions"]
    expected = unnormalize(io["sampled_chunk"][..., :7].numpy(), stats, policy.config.norm_mode)
    np.testing.assert_allclose(policy.postprocess(chunk, inputs.raw_state), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_keeps_prompt_and_statistics(name, checkpoints, tmp_path):
    policy = load(checkpoints, name)
    policy.save_pretrained(tmp_path)
    again = PI0Policy.from_pretrained(tmp_path, device="cpu")  # this project's layout now, tokenizer included
    assert again.prompt_format == policy.prompt_format and again.config == policy.config
    assert load_norm_stats(tmp_path)["state"].convention == "lerobot"
    io, meta = processor_io(name)
    observations, noise = _observations(io["raw_state"]), torch.randn(3, 50, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(
        policy.predict_chunks(observations, meta["tasks"], noise=noise).actions,
        again.predict_chunks(observations, meta["tasks"], noise=noise).actions,
    )


# ---- tokenizer path and policy.kind through the run's loader


def _cfg(d: Path, *extra: str):
    return load_config(overrides=[f"policy.checkpoint_path={d}", "policy.device=cpu", "policy.compile=none", *extra])


@pytest.fixture
def tiny_sizes(monkeypatch):
    """load_policy builds what config.json names (full size); give the tiny directories their sizes."""
    original = PI0Policy.from_pretrained.__func__

    def with_sizes(cls, directory, **kwargs):
        return original(cls, directory, sizes=sizes(Path(directory).name), **kwargs)

    monkeypatch.setattr(PI0Policy, "from_pretrained", classmethod(with_sizes))


@pytest.mark.parametrize("name", NAMES)
def test_kind_auto_reads_the_checkpoint_and_tokenizer_path_is_used(name, checkpoints, tiny_sizes):
    tok = checkpoints[name].parent / f"{name}_tokenizer"
    policy, description = load_policy(_cfg(checkpoints[name], f"policy.tokenizer_path={tok}"))
    kind = "pi05" if name == "pi05_tiny" else "pi0"
    assert description["kind"] == kind and policy.config.variant == kind
    # The tokenizer.json file itself works as well as its directory; the explicit kind is accepted.
    policy, _ = load_policy(_cfg(checkpoints[name], f"policy.tokenizer_path={tok / 'tokenizer.json'}", f"policy.kind={kind}"))
    assert policy.tokenizer.vocab_size == word_tokenizer(name).vocab_size


def test_missing_tokenizer_and_wrong_kind_are_one_line(checkpoints, tmp_path):
    d = checkpoints["pi0_tiny"]
    with pytest.raises(FileNotFoundError) as err:
        PI0Policy.from_pretrained(d, device="cpu", sizes=sizes("pi0_tiny"))
    message = str(err.value)
    assert "policy.tokenizer_path" in message and "LeRobot checkpoints do not store the tokenizer" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="policy.tokenizer_path") as err:
        load_policy(_cfg(d))  # the tokenizer is looked for before any weights are read
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="policy.tokenizer_path"):
        load_policy(_cfg(d, f"policy.tokenizer_path={tmp_path / 'nowhere'}"))
    with pytest.raises(ConfigError, match="set policy.kind=pi05"):
        load_policy(_cfg(checkpoints["pi05_tiny"], "policy.kind=pi0"))
    with pytest.raises(ConfigError, match="policy.tokenizer_path"):
        _cfg(d, f"policy.tokenizer_path={d / 'config.json'}")  # a file that is not a tokenizer


def test_unsupported_pipelines_are_refused_with_the_file(tmp_path):
    d = tmp_path / "pi0_tiny"
    shutil.copytree(LEROBOT / "pi0_tiny", d)
    post = json.loads((d / "policy_postprocessor.json").read_text())
    post["steps"][0]["config"]["norm_map"]["ACTION"] = "MIN_MAX"
    (d / "policy_postprocessor.json").write_text(json.dumps(post))
    with pytest.raises(ValueError, match="policy_postprocessor.json: ACTION normalisation 'MIN_MAX' is not supported"):
        read_lerobot_checkpoint(d)
    shutil.copy(LEROBOT / "pi0_tiny" / "policy_postprocessor.json", d)
    pre = json.loads((d / "policy_preprocessor.json").read_text())
    pre["steps"][5]["config"]["enabled"] = True  # relative_actions_processor
    (d / "policy_preprocessor.json").write_text(json.dumps(pre))
    with pytest.raises(ValueError, match="relative_actions_processor is enabled"):
        read_lerobot_checkpoint(d)
    shutil.copy(LEROBOT / "pi0_tiny" / "policy_preprocessor.json", d)
    (d / "policy_preprocessor_step_6_normalizer_processor.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="policy_preprocessor_step_6_normalizer_processor.safetensors"):
        read_lerobot_checkpoint(d)


def test_openpi_pi05_prompt_follows_discrete_state_input(tmp_path):
    """openpi's pi05_libero (discrete_state_input=False) prompts like pi0, without the state; pi0.5 otherwise puts the
    state in its prompt; pi0 never does."""
    from pi0.ript.policy.pi0_policy import default_prompt_format, openpi_prompt_format

    base = {"pi05": True, "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m"}
    for extra, expected in (({"discrete_state_input": False}, "openpi"), ({"discrete_state_input": True}, "pi05_state"), ({}, "pi05_state")):
        (tmp_path / "config.json").write_text(json.dumps({**base, **extra}))
        config = PI0Config.load(tmp_path / "config.json")
        assert openpi_prompt_format(tmp_path / "config.json", config) == expected
    assert default_prompt_format(PI0Config.tiny()) == "openpi"
    assert default_prompt_format(PI0Config.tiny(pi05=True)) == "pi05_state"


def test_training_loads_its_starting_policy_with_the_tokenizer_path(monkeypatch, tmp_path):
    """`pi0-ript train` from a LeRobot directory needs `policy.tokenizer_path` too: the trainer hands it on."""
    from pi0.ript.policy.pi0_policy import PI0Policy
    from pi0.ript.algo.trainer import train
    from pi0.ript.config.schema import load_config

    seen = {}

    def from_pretrained(path, device=None, **kwargs):
        seen.update(kwargs, path=str(path))
        raise RuntimeError("loaded far enough")

    monkeypatch.setattr(PI0Policy, "from_pretrained", staticmethod(from_pretrained))
    tokenizer_dir = tmp_path / "paligemma_tokenizer"
    tokenizer_dir.mkdir()
    cfg = load_config(None, [
        "task.benchmark_name=reach", "policy.kind=pi0", f"policy.checkpoint_path={tmp_path}", "policy.device=cpu",
        f"policy.tokenizer_path={tokenizer_dir}", f"train.output_dir={tmp_path / 'run'}",
    ])
    with pytest.raises(RuntimeError, match="loaded far enough"):
        train(cfg)
    assert seen == {"tokenizer_path": str(tokenizer_dir), "path": str(tmp_path)}
