"""Where a policy runs: the one rule for `policy.device` (and the benches' --device), used by the loader, the policy
and the benches. torch is imported when asked, so reading a config stays cheap."""

from __future__ import annotations

from pi0.ript.config.errors import ConfigError


def resolve_device(name: str) -> str:
    """`policy.device` (and the benches' --device) to a torch device name: auto = the first GPU if torch sees one."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"policy.device={name!r} but no CUDA device is visible: use policy.device=cpu or auto")
    return name
