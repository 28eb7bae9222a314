"""pi0 and pi0.5 in PyTorch: model (modeling.py, attention.py), fast sampling, checkpoints (openpi and LeRobot layouts),
normalisation, tokenizer and prompts, generic transforms. Nothing of LIBERO or `pi0.ript`: the policy wrapper and the
LIBERO adapter live in `pi0.ript.policy` (`pi0_policy`, `libero_adapter`).

Names are imported lazily so `import pi0.model.config` stays cheap (transformers loads only when the model is used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PI0Config": "config",
    "PI0Model": "modeling",
    "PrefixCache": "modeling",
    "load_model": "checkpoint",
    "load_norm_stats": "normalization",
    "PromptTokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pi0.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
