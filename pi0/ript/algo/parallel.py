"""Where training runs: processes and devices (torchrun), precision, and how the weights are spread over ranks.

Two strategies (`train.strategy`):

- `replicated`: every rank holds the whole model and its AdamW state; gradients are summed with one flat all-reduce
  per optimizer step (`average_gradients`). Simple and fastest when the model fits.
- `fsdp`: torch's `fully_shard` (FSDP2) shards parameters, gradients and optimizer state over the ranks, so with
  8 GPUs each holds about 1/8 of the fp32 weights + AdamW state. The update runs through FSDP's hooks; rollouts do
  not: each rank's runner calls the policy whenever its own envs need chunks, at times and batch sizes no other rank
  shares, so the rollout policy is a full replica of the weights on each rank (`sync_full_weights`, refreshed after
  every update), which collective-free inference needs.

`fully_shard` puts hooks on module `forward` calls. pi0's joint attention calls the submodules of each Gemma layer,
not the layer's forward, so the units sharded one by one are those whose forward runs exactly once per update
pass: each SigLIP encoder layer and each PaliGemma MLP (together ~90% of the weights). Everything else (token
embeddings, attention projections, the action expert, which runs once per denoising step) forms the root unit,
gathered for the whole update pass; the RL policy's loss methods are registered as FSDP forward methods.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pi0.ript.config.schema import ConfigError


def setup_distributed(backend: str, policy_device: str, strategy: str = "replicated") -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (RANK/WORLD_SIZE); one process otherwise. nccl needs a GPU each."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if policy_device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"policy.device={policy_device}: no CUDA GPU is visible to torch here; use policy.device=auto or cpu")
    if strategy == "fsdp" and world_size == 1:
        raise ConfigError(
            "train.strategy=fsdp shards the model over processes: launch with torchrun --nproc_per_node N "
            "-m pi0.ript.algo.trainer ... (N >= 2), or use train.strategy=replicated on one device"
        )
    use_cuda = torch.cuda.is_available() and policy_device != "cpu"
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if policy_device.startswith("cuda:") and world_size == 1:
            local_rank = int(policy_device.split(":")[1])
        torch.cuda.set_device(local_rank)
        return rank, world_size, torch.device("cuda", local_rank)
    return rank, world_size, torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """`train.precision` -> the autocast dtype (None: plain fp32). Weights and AdamW state stay fp32 either way."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.precision={precision}: {torch.cuda.get_device_name(device)} has no bfloat16 support; use train.precision=fp32")
        return torch.bfloat16
    try:  # CPUs: bf16 autocast works wherever this small matmul does
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError as exc:
        raise ConfigError(f"train.precision=bf16: this CPU cannot run bfloat16 ({exc}); use train.precision=fp32") from None
    return torch.bfloat16


# --- replicated ------------------------------------------------------------------------------------------------------
def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (the identity in a single process); gloo reduces CPU tensors."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Sum every rank's gradient (each already divided by the global sample count) in one flat all-reduce.
    A parameter with no gradient on this rank (it had no samples) contributes zeros."""
    if world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --- fsdp ------------------------------------------------------------------------------------------------------------
def shard_fsdp(rl: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
    """Shard an `RLPolicy` in place over all ranks (see the module docstring for the units). With bf16 precision the
    gathered weights are bf16 (FSDP's mixed precision) and gradients are reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if autocast_dtype is not None:
        # Inputs keep their dtypes: recorded chains and states stay fp32 (autocast picks the compute dtype per op).
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    paligemma = rl.model.paligemma_with_expert.paligemma.model
    for layer in paligemma.vision_tower.vision_model.encoder.layers:
        fully_shard(layer, **kwargs)
    for layer in paligemma.language_model.layers:
        fully_shard(layer.mlp, **kwargs)
    fully_shard(rl, **kwargs)
    for method in ("chain_log_prob", "cfg_loss"):
        register_fsdp_forward_method(rl, method)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded (DTensor) parameter or gradient norm (a collective); plain tensors as they are."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


@torch.no_grad()
def sync_full_weights(sharded: nn.Module, replica: nn.Module) -> None:
    """Copy the sharded module's weights into its full replica on every rank (every rank calls this together)."""
    target = replica.state_dict()
    for name, value in sharded.state_dict().items():
        target[name].copy_(full_tensor(value))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The sharded optimizer's state gathered into one dict keyed by parameter name (on rank 0; others get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # Not strict: parameters that never receive a gradient have no AdamW state to restore (the last PaliGemma layer's
    # query/output projections and MLP feed nothing the action expert reads).
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)
