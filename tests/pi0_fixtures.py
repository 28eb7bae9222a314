"""Shared helpers for the pi0 model tests (imported explicitly; conftest.py belongs to the harness owner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# LeRobot's pi0 reference (names and shapes of the full model, a tiny model with its inputs and outputs), 5 MB, kept
# in the repository so every clone tests the model against LeRobot's numbers (copied from shared/pi0_reference).
REFERENCE = REPO_ROOT / "tests" / "data" / "pi0_reference"

# LIBERO-like instructions (libero_spatial / libero_object / libero_goal phrasing).
INSTRUCTIONS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "open the middle drawer of the cabinet",
    "put the bowl on the stove",
    "push the plate to the front of the stove",
]


def require_reference() -> Path:
    """The reference directory; a missing one is a broken checkout, not a reason to skip."""
    assert (REFERENCE / "lerobot_tiny" / "model.safetensors").is_file(), f"{REFERENCE} is incomplete: restore tests/data"
    return REFERENCE


def make_obs(rng: np.random.Generator, size: int = 128) -> dict[str, np.ndarray]:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return {
        "agentview_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "eef_pos": rng.normal(size=3),
        "eef_quat": q,
        "gripper_qpos": rng.uniform(-0.04, 0.04, size=2),
    }


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread mostly waits for a busy core."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
