"""Resumable training checkpoints, written so that a crash at any instant leaves the last good one intact.

Layout under `<output_dir>/checkpoints/`:
    iter_000012/            one complete checkpoint (a directory is only ever renamed into place when complete)
        policy/             the pi0 policy as `PI0Policy.save_pretrained` writes it (safetensors + config + norm stats)
        rl_state.safetensors  the whole `RLPolicy` state (pi0 weights, noise scale, CFG embeddings): what resume loads
        optimizer.pt        AdamW and learning-rate schedule state
        rank_<r>.pt         per-rank RNG states (torch, numpy, python, rollout and update generators, context sampler)
        trainer.json        iteration, global optimizer step, config (also as config.yaml)
    LATEST                  the name of the newest complete checkpoint, replaced atomically (write tmp, fsync, rename)

Write order: files go into `iter_N.tmp/`, are fsynced, the directory is renamed to `iter_N/`, then LATEST is
replaced. A SIGKILL before the last rename leaves LATEST pointing at the previous complete checkpoint; leftovers
(`*.tmp`, superseded checkpoints) are removed by the next successful save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

LATEST = "LATEST"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def staging_dir(output_dir: str | Path, iteration: int) -> Path:
    """Where a checkpoint is written before it is complete (rank 0 creates it; every rank writes its RNG file)."""
    return checkpoint_root(output_dir) / f"iter_{iteration:06d}.tmp"


def rng_state(extra: dict[str, Any]) -> dict[str, Any]:
    """Every RNG the trainer draws from, for one rank; `extra` holds its own generators' states."""
    return {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        **extra,
    }


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def write_rank_state(staging: Path, rank: int, state: dict[str, Any]) -> None:
    path = staging / f"rank_{rank}.pt"
    torch.save(state, path)
    _fsync_file(path)


def finalize(
    output_dir: str | Path,
    iteration: int,
    staging: Path,
    module: torch.nn.Module,
    save_policy: Callable[[Path], None],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    config: DictConfig,
    keep_last: int = 1,
) -> Path:
    """Rank 0: write the shared files into `staging`, then make it the newest checkpoint atomically."""
    save_policy(staging / "policy")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(staging / "rl_state.safetensors"))
    torch.save(optimizer_state, staging / "optimizer.pt")
    (staging / "trainer.json").write_text(json.dumps({**trainer_state, "iteration": iteration}, indent=2))
    (staging / "config.yaml").write_text(OmegaConf.to_yaml(config))
    for path in staging.rglob("*"):
        if path.is_file():
            _fsync_file(path)
    _fsync_dir(staging)
    root = checkpoint_root(output_dir)
    final = root / f"iter_{iteration:06d}"
    if final.exists():  # a re-run of the same iteration after a crash between rename and LATEST: replace it
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_dir(root)
    pointer_tmp = root / f"{LATEST}.tmp"
    pointer_tmp.write_text(final.name)
    _fsync_file(pointer_tmp)
    os.replace(pointer_tmp, root / LATEST)
    _fsync_dir(root)
    _prune(root, keep=final.name, keep_last=keep_last)
    return final


def _prune(root: Path, keep: str, keep_last: int) -> None:
    complete = sorted(p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
    survivors = {p.name for p in complete[-keep_last:]} | {keep}
    for path in root.glob("iter_*"):
        if path.name not in survivors:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None if there is none."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "trainer.json").is_file():
        raise RuntimeError(f"{pointer} names {path.name}, which is incomplete: delete {pointer} to start over")
    return path


def load_module_state(path: Path, module: torch.nn.Module) -> None:
    state = load_file(str(path / "rl_state.safetensors"))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{path}/rl_state.safetensors does not match the policy (missing {missing[:3]}, unexpected {unexpected[:3]}):"
            " resume with the same algo.loss and model"
        )


def load_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "trainer.json").read_text())


def load_rank_state(path: Path, rank: int) -> dict[str, Any]:
    file = path / f"rank_{rank}.pt"
    if not file.is_file():
        raise RuntimeError(f"{file} missing: resume with the same number of processes that wrote the checkpoint")
    return torch.load(file, map_location="cpu", weights_only=False)  # RNG states are CPU tensors wherever they were saved
