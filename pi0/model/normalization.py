"""openpi's norm_stats.json: per-key statistics, applied as mean/std or as quantile (q01, q99) normalisation.

Formats accepted: openpi's nested `{"norm_stats": {"state": {...}, "actions": {...}}}` and the flat variant without
the outer key. Each entry has `mean`, `std` and, for quantile mode, `q01`, `q99` (lists of floats). Statistics cover
the first len(mean) dims; padded dims beyond them pass through untouched (openpi normalises before padding).

Two conventions, as the checkpoint was trained (`NormStats.convention`; LeRobot's statistics come from
`lerobot_layout.py`, which sets "lerobot"):

| mode | openpi (eps 1e-6, float64 here) | LeRobot (`normalize_processor.py`, eps 1e-8, float32 like its processors) |
|---|---|---|
| mean_std | (x - mean) / (std + eps); x * (std + eps) + mean | (x - mean) / (std + eps); x * std + mean |
| quantile | (x - q01) / (q99 - q01 + eps) * 2 - 1; inverse with the same range | 2 (x - q01) / r - 1; (x + 1) r / 2 + q01, r = q99 - q01, eps only where r == 0 |

Neither clips values outside [q01, q99].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NORM_STATS_NAME = "norm_stats.json"
EPS = 1e-6  # openpi's epsilon in both modes
LEROBOT_EPS = 1e-8  # LeRobot's normalizer default (its processor JSON records the value used)
CONVENTIONS = ("openpi", "lerobot")


@dataclass(frozen=True)
class NormStats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None
    convention: str = "openpi"  # "openpi" or "lerobot": which formulas and eps apply (module docstring)
    eps: float = EPS

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"normalisation convention {self.convention!r} is unknown: use one of {', '.join(CONVENTIONS)}")

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.q01 is not None and self.q99 is not None:
            d["q01"] = self.q01.tolist()
            d["q99"] = self.q99.tolist()
        if self.convention != "openpi":  # openpi's own files stay exactly openpi's format
            d["convention"] = self.convention
            d["eps"] = self.eps
        return d


def _parse_entry(entry: object, where: str) -> NormStats:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with mean/std, got {type(entry).__name__}")
    for k in ("mean", "std"):
        if k not in entry:
            raise KeyError(f"{where}: key '{k}' missing; regenerate norm_stats.json with openpi's compute_norm_stats")
    arr = {k: np.asarray(entry[k], dtype=np.float64) for k in ("mean", "std", "q01", "q99") if entry.get(k) is not None}
    convention = entry.get("convention", "openpi")
    eps = float(entry.get("eps", LEROBOT_EPS if convention == "lerobot" else EPS))
    return NormStats(arr["mean"], arr["std"], arr.get("q01"), arr.get("q99"), convention=convention, eps=eps)


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
    if stats.convention == "lerobot":
        out[..., :n] = _lerobot(x[..., :n], stats, mode, key, n, inverse=False)
    elif mode == "mean_std":
        out[..., :n] = (x[..., :n] - stats.mean[:n]) / (stats.std[:n] + stats.eps)
    elif mode == "quantile":
        q01, q99 = _quantiles(stats, key)
        out[..., :n] = (x[..., :n] - q01[:n]) / (q99[:n] - q01[:n] + stats.eps) * 2.0 - 1.0
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}; use 'mean_std' or 'quantile'")
    return out


def unnormalize(x: np.ndarray, stats: NormStats, mode: str, key: str = "?") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = min(len(stats.mean), x.shape[-1])
    out = x.copy()
    if stats.convention == "lerobot":
        out[..., :n] = _lerobot(x[..., :n], stats, mode, key, n, inverse=True)
    elif mode == "mean_std":
        out[..., :n] = x[..., :n] * (stats.std[:n] + stats.eps) + stats.mean[:n]
    elif mode == "quantile":
        q01, q99 = _quantiles(stats, key)
        out[..., :n] = (x[..., :n] + 1.0) / 2.0 * (q99[:n] - q01[:n] + stats.eps) + q01[:n]
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}; use 'mean_std' or 'quantile'")
    return out


def _lerobot(x: np.ndarray, stats: NormStats, mode: str, key: str, n: int, inverse: bool) -> np.ndarray:
    """LeRobot's `_NormalizationMixin._apply_transform`, in float32 and in its order of operations, so values (and
    pi0.5's state bins, which sit on exact bin edges such as q01 -> -1) come out as LeRobot's processors give them."""
    f32 = np.float32
    x = x.astype(f32)
    if mode == "mean_std":
        mean, std = stats.mean[:n].astype(f32), stats.std[:n].astype(f32)
        return x * std + mean if inverse else (x - mean) / (std + f32(stats.eps))
    if mode == "quantile":
        q01, q99 = (q[:n].astype(f32) for q in _quantiles(stats, key))
        denom = q99 - q01
        denom = np.where(denom == 0, f32(stats.eps), denom)  # eps only for a zero range
        return (x + f32(1.0)) * denom / f32(2.0) + q01 if inverse else f32(2.0) * (x - q01) / denom - f32(1.0)
    raise ValueError(f"unknown normalisation mode {mode!r}; use 'mean_std' or 'quantile'")


def identity_stats(state_dim: int = 8, action_dim: int = 7) -> dict[str, NormStats]:
    """mean 0, std 1, q01 -1, q99 1: normalisation that changes (almost) nothing, for demos and tests."""

    def one(n: int) -> NormStats:
        return NormStats(np.zeros(n), np.ones(n), -np.ones(n), np.ones(n))

    return {"state": one(state_dim), "actions": one(action_dim)}
