"""What training will hold in memory besides the weights, checked before the first rollout.

AdamW allocates its two fp32 moments at the first optimizer step and the gradients appear at the first backward
pass, both after a whole rollout phase. A run that cannot hold them would run out of memory only there, minutes or
hours in. So once the weights are on the device the trainer works out the rest of the static memory (per rank):
fp32 gradients and AdamW moments of the trained parameters (sharded under FSDP) and the frozen copies the loss needs
(KL reference, CFG anchor, FSDP rollout replica), and compares it with the memory still free. If the static part
alone does not fit it stops with one line naming the settings that would fit; otherwise it logs the plan.
Activations come on top and depend on the batch, so a plan that fits can still run out (`pi0-ript bench train`
measures them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pi0.ript.config.errors import ConfigError

GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank training adds to the weights already on the device (all fields in bytes)."""

    gradients: int
    adamw: int
    frozen_copies: int
    freed_by_sharding: int = 0  # FSDP: the full weights, less this rank's shard, are released once sharded

    @property
    def more_bytes(self) -> int:
        # Under FSDP the rollout replica is copied before the full weights are sharded: the copies are the floor.
        return max(self.gradients + self.adamw + self.frozen_copies - self.freed_by_sharding, self.frozen_copies)

    def describe(self) -> str:
        parts = f"gradients {self.gradients / GIB:.1f}, AdamW {self.adamw / GIB:.1f}, frozen copies {self.frozen_copies / GIB:.1f}"
        freed = f", less {self.freed_by_sharding / GIB:.1f} freed by sharding" if self.freed_by_sharding else ""
        return f"{self.more_bytes / GIB:.1f} GiB more ({parts}{freed}) before activations"


def plan_memory(total_params: int, trained_params: int, copy_bytes_per_param: list[int], shards: int = 1) -> MemoryPlan:
    """fp32 gradients (4 B) and AdamW moments (8 B) per trained parameter, split over `shards` FSDP ranks; one
    frozen full copy per entry of `copy_bytes_per_param` (2 for a bf16 copy, 4 for fp32)."""
    return MemoryPlan(
        gradients=4 * trained_params // shards,
        adamw=8 * trained_params // shards,
        frozen_copies=sum(b * total_params for b in copy_bytes_per_param),
        freed_by_sharding=4 * total_params - 4 * total_params // shards if shards > 1 else 0,
    )


def frozen_copy_bytes(loss: str, kl_coef: float, null_anchor: str, anchor_coef: float, fsdp: bool, bf16: bool) -> list[int]:
    """Bytes per parameter of each frozen full copy train() builds for these settings (train.py, "policy" block):
    the KL reference (also the "start" anchor), the CFG null anchor, the FSDP rollout replica (fp32; also the
    "rollout" anchor). Under mixed precision the reference and anchors store bf16 weights (frozen_copy)."""
    low = 2 if bf16 else 4
    use_anchor = loss == "cfg" and null_anchor != "none" and anchor_coef > 0
    made = [low] if kl_coef > 0 else []
    made += [low] if use_anchor and null_anchor == "start" and kl_coef <= 0 else []
    made += [4] if fsdp else []
    made += [low] if use_anchor and null_anchor == "rollout" and not fsdp else []
    return made


def free_bytes(device: torch.device, ranks_on_this_host: int = 1) -> int:
    """Memory this rank can still use: the card's free memory, or on a CPU the host's available RAM shared by the
    ranks on this host."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available // max(ranks_on_this_host, 1)


def check_memory(plan: MemoryPlan, free: int, where: str, alternatives: dict[str, MemoryPlan]) -> str:
    """The plan's one-line description if it fits in `free` bytes; else ConfigError naming the settings (keys of
    `alternatives`, each with its own plan) whose static memory would fit."""
    if plan.more_bytes <= free:
        return f"training memory on {where}: {plan.describe()}; {free / GIB:.1f} GiB free"
    fitting = [f"{setting} ({p.more_bytes / GIB:.1f} GiB)" for setting, p in alternatives.items() if p.more_bytes <= free]
    advice = "use " + " or ".join(fitting) if fitting else "use a GPU with more memory, or train.strategy=fsdp over more ranks"
    raise ConfigError(
        f"training needs {plan.describe()} on {where}, but {free / GIB:.1f} GiB are free: {advice} (README, GPU use)"
    )
