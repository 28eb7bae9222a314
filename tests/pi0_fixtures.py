"""Shared helpers for the pi0 model tests (imported explicitly; conftest.py belongs to the harness owner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REFERENCE = SHARED / "pi0_reference"

# LIBERO-like instructions (libero_spatial / libero_object / libero_goal phrasing).
INSTRUCTIONS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "open the middle drawer of the cabinet",
    "put the bowl on the stove",
    "push the plate to the front of the stove",
]


def require_reference() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} absent: the shared pi0 reference data is not mounted next to the repo")
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} absent: no pi0 reference files in shared/")
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
