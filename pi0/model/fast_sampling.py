"""Fast pi0 sampling: the prefix pass and the Euler loop as CUDA graphs or under `torch.compile`, static shapes per
batch bucket.

Why: at small batches a pi0 call is bound by kernel launches (ten denoising steps x 18 expert layers of small
kernels), not by arithmetic. Modes:
- `cuda-graph`: the whole eager call (prefix and every Euler step) recorded once per bucket as one CUDA graph
  (`torch.cuda.graph`) and replayed: one launch per call, no compilation, capture costs about one call. CUDA only.
- `default`: `torch.compile` (inductor) of the prefix and of one Euler step (one step's graph serves all steps, so a
  compilation is ten times smaller than the unrolled loop's); fuses the elementwise work.
- `reduce-overhead`: the same, each compiled piece also replayed as a CUDA graph (torch's CUDA-graph trees).
All need fixed shapes, and the runner's batch changes from call to call, so a batch is padded up to the next bucket
(1, 2, 4, 8, 16, 32, 64, then multiples of 64) and the result sliced back: at most one compilation or capture per
bucket, never one per batch size.
With `dynamic_batch` (the torch.compile modes), buckets from 2 up share one compilation whose batch dimension is
symbolic (bucket 1 keeps its own, static one): two compilations instead of one per bucket, which is what makes
`reduce-overhead` affordable for a runner meeting five buckets (~70 s each on an H200). CUDA-graph trees still
record one graph per bucket. Only the batch dimension is marked (image and sequence sizes stay static). On a
CPU the symbolic kernels are no slower per call; on an H200, `reduce-overhead` compiled a 14-worker run's five
buckets in 163 s (docs/PERFORMANCE.md).

Padding repeats the last real row. Rows never mix (attention is per sample), so a padded row changes no real row's
result; repeating a real row (rather than zeros) also keeps which image slots are present unchanged, and that decides
the prefix length (`PI0Model.embed_prefix` drops a slot masked out in every sample).

The model's own methods are composed, not rewritten: `compute_prefix_cache` for the prefix, `integrate` (hence
`velocity`) for the loop, so training code that calls them with gradients is untouched, and the eager path
(`compile="none"`, CPU debugging) runs exactly the same code. Mode "none" here still pads (to test the padding).

Which image slots are present is passed in as plain bools (`slots_present`, known on the host where the masks were
built), so the prefix traces as one graph with no host sync: asking `bool(mask.any())` of a device tensor would
break the graph and stall the CPU until the GPU catches up. The bools are part of each compiled variant's guards.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .modeling import PI0Model, PrefixCache

log = logging.getLogger(__name__)

COMPILE_MODES = ("none", "default", "reduce-overhead", "cuda-graph")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def check_compile_mode(mode: str, device: torch.device | str | None = None) -> str:
    """The mode to use; "auto" is `cuda-graph` on a CUDA device (a capture costs about one call, measured 0.3x the
    eager time at batch 1 on an H200) and `none` elsewhere."""
    if mode == "auto":
        return "cuda-graph" if device is not None and torch.device(device).type == "cuda" else "none"
    if mode not in COMPILE_MODES:
        raise ValueError(f"policy.compile={mode!r}: use auto or one of {', '.join(COMPILE_MODES)}")
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


def _mark_batch_dynamic(*tensors: torch.Tensor | None) -> None:
    """Dimension 0 (the batch) of each tensor is symbolic in the compiled graph: one compilation serves every bucket."""
    for t in tensors:
        if t is not None:
            torch._dynamo.mark_dynamic(t, 0)


class CudaGraphRecorder:
    """Records `fn()` as one CUDA graph (torch.cuda.graph) and replays it. The warm-up run on a side stream is what
    torch's documentation asks before a capture (lazy initialisation, cuBLAS workspaces, kernel selection)."""

    def __init__(self, pool=None):
        self.pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None

    def capture(self, fn: Callable[[], Any]) -> Any:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the runner captures from its inference thread while other threads keep running.
        with torch.cuda.graph(self.graph, pool=self.pool, capture_error_mode="thread_local"):
            out = fn()
        return out

    def replay(self) -> None:
        self.graph.replay()


