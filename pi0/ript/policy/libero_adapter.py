"""The LIBERO adapter: LIBERO observations to pi0's model slots, and the pi0_libero pipelines built from the model's
generic transforms (openpi keeps robot adapters in `policies/`, outside the model; so does this project).

Inputs, one observation at a time:
  LiberoInputs -> Rotate180 -> ResizeWithPad(size) -> ImagesToModel -> Normalize("state") -> BuildPrompt(format)
  -> PadState(32) -> TokenizePrompt(tokenizer, 48)
Outputs, batched ([B, H, D] actions, [B, S] raw state):
  Unnormalize("actions") -> AbsoluteActions(delta dims) -> KeepActionDims(7)
and the inverse of the outputs, for training targets:
  DeltaActions(delta dims) -> Normalize("actions") -> PadActions(32)
The reach task emits the same observation keys (`pi0.ript.env.sim.OBS_KEYS`), so it goes through this adapter too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from pi0.model.normalization import NormStats
from pi0.model.tokenizer import PromptTokenizer
from pi0.model.transforms import (
    IMAGE_SLOTS,
    AbsoluteActions,
    BuildPrompt,
    Data,
    DeltaActions,
    ImagesToModel,
    KeepActionDims,
    Normalize,
    PadActions,
    PadState,
    ResizeWithPad,
    Rotate180,
    TokenizePrompt,
    Transform,
    Unnormalize,
    compose,
)

STATE_DIM = 8  # eef_pos (3) + axis-angle (3) + gripper_qpos (2)


def quat_xyzw_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """robosuite's quat2axisangle (the one openpi's LIBERO client uses): (x, y, z, w) -> rotation vector."""
    q = np.asarray(quat, dtype=np.float64).copy()
    q[3] = min(max(q[3], -1.0), 1.0)
    den = math.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den


@dataclass(frozen=True)
class LiberoInputs:
    """Env observation + instruction -> model slots: agent view -> base, wrist -> left wrist, right wrist = zeros
    (masked); state = eef_pos + axis-angle(eef_quat) + gripper_qpos."""

    def __call__(self, data: Data) -> Data:
        obs = data["observation"]
        for key in ("agentview_image", "wrist_image", "eef_pos", "eef_quat", "gripper_qpos"):
            if key not in obs:
                raise KeyError(f"observation key '{key}' missing (have {sorted(obs)}); the env must emit sim.OBS_KEYS")
        base = np.asarray(obs["agentview_image"], dtype=np.uint8)
        state = np.concatenate(
            [
                np.asarray(obs["eef_pos"], dtype=np.float64),
                quat_xyzw_to_axis_angle(obs["eef_quat"]),
                np.asarray(obs["gripper_qpos"], dtype=np.float64),
            ]
        )
        return {
            "images": {
                IMAGE_SLOTS[0]: base,
                IMAGE_SLOTS[1]: np.asarray(obs["wrist_image"], dtype=np.uint8),
                IMAGE_SLOTS[2]: np.zeros_like(base),
            },
            "image_masks": {IMAGE_SLOTS[0]: True, IMAGE_SLOTS[1]: True, IMAGE_SLOTS[2]: False},
            "state": state,
            "raw_state": state.copy(),
            "prompt": data["prompt"],
        }


def libero_input_transforms(
    tokenizer: PromptTokenizer,
    stats: Mapping[str, NormStats],
    image_size: int,
    state_dim: int = 32,
    max_token_len: int = 48,
    mode: str = "mean_std",
    prompt_format: str = "openpi",
) -> Transform:
    return compose(
        [
            LiberoInputs(),
            Rotate180(),
            ResizeWithPad(image_size),
            ImagesToModel(),
            Normalize("state", stats, mode),
            BuildPrompt(prompt_format),
            PadState(state_dim),
            TokenizePrompt(tokenizer, max_token_len, prompt_format),
        ]
    )


def libero_output_transforms(
    stats: Mapping[str, NormStats], delta_dims: tuple[int, ...], env_action_dim: int = 7, mode: str = "mean_std"
) -> Transform:
    return compose([Unnormalize("actions", stats, mode), AbsoluteActions(delta_dims), KeepActionDims(env_action_dim)])


def libero_action_targets(
    stats: Mapping[str, NormStats], delta_dims: tuple[int, ...], action_dim: int = 32, mode: str = "mean_std"
) -> Transform:
    """Env actions [B, H, 7] + raw state -> normalised, padded model actions [B, H, 32]."""
    return compose([DeltaActions(delta_dims), Normalize("actions", stats, mode), PadActions(action_dim)])
