"""pi0's whole LIBERO input and output path on a recorded real observation (libero_spatial task 0, init state 0,
256 px; recorded by scripts/record_libero_observation.py). Expected values are computed here independently."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pi0.model.normalization import NormStats
from pi0.ript.policy.pi0_policy import make_tiny_policy

RECORDED = Path(__file__).parent / "data" / "libero_spatial_task0_init0.npz"


def _load():
    data = np.load(RECORDED)
    observation = {k: data[k] for k in ("agentview_image", "wrist_image", "eef_pos", "eef_quat", "gripper_qpos")}
    return observation, str(data["instruction"])


def _expected_image(image: np.ndarray) -> np.ndarray:
    """Rotate 180°, resize 256 -> 224 (square: no padding) with PIL bilinear, scale to [-1, 1], channels first."""
    rotated = np.ascontiguousarray(image[::-1, ::-1])
    resized = np.asarray(Image.fromarray(rotated).resize((224, 224), resample=Image.BILINEAR), dtype=np.float32)
    return (resized / 127.5 - 1.0).transpose(2, 0, 1)


def _axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = quat_xyzw
    angle = 2.0 * math.acos(max(-1.0, min(1.0, w)))
    sin_half = math.sqrt(max(1.0 - w * w, 0.0))
    return np.zeros(3) if sin_half < 1e-10 else np.array([x, y, z]) / sin_half * angle


def test_recorded_libero_observation_through_inputs_and_outputs():
    observation, instruction = _load()
    assert observation["agentview_image"].shape == (256, 256, 3) and "black bowl" in instruction
    state_stats = NormStats(mean=np.linspace(-0.5, 0.5, 8), std=np.linspace(0.5, 2.0, 8))
    action_stats = NormStats(mean=np.linspace(-0.1, 0.1, 7), std=np.full(7, 0.3))
    policy = make_tiny_policy([instruction], norm_stats={"state": state_stats, "actions": action_stats}, image_size=224)

    inputs = policy.prepare_batch([observation], [instruction])
    base, left_wrist, right_wrist = inputs.images
    np.testing.assert_allclose(base[0].numpy(), _expected_image(observation["agentview_image"]), atol=1e-6)
    np.testing.assert_allclose(left_wrist[0].numpy(), _expected_image(observation["wrist_image"]), atol=1e-6)
    assert right_wrist.abs().max() <= 1.0 and [bool(m[0]) for m in inputs.image_masks] == [True, True, False]

    raw_state = np.concatenate([observation["eef_pos"], _axis_angle(observation["eef_quat"]), observation["gripper_qpos"]])
    np.testing.assert_allclose(inputs.raw_state[0].numpy(), raw_state, atol=1e-9)
    expected_state = (raw_state - state_stats.mean) / (state_stats.std + 1e-6)
    np.testing.assert_allclose(inputs.state[0, :8].numpy(), expected_state, atol=1e-5)
    assert inputs.state.shape == (1, 32) and float(inputs.state[0, 8:].abs().max()) == 0.0
    assert 0 < int(inputs.token_masks.sum()) <= 48 and inputs.tokens.shape == (1, 48)

    # Output: unnormalise, add the state back to dims 0-5 (pi0_libero's delta actions), gripper absolute, 7 dims.
    chunk = torch.randn(1, policy.chunk_size, 32, generator=torch.Generator().manual_seed(0))
    actions = policy.postprocess(chunk, inputs.raw_state)
    unnormalised = chunk[0, :, :7].numpy() * (action_stats.std + 1e-6) + action_stats.mean
    expected = unnormalised.copy()
    expected[:, :6] += raw_state[:6]
    assert actions.shape == (1, policy.chunk_size, 7)
    np.testing.assert_allclose(actions[0], expected, atol=1e-5)
    # and the inverse used for training targets takes env actions back to the model's space
    back = policy.normalize_actions(actions, inputs.raw_state)
    np.testing.assert_allclose(back[0, :, :7].numpy(), chunk[0, :, :7].numpy(), atol=1e-4)

    # the model runs on it end to end
    output = policy.predict_chunks([observation], [instruction])
    assert output.actions.shape == (1, policy.chunk_size, 7) and np.isfinite(output.actions).all()