class CapturedCall:
    """`fn(*args)` recorded once over static copies of its tensor arguments; each call copies the new tensors into
    those buffers and replays. torch.cuda.graph records kernels on fixed addresses but leaves this bookkeeping (which
    buffers, copying in, the shapes a graph is valid for) to the caller; it is written here once for every bucket.

    Non-tensor arguments are fixed at capture: they belong in the caller's key. The outputs live in the graph's
    memory and are overwritten by the next replay of any graph sharing its pool: read (clone) them at once."""

    def __init__(self, fn: Callable[..., Any], args: tuple, recorder: Any):
        leaves, self._spec = tree_flatten(args)
        self._is_tensor = [torch.is_tensor(x) for x in leaves]
        self._static = [x.clone() if t else x for x, t in zip(leaves, self._is_tensor)]
        self._recorder = recorder
        self.output = recorder.capture(lambda: fn(*tree_unflatten(self._static, self._spec)))

    def __call__(self, *args) -> Any:
        leaves, spec = tree_flatten(args)
        if spec != self._spec:
            raise ValueError("a captured call was given arguments of another structure than at capture")
        for dst, src, is_tensor in zip(self._static, leaves, self._is_tensor):
            if is_tensor:
                dst.copy_(src)
            elif dst != src:
                raise ValueError(f"a captured call's fixed argument changed ({dst!r} at capture, {src!r} now)")
        self._recorder.replay()
        return self.output


