"""A small real torch policy that implements the rollout protocol without a checkpoint.

It exists so the runners, the benchmarks and `pi0-ript eval` run end to end on a fresh machine: a strided CNN over a
downsampled agent-view image plus the proprioceptive state, an MLP head producing a whole action chunk. Its weights
are random (seeded), so its success rate means nothing; it is deterministic for a given seed and input, and each
sample's output depends on that sample alone (no batch statistics), so batched and per-sample inference agree.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pi0.ript.policy.protocol import ACTION_DIM, PolicyOutput

_INPUT_PIXELS = 32  # images are pooled to 32x32 first: the policy is a stand-in, not a vision model


class SmallPolicy(nn.Module):
    def __init__(self, chunk_size: int = 50, seed: int = 0, action_scale: float = 0.5, device: str = "cpu"):
        super().__init__()
        self.chunk_size = chunk_size
        self.action_dim = ACTION_DIM
        self.action_scale = action_scale
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # seeded construction without disturbing the caller's RNG stream
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(32 * 16 + 9, 128), nn.ReLU(), nn.Linear(128, chunk_size * ACTION_DIM))
        torch.random.set_rng_state(generator_state)
        self.device = torch.device(device)
        self.to(self.device).eval()

    def forward(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.encoder(images), state], dim=-1)
        chunk = self.head(features).view(-1, self.chunk_size, ACTION_DIM)
        arm = torch.tanh(chunk[..., :6]) * self.action_scale
        gripper = torch.where(chunk[..., 6:] >= 0, 1.0, -1.0)  # LIBERO's gripper command is binary
        return torch.cat([arm, gripper], dim=-1)

    @torch.inference_mode()
    def predict_chunks(self, observations: Sequence[dict[str, np.ndarray]], instructions: Sequence[str]) -> PolicyOutput:
        images = torch.from_numpy(np.stack([obs["agentview_image"] for obs in observations])).to(self.device)
        images = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        images = F.interpolate(images, size=(_INPUT_PIXELS, _INPUT_PIXELS), mode="area")
        state = np.stack([np.concatenate([obs["eef_pos"], obs["eef_quat"], obs["gripper_qpos"]]) for obs in observations])
        state_t = torch.from_numpy(state).float().to(self.device)
        actions = self(images, state_t).double().cpu().numpy()
        return PolicyOutput(actions=actions)
