"""Choose and build the policy a run uses, from `policy.*` in the config."""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from pi0.ript.config.schema import ConfigError
from pi0.ript.policy.devices import resolve_device

log = logging.getLogger(__name__)

SMALL_POLICY_NOTE = (
    "no pi0 checkpoint at {path}: running the small built-in policy with random weights, so success rates are "
    "meaningless; put a converted pi0 LIBERO checkpoint there (see README, 'Using a real checkpoint')"
)


def load_policy(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """Returns (policy, description). The description goes into results.json: kind, checkpoint path and hash."""
    path = Path(cfg.policy.checkpoint_path)
    kind = cfg.policy.kind
    if kind == "auto":
        kind = checkpoint_kind(path) if path.is_dir() else "small"
    device = resolve_device(cfg.policy.device)
    if kind == "small":
        from pi0.ript.policy.small_policy import SmallPolicy

        if cfg.policy.kind == "auto":
            log.warning(SMALL_POLICY_NOTE.format(path=path))
        return SmallPolicy(seed=cfg.task.seed, device=device), {"kind": "small", "checkpoint": None, "checkpoint_sha256": None}
    if not path.is_dir():
        raise ConfigError(
            f"policy.checkpoint_path={str(path)!r} is not a directory: point it at a pi0/pi0.5 checkpoint (openpi "
            f"layout: model.safetensors, config.json, norm_stats.json, tokenizer; or a LeRobot directory)"
        )
    found = checkpoint_kind(path)
    if found != kind:
        raise ConfigError(f"policy.kind={kind!r} but {path / 'config.json'} is a {found} checkpoint: set policy.kind={found} (or auto)")
    from pi0.ript.policy.pi0_policy import PI0Policy

    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.policy.dtype]
    # sha256 releases the GIL: the checkpoint's several GB are hashed while the weights load, not after.
    sha256 = _in_background(checkpoint_hash, path)
    try:
        policy = PI0Policy.from_pretrained(
            path, device=device, dtype=dtype, compile=cfg.policy.compile, tokenizer_path=cfg.policy.tokenizer_path or None,
            dynamic_batch=cfg.policy.compile_dynamic_batch,
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:
        # A checkpoint the user supplied is incomplete or malformed: one line naming the file and the fix.
        message = exc.args[0] if exc.args else type(exc).__name__
        raise ConfigError(f"policy.checkpoint_path={str(path)!r}: {message}") from None
    description = {"kind": kind, "checkpoint": str(path.resolve()), "checkpoint_sha256": sha256.result()}
    return policy, description


def _in_background(function: Callable[..., Any], *args: Any) -> Future:
    """function(*args) in a daemon thread, as a Future. Not an executor: its worker thread is joined at interpreter
    exit, so a load that fails would still wait for the whole hash before the process could end."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name=f"{function.__name__}-background", daemon=True).start()
    return future


def checkpoint_kind(path: Path) -> str:
    """"pi0" or "pi05", as the checkpoint's config.json says (LeRobot's `type`, openpi's `pi05`, this project's)."""
    from pi0.model.lerobot_layout import config_variant

    try:
        return config_variant(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"policy.checkpoint_path={str(path)!r}: {exc.args[0]}") from None


def checkpoint_hash(path: Path) -> str:
    """sha256 over the checkpoint's weight and normalisation files, in name order: identifies what was evaluated."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()