class FastSampler:
    """`sample(images, image_masks, tokens, token_masks, state, noise, num_steps)` like `PI0Model.sample_actions`,
    padded to a bucket and (unless mode "none") compiled or captured. `compile_seconds[key]` is the wall time of the
    first call of each (bucket, steps, trajectory) variant: compilation or CUDA-graph capture, plus one run.

    A capture that fails (an operation CUDA graphs do not allow) is logged with its reason, kept in
    `capture_errors[key]`, and that variant runs eagerly: slower, never wrong. `graph_recorder` makes the recorder
    of each capture (CudaGraphRecorder on CUDA; the tests pass one that replays by re-running on a CPU)."""

    def __init__(
        self,
        model: PI0Model,
        mode: str = "default",
        buckets: Sequence[int] = BATCH_BUCKETS,
        graph_recorder: Callable[[], Any] | None = None,
        dynamic_batch: bool = False,
    ):
        self.model = model
        self.mode = check_compile_mode(mode)
        if dynamic_batch and self.mode not in ("default", "reduce-overhead"):
            raise ValueError(f"dynamic_batch applies to the torch.compile modes (default, reduce-overhead), not {self.mode!r}")
        self.dynamic_batch = dynamic_batch
        self.buckets = tuple(sorted(buckets))
        self.compile_seconds: dict[tuple[int, int, bool], float] = {}
        self.capture_errors: dict[tuple[int, int, bool], str] = {}
        self._captured: dict[tuple, CapturedCall | None] = {}
        self._prefix, self._velocity = self._prefix_eager, None
        if mode == "cuda-graph":
            if graph_recorder is None:
                if model.device.type != "cuda":
                    raise ValueError(
                        f"policy.compile=cuda-graph needs a CUDA device (the model is on {model.device.type}): "
                        "use none or default there"
                    )
                pool = torch.cuda.graph_pool_handle()
                # One memory pool for every bucket's graph: graphs never run at once and each output is cloned
                # straight after its replay, so a graph may reuse another's scratch memory.
                graph_recorder = lambda: CudaGraphRecorder(pool)  # noqa: E731
            self._graph_recorder = graph_recorder
        elif mode != "none":
            _allow_recompiles(4 * len(self.buckets) + 8)
            # dynamic=None: shapes stay static unless marked (below); False would ignore the marks.
            dynamic = None if dynamic_batch else False
            self._prefix = torch.compile(self._prefix_eager, mode=mode, dynamic=dynamic)
            self._velocity = torch.compile(self._velocity_eager, mode=mode, dynamic=dynamic)

    def _prefix_eager(self, images, image_masks, tokens, token_masks, slots_present: tuple[bool, ...]):
        cache = self.model.compute_prefix_cache(images, image_masks, tokens, token_masks, slots_present)
        return cache.keys, cache.values, cache.pad_mask

    def _velocity_eager(self, keys, values, pad_mask, state, x, t):
        # A fresh cache per step: the compiled step takes plain tensors, and its suffix mask is rebuilt inside it.
        return self.model.velocity(PrefixCache(list(keys), list(values), pad_mask), state, x, t)

    def _run_eager(self, images, image_masks, tokens, token_masks, slots_present, state, noise, num_steps: int, return_trajectory: bool):
        symbolic = self.dynamic_batch and state.shape[0] > 1  # (a dimension of size 1 cannot be marked dynamic)
        batch_dim = _mark_batch_dynamic if symbolic else lambda *tensors: None
        batch_dim(*images, *image_masks, tokens, token_masks)
        keys, values, pad_mask = self._prefix(images, image_masks, tokens, token_masks, slots_present)
        cache = PrefixCache(list(keys), list(values), pad_mask)
        if self._velocity is None:
            return self.model.integrate(cache, state, noise, num_steps, return_trajectory)
        batch_dim(*keys, *values, pad_mask, state)

        def step(_cache, state, x, t, _bias):
            batch_dim(x, t)  # fresh tensors every Euler step
            return self._velocity(keys, values, pad_mask, state, x, t)
        return self.model.integrate(cache, state, noise, num_steps, return_trajectory, velocity=step)

    def _run(self, args: tuple, key: tuple) -> Any:
        if self.mode == "cuda-graph":
            if key not in self._captured:
                self._captured[key] = self._capture(args, key)
            captured = self._captured[key]
            return captured(*args) if captured is not None else self._run_eager(*args)
        if self._cuda_graphs:
            # A new iteration: outputs of the previous call's graphs may now be overwritten (we cloned what we kept).
            torch.compiler.cudagraph_mark_step_begin()
        return self._run_eager(*args)

    def _capture(self, args: tuple, key: tuple) -> CapturedCall | None:
        try:
            return CapturedCall(self._run_eager, args, self._graph_recorder())
        except Exception as exc:  # noqa: BLE001 - whatever the capture refused, eager sampling still works
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.capture_errors[key[:3]] = reason
            log.warning("CUDA-graph capture failed for batch bucket %d (%s); this bucket samples eagerly", key[0], reason)
            return None

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
        slots_present: Sequence[bool] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`slots_present`: one bool per image slot, True where any sample has that image (None: asked of the masks,
        a host sync). Padding repeats real rows, so the padded batch has the same slots."""
        b = state.shape[0]
        n = bucket_size(b, self.buckets)
        if slots_present is None:
            slots_present = [bool(m.any()) for m in image_masks]
        slots_present = tuple(bool(p) for p in slots_present)
        key = (n, num_steps, return_trajectory)
        first = key not in self.compile_seconds
        start = time.perf_counter()
        padded = (
            [pad_rows(i, n) for i in images],
            [pad_rows(m, n) for m in image_masks],
            pad_rows(tokens, n),
            pad_rows(token_masks, n),
            slots_present,
            pad_rows(state, n),
            pad_rows(noise, n),
            num_steps,
            return_trajectory,
        )
        out = self._run(padded, (*key, slots_present))
        if first and self._cuda_graphs:
            # CUDA-graph trees run a new graph once unrecorded and record it on its next call: make that capture part
            # of the first call too, so it is counted in compile_seconds and not paid in the middle of a rollout.
            out = self._run(padded, (*key, slots_present))
        # Slice the real rows; clone, because a CUDA graph's output buffer is reused by its next replay.
        out = tuple(o[:b].clone() for o in out) if return_trajectory else out[:b].clone()
        if first:
            if self.model.device.type == "cuda":
                torch.cuda.synchronize(self.model.device)
            self.compile_seconds[key] = time.perf_counter() - start
            if self.mode != "none":
                log.info(
                    "pi0 sampling %s (%s) for batch bucket %d, %d steps%s: %.1f s",
                    "captured" if self.mode == "cuda-graph" else "compiled", self.mode, n, num_steps,
                    ", with trajectory" if return_trajectory else "", self.compile_seconds[key],
                )
        return out
