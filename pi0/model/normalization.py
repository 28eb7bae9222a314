"""openpi's norm_stats.json: per-key statistics, applied as mean/std or as quantile (q01, q99) normalisation.

Formats accepted: openpi's nested `{"norm_stats": {"state": {...}, "actions": {...}}}` and the flat variant without
the outer key. Each entry has `mean`, `std` and, for quantile mode, `q01`, `q99` (lists of floats). Statistics cover
the first len(mean) dims; padded dims beyond them pass through untouched (openpi normalises before padding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NORM_STATS_NAME = "norm_stats.json"
EPS = 1e-6  # openpi's epsilon in both modes


@dataclass(frozen=True)
class NormStats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def to_json(self) -> dict[str, list[float]]:
        d = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.q01 is not None and self.q99 is not None:
            d["q01"] = self.q01.tolist()
            d["q99"] = self.q99.tolist()
        return d


def _parse_entry(entry: object, where: str) -> NormStats:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with mean/std, got {type(entry).__name__}")
    for k in ("mean", "std"):
        if k not in entry:
            raise KeyError(f"{where}: key '{k}' missing; regenerate norm_stats.json with openpi's compute_norm_stats")
    arr = {k: np.asarray(entry[k], dtype=np.float64) for k in ("mean", "std", "q01", "q99") if entry.get(k) is not None}
    return NormStats(arr["mean"], arr["std"], arr.get("q01"), arr.get("q99"))


def load_norm_stats(path: str | Path, required: tuple[str, ...] = ("state", "actions")) -> dict[str, NormStats]:
    """Read norm_stats.json (nested or flat). Missing file or key -> one-line error naming both."""
    path = Path(path)
    if path.is_dir():
        path = path / NORM_STATS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: norm_stats.json not found; copy it from the openpi checkpoint's assets/<asset_id>/norm_stats.json"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); re-export norm_stats.json") from None
    stats = data["norm_stats"] if isinstance(data, dict) and "norm_stats" in data else data
    if not isinstance(stats, dict):
        raise ValueError(f"{path}: expected a JSON object of per-key statistics")
    for key in required:
        if key not in stats:
            raise KeyError(f"{path}: key '{key}' missing from norm_stats (have {sorted(stats)}); add its statistics")
    return {k: _parse_entry(v, f"{path}: '{k}'") for k, v in stats.items()}


def save_norm_stats(stats: dict[str, NormStats], path: str | Path) -> Path:
    """Writes openpi's nested format."""
    path = Path(path)
    if path.is_dir():
        path = path / NORM_STATS_NAME
    path.write_text(json.dumps({"norm_stats": {k: v.to_json() for k, v in stats.items()}}, indent=2) + "\n")
    return path


def _quantiles(stats: NormStats, key: str) -> tuple[np.ndarray, np.ndarray]:
    if stats.q01 is None or stats.q99 is None:
        raise KeyError(f"norm_stats '{key}': q01/q99 missing but quantile normalisation was asked; use norm_mode='mean_std'")
    return stats.q01, stats.q99


def normalize(x: np.ndarray, stats: NormStats, mode: str, key: str = "?") -> np.ndarray:
    """Normalise the first len(stats) dims of the last axis; the rest are copied."""
    x = np.asarray(x, dtype=np.float64)
    n = min(len(stats.mean), x.shape[-1])
    out = x.copy()
    if mode == "mean_std":
        out[..., :n] = (x[..., :n] - stats.mean[:n]) / (stats.std[:n] + EPS)
    elif mode == "quantile":
        q01, q99 = _quantiles(stats, key)
        out[..., :n] = (x[..., :n] - q01[:n]) / (q99[:n] - q01[:n] + EPS) * 2.0 - 1.0
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}; use 'mean_std' or 'quantile'")
    return out


def unnormalize(x: np.ndarray, stats: NormStats, mode: str, key: str = "?") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = min(len(stats.mean), x.shape[-1])
    out = x.copy()
    if mode == "mean_std":
        out[..., :n] = x[..., :n] * (stats.std[:n] + EPS) + stats.mean[:n]
    elif mode == "quantile":
        q01, q99 = _quantiles(stats, key)
        out[..., :n] = (x[..., :n] + 1.0) / 2.0 * (q99[:n] - q01[:n] + EPS) + q01[:n]
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}; use 'mean_std' or 'quantile'")
    return out


def identity_stats(state_dim: int = 8, action_dim: int = 7) -> dict[str, NormStats]:
    """mean 0, std 1, q01 -1, q99 1: normalisation that changes (almost) nothing, for demos and tests."""

    def one(n: int) -> NormStats:
        return NormStats(np.zeros(n), np.ones(n), -np.ones(n), np.ones(n))

    return {"state": one(state_dim), "actions": one(action_dim)}
