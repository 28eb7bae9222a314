"""pi0's input and output transforms, small frozen dataclasses each doing one step (openpi's `transforms.py`).

A robot adapter outside the model package (for LIBERO: `pi0.ript.policy.libero_adapter`) turns an env observation
into model slots and composes these into its pipelines, e.g. for LIBERO:
  LiberoInputs -> Rotate180 -> ResizeWithPad(size) -> ImagesToModel -> Normalize("state") -> BuildPrompt(format)
  -> PadState(32) -> TokenizePrompt(tokenizer, 48)
(BuildPrompt sits after Normalize: pi0.5 writes the normalised state into its prompt; see tokenizer.PROMPT_FORMATS.)
Outputs, batched ([B, H, D] actions, [B, S] raw state):
  Unnormalize("actions") -> AbsoluteActions(delta dims) -> KeepActionDims(7)
and the inverse of the outputs, for training targets:
  DeltaActions(delta dims) -> Normalize("actions") -> PadActions(32)

Nothing here knows an env: the model package reads no env keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from .normalization import NormStats, normalize, unnormalize
from .tokenizer import PromptTokenizer, build_prompt, check_prompt_format

Data = dict[str, Any]
Transform = Callable[[Data], Data]

# Model image slots in pi0's order (an adapter masks out a slot its robot does not have).
IMAGE_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


def compose(transforms: Sequence[Transform]) -> Transform:
    def run(data: Data) -> Data:
        for t in transforms:
            data = t(data)
        return data

    return run


def pad_geometry(cur_h: int, cur_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """openpi's resize_with_pad layout: the aspect-kept size inside (height, width) and where it is pasted.
    -> (new_h, new_w, top, left)."""
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    return new_h, new_w, max(0, int((height - new_h) / 2)), max(0, int((width - new_w) / 2))


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """openpi client's resize: aspect kept, PIL bilinear, centred on a black canvas; uint8 [H, W, 3] in and out."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(pil_resize_with_pad(Image.fromarray(np.ascontiguousarray(image)), height, width))


def pil_resize_with_pad(image: Image.Image, height: int, width: int) -> Image.Image:
    """`resize_with_pad` on a PIL image (saves the array round trip when the caller already holds one)."""
    if image.size == (width, height):
        return image
    new_h, new_w, top, left = pad_geometry(image.height, image.width, height, width)
    resized = image.resize((new_w, new_h), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (left, top))
    return canvas


@dataclass(frozen=True)
class Rotate180:
    """LIBERO renders upside down and mirrored relative to the training data: img[::-1, ::-1]."""

    def __call__(self, data: Data) -> Data:
        return {**data, "images": {k: rotate_180(v) for k, v in data["images"].items()}}


def rotate_180(image: np.ndarray) -> np.ndarray:
    """[H, W, C] turned by 180 degrees (rows and columns reversed), contiguous."""
    return np.ascontiguousarray(image[::-1, ::-1])


@dataclass(frozen=True)
class ResizeWithPad:
    size: int = 224

    def __call__(self, data: Data) -> Data:
        imgs = {k: resize_with_pad(v, self.size, self.size) for k, v in data["images"].items()}
        return {**data, "images": imgs}


@dataclass(frozen=True)
class ImagesToModel:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1]."""

    def __call__(self, data: Data) -> Data:
        imgs = {
            k: (np.asarray(v, dtype=np.float32) / 255.0 * 2.0 - 1.0).transpose(2, 0, 1).copy()
            for k, v in data["images"].items()
        }
        return {**data, "images": imgs}


@dataclass(frozen=True)
class Normalize:
    key: str
    stats: Mapping[str, NormStats]
    mode: str = "mean_std"

    def __call__(self, data: Data) -> Data:
        if self.key not in self.stats:
            raise KeyError(f"norm_stats has no '{self.key}' entry (have {sorted(self.stats)}); fix norm_stats.json")
        return {**data, self.key: normalize(data[self.key], self.stats[self.key], self.mode, self.key)}


@dataclass(frozen=True)
class Unnormalize:
    key: str
    stats: Mapping[str, NormStats]
    mode: str = "mean_std"

    def __call__(self, data: Data) -> Data:
        if self.key not in self.stats:
            raise KeyError(f"norm_stats has no '{self.key}' entry (have {sorted(self.stats)}); fix norm_stats.json")
        return {**data, self.key: unnormalize(data[self.key], self.stats[self.key], self.mode, self.key)}


def _pad_last(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1] > dim:
        raise ValueError(f"{what} has {x.shape[-1]} dims, more than the model's {dim}; raise max_{what}_dim")
    pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, pad)


@dataclass(frozen=True)
class PadState:
    dim: int = 32

    def __call__(self, data: Data) -> Data:
        return {**data, "state": _pad_last(data["state"], self.dim, "state")}


@dataclass(frozen=True)
class PadActions:
    dim: int = 32

    def __call__(self, data: Data) -> Data:
        return {**data, "actions": _pad_last(data["actions"], self.dim, "action")}


@dataclass(frozen=True)
class BuildPrompt:
    """The task -> the text the checkpoint was trained on ("openpi": unchanged; "pi05_state": needs the normalised,
    unpadded state, so it runs after Normalize("state") and before PadState)."""

    prompt_format: str = "openpi"

    def __post_init__(self) -> None:
        check_prompt_format(self.prompt_format)

    def __call__(self, data: Data) -> Data:
        if self.prompt_format == "openpi":
            return data
        state = data["state"] if self.prompt_format == "pi05_state" else None
        return {**data, "prompt": build_prompt(self.prompt_format, data["prompt"], state)}


@dataclass(frozen=True)
class TokenizePrompt:
    tokenizer: PromptTokenizer
    max_len: int = 48
    prompt_format: str = "openpi"

    def __call__(self, data: Data) -> Data:
        ids, mask = self.tokenizer.tokenize([data["prompt"]], self.max_len, self.prompt_format)
        return {**data, "tokens": ids[0], "token_mask": mask[0]}


@dataclass(frozen=True)
class AbsoluteActions:
    """Add the state back to the action dims the checkpoint predicts as deltas: actions [..., H, D], state [..., S]."""

    dims: tuple[int, ...]

    def __call__(self, data: Data) -> Data:
        a = np.array(data["actions"], dtype=np.float64)
        if self.dims:
            idx = list(self.dims)
            a[..., idx] += np.asarray(data["state"], dtype=np.float64)[..., None, idx]
        return {**data, "actions": a}


@dataclass(frozen=True)
class DeltaActions:
    """Inverse of AbsoluteActions (for training targets)."""

    dims: tuple[int, ...]

    def __call__(self, data: Data) -> Data:
        a = np.array(data["actions"], dtype=np.float64)
        if self.dims:
            idx = list(self.dims)
            a[..., idx] -= np.asarray(data["state"], dtype=np.float64)[..., None, idx]
        return {**data, "actions": a}


@dataclass(frozen=True)
class KeepActionDims:
    dim: int = 7

    def __call__(self, data: Data) -> Data:
        return {**data, "actions": np.asarray(data["actions"])[..., : self.dim]}
