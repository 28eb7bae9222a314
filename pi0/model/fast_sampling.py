"""Compiled pi0 sampling: the prefix pass and the Euler loop under `torch.compile`, static shapes per batch bucket.

Why: at small batches a pi0 call is bound by kernel launches (ten denoising steps x 18 expert layers of small
kernels), not by arithmetic. `torch.compile` fuses the elementwise work; `mode="reduce-overhead"` also records each
compiled piece as a CUDA graph, so a step replays as one launch. Both need fixed shapes to pay off, and the runner's
batch changes from call to call, so a batch is padded up to the next bucket (1, 2, 4, 8, 16, 32, 64, then multiples
of 64) and the result sliced back: at most one compilation per bucket, never one per batch size.

Padding repeats the last real row. Rows never mix (attention is per sample), so a padded row changes no real row's
result; repeating a real row (rather than zeros) also keeps which image slots are present unchanged, and that decides
the prefix length (`PI0Model.embed_prefix` drops a slot masked out in every sample).

The model's own methods are composed, not rewritten: `compute_prefix_cache` for the prefix, `integrate` (hence
`velocity`) for the loop, so training code that calls them with gradients is untouched, and the eager path
(`compile="none"`, CPU debugging) runs exactly the same code. Mode "none" here still pads (to test the padding).

One graph break remains: `embed_prefix` asks `bool(mask.any())` of each image slot (to drop absent slots), which
dynamo cannot trace, so the prefix compiles in pieces (the image embedding, then the language layers) with that test
run eagerly between them: three small host syncs per call on a GPU.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch

from .modeling import PI0Model, PrefixCache

log = logging.getLogger(__name__)

COMPILE_MODES = ("none", "default", "reduce-overhead")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"policy.compile={mode!r}: use one of {', '.join(COMPILE_MODES)}")
    return mode


def bucket_size(batch: int, buckets: Sequence[int] = BATCH_BUCKETS) -> int:
    """The smallest bucket >= batch; past the largest, the next multiple of the largest."""
    if batch < 1:
        raise ValueError(f"batch size {batch} must be >= 1")
    for b in buckets:
        if batch <= b:
            return b
    top = buckets[-1]
    return -(-batch // top) * top


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """[B, ...] -> [rows, ...] by repeating the last row; always a new tensor, even when B == rows.

    A copy every time means the compiled functions always receive the same kind of tensor: one made under
    inference mode (as here) carries other dispatch keys than one made outside it, and dynamo would recompile.
    """
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


def _allow_recompiles(needed: int) -> None:
    # Each bucket is one recompilation of the same two functions; dynamo's default limit (8 per function) would
    # silently fall back to eager after the 8th bucket/variant.
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    if getattr(cfg, name) < needed:
        setattr(cfg, name, needed)


class FastSampler:
    """`sample(images, image_masks, tokens, token_masks, state, noise, num_steps)` like `PI0Model.sample_actions`,
    padded to a bucket and (unless mode "none") compiled. `compile_seconds[key]` is the wall time of the first call
    of each (bucket, steps, trajectory) variant: compilation (or CUDA-graph capture) plus one run."""

    def __init__(self, model: PI0Model, mode: str = "default", buckets: Sequence[int] = BATCH_BUCKETS):
        self.model = model
        self.mode = check_compile_mode(mode)
        self.buckets = tuple(sorted(buckets))
        self.compile_seconds: dict[tuple[int, int, bool], float] = {}
        if mode == "none":
            self._prefix, self._denoise = self._prefix_eager, self._denoise_eager
        else:
            _allow_recompiles(4 * len(self.buckets) + 8)
            self._prefix = torch.compile(self._prefix_eager, mode=mode, dynamic=False)
            self._denoise = torch.compile(self._denoise_eager, mode=mode, dynamic=False)

    def _prefix_eager(self, images, image_masks, tokens, token_masks):
        cache = self.model.compute_prefix_cache(images, image_masks, tokens, token_masks)
        return cache.keys, cache.values, cache.pad_mask

    def _denoise_eager(self, keys, values, pad_mask, state, noise, num_steps: int, return_trajectory: bool):
        cache = PrefixCache(list(keys), list(values), pad_mask)
        return self.model.integrate(cache, state, noise, num_steps, return_trajectory)

    def _run(self, images, image_masks, tokens, token_masks, state, noise, num_steps: int, return_trajectory: bool):
        if self._cuda_graphs:
            # A new iteration: outputs of the previous call's graphs may now be overwritten (we cloned what we kept).
            torch.compiler.cudagraph_mark_step_begin()
        keys, values, pad_mask = self._prefix(images, image_masks, tokens, token_masks)
        return self._denoise(keys, values, pad_mask, state, noise, num_steps, return_trajectory)

    @property
    def _cuda_graphs(self) -> bool:
        return self.mode == "reduce-overhead" and self.model.device.type == "cuda"

    def sample(
        self,
        images: list[torch.Tensor],
        image_masks: list[torch.Tensor],
        tokens: torch.Tensor,
        token_masks: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor,
        num_steps: int,
        return_trajectory: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b = state.shape[0]
        n = bucket_size(b, self.buckets)
        key = (n, num_steps, return_trajectory)
        first = key not in self.compile_seconds
        start = time.perf_counter()
        padded = (
            [pad_rows(i, n) for i in images],
            [pad_rows(m, n) for m in image_masks],
            pad_rows(tokens, n),
            pad_rows(token_masks, n),
            pad_rows(state, n),
            pad_rows(noise, n),
        )
        out = self._run(*padded, num_steps, return_trajectory)
        if first and self._cuda_graphs:
            # CUDA-graph trees run a new graph once unrecorded and record it on its next call: make that capture part
            # of the first call too, so it is counted in compile_seconds and not paid in the middle of a rollout.
            out = self._run(*padded, num_steps, return_trajectory)
        # Slice the real rows; clone, because a CUDA graph's output buffer is reused by its next replay.
        out = tuple(o[:b].clone() for o in out) if return_trajectory else out[:b].clone()
        if first:
            if self.model.device.type == "cuda":
                torch.cuda.synchronize(self.model.device)
            self.compile_seconds[key] = time.perf_counter() - start
            if self.mode != "none":
                log.info(
                    "pi0 sampling compiled (%s) for batch bucket %d, %d steps%s: %.1f s",
                    self.mode, n, num_steps, ", with trajectory" if return_trajectory else "", self.compile_seconds[key],
                )
        return out
