"""pi0 in PyTorch: model (modeling.py, attention.py), checkpoints, normalisation, LIBERO transforms, policy adapter.

Names are imported lazily so `import pi0.model.config` stays cheap (transformers loads only when the model is used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PI0Config": "config",
    "PI0Model": "modeling",
    "PrefixCache": "modeling",
    "PI0Policy": "policy",
    "ModelInputs": "policy",
    "make_tiny_policy": "policy",
    "load_model": "checkpoint",
    "load_norm_stats": "normalization",
    "PromptTokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pi0.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
