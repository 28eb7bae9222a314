"""pi0 / pi0.5 sizes and checkpoint-level settings in one dataclass, with `full` and `tiny` presets.

`full` is openpi's pi0 (PaliGemma gemma_2b + expert gemma_300m + SigLIP so400m at 224 px). `tiny` keeps every
structural choice (8 heads, 1 KV head, two towers of equal depth, chunk 50, 32-dim state/action) with small widths,
so tests and the CPU demo run the exact same code path.

`pi05=True` selects pi0.5 (openpi's field name): the same towers, with the flow time entering the action expert
through adaptive RMSNorms (`time_mlp_in/out` -> adaRMS condition) instead of being mixed into the action tokens, and
no state token (pi0.5 reads the state as text in its prompt). The presets (`full`, `tiny`) and foreign config.json
files then default to pi0.5's prompt budget of 200 tokens and quantile normalisation (PI05_DEFAULTS).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GemmaDims:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class VisionDims:
    """SigLIP vision tower. `image_size` sets the number of image tokens: (image_size / patch_size) ** 2."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int = 14
    image_size: int = 224


GEMMA_2B = GemmaDims(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256)
GEMMA_300M = GemmaDims(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)
SIGLIP_SO400M = VisionDims(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
PALIGEMMA_VOCAB = 257_152
# What a pi0.5 preset or a foreign pi0.5 config.json changes beside the model itself, unless it says otherwise.
PI05_DEFAULTS = {"max_token_len": 200, "norm_mode": "quantile"}


@dataclass(frozen=True)
class PI0Config:
    vlm: GemmaDims = GEMMA_2B
    expert: GemmaDims = GEMMA_300M
    vision: VisionDims = SIGLIP_SO400M
    vocab_size: int = PALIGEMMA_VOCAB
    chunk_size: int = 50
    max_action_dim: int = 32
    max_state_dim: int = 32
    num_inference_steps: int = 10
    # Sinusoidal flow-time embedding periods (openpi's defaults).
    min_period: float = 4e-3
    max_period: float = 4.0
    # Flow-time sampling for training: Beta(alpha, beta) * scale + offset, i.e. in (0.001, 1).
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_scale: float = 0.999
    time_offset: float = 0.001
    # Prompt token budget (pi0: 48; pi0.5: 200, set by the presets, see PI05_DEFAULTS).
    max_token_len: int = 48
    # pi0.5: adaRMS time conditioning in the action expert, no state token, no state_proj / action_time_mlp.
    pi05: bool = False
    # --- policy / checkpoint-level settings (they travel in config.json) ---
    # Which env-action dims the checkpoint predicts relative to the state (openpi's extra delta transform for
    # pi0_libero: dims 0-5 are deltas to the eef pose, the gripper (6) stays absolute).
    delta_action_dims: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    env_action_dim: int = 7
    # "mean_std" (pi0) or "quantile" (pi0.5-style); selects how norm_stats.json is applied.
    norm_mode: str = "mean_std"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.vlm.depth != self.expert.depth:
            raise ValueError(f"vlm depth {self.vlm.depth} != expert depth {self.expert.depth}: the towers attend per layer")
        if (self.vlm.num_heads, self.vlm.num_kv_heads, self.vlm.head_dim) != (
            self.expert.num_heads,
            self.expert.num_kv_heads,
            self.expert.head_dim,
        ):
            raise ValueError("vlm and expert must share num_heads, num_kv_heads and head_dim (joint attention)")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(f"image_size {self.vision.image_size} is not a multiple of patch {self.vision.patch_size}")
        if self.norm_mode not in ("mean_std", "quantile"):
            raise ValueError(f"norm_mode must be 'mean_std' or 'quantile', got {self.norm_mode!r}")

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def tokens_per_image(self) -> int:
        return (self.vision.image_size // self.vision.patch_size) ** 2

    @property
    def variant(self) -> str:
        """"pi0" or "pi05" (LeRobot's policy type names)."""
        return "pi05" if self.pi05 else "pi0"

    # ---- presets ----
    @staticmethod
    def _variant_defaults(overrides: dict[str, Any]) -> dict[str, Any]:
        if overrides.get("pi05"):
            return {**PI05_DEFAULTS, **overrides}
        return overrides

    @classmethod
    def full(cls, **overrides: Any) -> "PI0Config":
        """openpi's pi0, or with pi05=True its pi0.5 (prompt 200 tokens, quantile normalisation)."""
        return cls(**cls._variant_defaults(overrides))

    @classmethod
    def tiny(cls, image_size: int = 112, vocab_size: int = 1024, **overrides: Any) -> "PI0Config":
        """Small widths, same structure. 112 px (64 image tokens) keeps a batch of 8 well under a second on CPU."""
        overrides = cls._variant_defaults(overrides)
        return cls(
            vlm=GemmaDims(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
            expert=GemmaDims(width=48, depth=2, mlp_dim=96, num_heads=8, num_kv_heads=1, head_dim=16),
            vision=VisionDims(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size
            ),
            vocab_size=vocab_size,
            **overrides,
        )

    @classmethod
    def from_dims_json(cls, path: str | Path) -> "PI0Config":
        """The `dims.json` written next to a LeRobot-built reference model (shared/pi0_reference/lerobot_tiny, or
        pi05_reference/lerobot_tiny, whose `"type": "pi05"` selects pi0.5)."""
        d = json.loads(Path(path).read_text())
        variant = {"pi05": True} if d.get("type") == "pi05" else {}
        if "tokenizer_max_length" in d:
            variant["max_token_len"] = d["tokenizer_max_length"]
        return cls(
            **cls._variant_defaults(variant),
            vlm=GemmaDims(**d["vlm"]),
            expert=GemmaDims(**d["expert"]),
            vision=VisionDims(**d["vision"]),
            vocab_size=d["vocab_size"],
            chunk_size=d["chunk_size"],
            max_action_dim=d["max_action_dim"],
            max_state_dim=d["max_state_dim"],
            num_inference_steps=d["num_inference_steps"],
            min_period=d["min_period"],
            max_period=d["max_period"],
        )

    # ---- (de)serialisation ----
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["delta_action_dims"] = list(self.delta_action_dims)
        d["type"] = self.variant
        d["format"] = "pi0-ript"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> "PI0Config":
        """Our own config.json, or LeRobot's / openpi's pi0 or pi0.5 config (variant names, chunk and dim fields).

        pi0.5 is recognised by openpi's `"pi05": true` or LeRobot's `"type": "pi05"`."""
        if d.get("format") == "pi0-ript":
            known = {f.name for f in dataclasses.fields(cls)}
            kw = {k: v for k, v in d.items() if k in known}
            kw["vlm"] = GemmaDims(**d["vlm"])
            kw["expert"] = GemmaDims(**d["expert"])
            kw["vision"] = VisionDims(**d["vision"])
            kw["delta_action_dims"] = tuple(d.get("delta_action_dims", ()))
            return cls(**kw)
        return cls._from_foreign(d, source)

    @classmethod
    def _from_foreign(cls, d: dict[str, Any], source: str) -> "PI0Config":
        variants = {"gemma_2b": GEMMA_2B, "gemma_300m": GEMMA_300M}
        kw: dict[str, Any] = {}
        if d.get("pi05") or d.get("type") == "pi05":
            kw["pi05"] = True
        for key, name in (("paligemma_variant", "vlm"), ("action_expert_variant", "expert")):
            if key in d:
                if d[key] not in variants:
                    raise ValueError(f"{source}: unknown {key} {d[key]!r}; known: {sorted(variants)}")
                kw[name] = variants[d[key]]
        # LeRobot: chunk_size / max_action_dim / max_state_dim; openpi: action_horizon / action_dim.
        for ours, theirs in (
            ("chunk_size", ("chunk_size", "action_horizon")),
            ("max_action_dim", ("max_action_dim", "action_dim")),
            ("max_state_dim", ("max_state_dim", "action_dim")),
            ("num_inference_steps", ("num_inference_steps", "num_steps")),
            ("max_token_len", ("tokenizer_max_length", "max_token_len")),
            ("min_period", ("min_period",)),
            ("max_period", ("max_period",)),
        ):
            for t in theirs:
                if t in d:
                    kw[ours] = d[t]
                    break
        res = d.get("image_resolution")
        if res is not None:
            kw["vision"] = dataclasses.replace(SIGLIP_SO400M, image_size=int(res[0]))
        if "delta_action_dims" in d:
            kw["delta_action_dims"] = tuple(d["delta_action_dims"])
        return cls(**cls._variant_defaults(kw))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PI0Config":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config.json missing; save one with PI0Config.save or copy the checkpoint's")
        return cls.from_dict(json.loads(path.read_text()), source=str(path))
