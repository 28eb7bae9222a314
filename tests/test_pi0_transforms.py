"""LIBERO transforms, normalisation and tokenizer, each on a hand-computed example."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pi0.model.normalization import NormStats, load_norm_stats, normalize, save_norm_stats, unnormalize
from pi0.ript.policy.pi0_policy import make_tiny_policy
from pi0.model.tokenizer import build_word_tokenizer
from pi0.model.transforms import (
    AbsoluteActions,
    DeltaActions,
    ImagesToModel,
    Rotate180,
    resize_with_pad,
)
from pi0.ript.policy.libero_adapter import quat_xyzw_to_axis_angle
from tests.pi0_fixtures import INSTRUCTIONS, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

STATS = {
    "state": NormStats(np.arange(8) * 0.1, np.full(8, 2.0), np.full(8, -1.0), np.full(8, 3.0)),
    "actions": NormStats(np.full(7, 0.5), np.full(7, 0.25), np.full(7, -2.0), np.full(7, 2.0)),
}


def test_quaternion_to_axis_angle():
    np.testing.assert_allclose(quat_xyzw_to_axis_angle([0, 0, 0, 1]), [0, 0, 0])
    s = math.sin(math.pi / 4)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle([0, 0, s, s]), [0, 0, math.pi / 2])
    np.testing.assert_allclose(quat_xyzw_to_axis_angle([1, 0, 0, 0]), [math.pi, 0, 0])


def test_resize_with_pad_keeps_aspect_and_centres_on_black():
    img = np.full((4, 8, 3), 200, dtype=np.uint8)  # wide image -> scaled to 2x4, one black row above and below
    out = resize_with_pad(img, 4, 4)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1:3], 200)
    np.testing.assert_array_equal(out[[0, 3]], 0)
    tall = np.full((6, 2, 3), 9, dtype=np.uint8)  # already fits in height: pasted at column (6-2)//2 = 2
    out = resize_with_pad(tall, 6, 6)
    np.testing.assert_array_equal(out[:, 2:4], 9)
    np.testing.assert_array_equal(out[:, [0, 1, 4, 5]], 0)


def test_rotate_and_scale_images():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[0, 0] = [255, 51, 0]
    data = Rotate180()({"images": {"a": img}})
    np.testing.assert_array_equal(data["images"]["a"][1, 2], [255, 51, 0])
    chw = ImagesToModel()(data)["images"]["a"]
    assert chw.shape == (3, 2, 3) and chw.dtype == np.float32
    np.testing.assert_allclose(chw[:, 1, 2], [1.0, -0.6, -1.0], atol=1e-6)
    np.testing.assert_allclose(chw[:, 0, 0], [-1.0, -1.0, -1.0])


def test_normalization_round_trip_both_modes():
    x = np.random.default_rng(0).normal(size=(5, 10))  # 10 dims: stats cover 8, the last 2 pass through
    for mode in ("mean_std", "quantile"):
        y = normalize(x, STATS["state"], mode)
        np.testing.assert_array_equal(y[:, 8:], x[:, 8:])
        np.testing.assert_allclose(unnormalize(y, STATS["state"], mode), x, atol=1e-12)
    np.testing.assert_allclose(normalize(np.full(8, 3.0), STATS["state"], "quantile")[0], 1.0, atol=1e-5)
    np.testing.assert_allclose(normalize(np.arange(8) * 0.1 + 2.0, STATS["state"], "mean_std"), 1.0, atol=1e-5)


def test_norm_stats_file_formats_and_errors(tmp_path):
    nested = save_norm_stats(STATS, tmp_path)
    loaded = load_norm_stats(nested)
    np.testing.assert_array_equal(loaded["actions"].q99, STATS["actions"].q99)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(json.loads(nested.read_text())["norm_stats"]))
    np.testing.assert_array_equal(load_norm_stats(flat)["state"].mean, STATS["state"].mean)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_norm_stats(tmp_path / "missing.json")
    only_state = tmp_path / "only_state.json"
    only_state.write_text(json.dumps({"norm_stats": {"state": {"mean": [0.0], "std": [1.0]}}}))
    with pytest.raises(KeyError, match="only_state.json: key 'actions'"):
        load_norm_stats(only_state)
    with pytest.raises(KeyError, match="q01/q99"):
        normalize(np.zeros(1), load_norm_stats(only_state, required=("state",))["state"], "quantile", "state")


def test_tokenizer_from_instructions():
    tok = build_word_tokenizer(["put the bowl on the plate"])
    assert tok.encode("Put the_bowl on the plate") == tok.encode("put the bowl on the plate")
    ids = tok.encode("put the bowl")
    assert ids[0] == 1 and ids[-1] == 3 and len(ids) == 5  # <bos> put the bowl \n
    toks, mask = tok.tokenize(["put the bowl", "x " * 60], max_len=48)
    assert toks.shape == (2, 48) and mask[0].sum() == 5 and mask[1].all()
    assert (toks[0, 5:] == 0).all()


def _hand_obs(size: int) -> dict[str, np.ndarray]:
    agent = np.zeros((size, size, 3), dtype=np.uint8)
    agent[0, 0] = [255, 0, 0]  # top-left red -> bottom-right after the 180 degree rotation
    wrist = np.full((size, size, 3), 255, dtype=np.uint8)
    s = math.sin(math.pi / 4)
    return {
        "agentview_image": agent,
        "wrist_image": wrist,
        "eef_pos": np.array([0.1, 0.2, 0.3]),
        "eef_quat": np.array([0.0, 0.0, s, s]),
        "gripper_qpos": np.array([0.02, -0.02]),
    }


def test_prepare_batch_on_a_hand_built_observation():
    pol = make_tiny_policy(INSTRUCTIONS, norm_stats=STATS, image_size=28)
    batch = pol.prepare_batch([_hand_obs(28)], [INSTRUCTIONS[3]])
    base, wrist, right = batch.images
    np.testing.assert_allclose(base[0, :, -1, -1].numpy(), [1.0, -1.0, -1.0])
    assert float(base[0, :, 0, 0].max()) == -1.0
    assert bool((wrist == 1.0).all()) and bool((right == -1.0).all())  # right wrist: black (zeros) image
    assert [bool(m[0]) for m in batch.image_masks] == [True, True, False]
    raw = np.array([0.1, 0.2, 0.3, 0, 0, math.pi / 2, 0.02, -0.02])
    np.testing.assert_allclose(batch.raw_state[0].numpy(), raw, atol=1e-12)
    expected = (raw - np.arange(8) * 0.1) / (2.0 + 1e-6)
    np.testing.assert_allclose(batch.state[0, :8].numpy(), expected, atol=1e-6)
    assert bool((batch.state[0, 8:] == 0).all()) and batch.state.shape == (1, 32)
    ids = pol.tokenizer.encode(INSTRUCTIONS[3])
    assert batch.tokens[0, : len(ids)].tolist() == ids and int(batch.token_masks[0].sum()) == len(ids)


def test_postprocess_adds_state_to_delta_dims_and_inverts():
    pol = make_tiny_policy(INSTRUCTIONS, norm_stats=STATS, image_size=28)
    raw = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])
    chunk = torch.zeros(1, 50, 32)
    chunk[0, :, :7] = 1.0
    chunk[0, :, 7:] = 5.0  # padded dims: dropped
    env = pol.postprocess(chunk, raw)
    assert env.shape == (1, 50, 7)
    unnorm = 1.0 * (0.25 + 1e-6) + 0.5
    np.testing.assert_allclose(env[0, 0, :6], unnorm + raw[0, :6], atol=1e-9)
    np.testing.assert_allclose(env[0, 0, 6], unnorm, atol=1e-9)  # gripper stays absolute
    back = pol.normalize_actions(env, raw)
    assert back.shape == (1, 50, 32)
    torch.testing.assert_close(back[..., :7], chunk[..., :7], atol=1e-5, rtol=0)
    assert bool((back[..., 7:] == 0).all())


def test_delta_and_absolute_are_inverse():
    a = np.random.default_rng(1).normal(size=(2, 5, 7))
    s = np.random.default_rng(2).normal(size=(2, 8))
    d = DeltaActions((0, 1, 2))({"actions": a, "state": s})
    np.testing.assert_allclose(d["actions"][..., 3:], a[..., 3:])
    np.testing.assert_allclose(AbsoluteActions((0, 1, 2))(d)["actions"], a)
