"""Load and save pi0 / pi0.5 weights: a directory with model.safetensors (or a sharded index), config.json,
norm_stats.json and the tokenizer; or a state dict already in memory with a PI0Config built by the caller.

Parameter names: openpi's PyTorch conversion uses the module names of `PI0Pytorch` / `PI05Pytorch`
(`paligemma_with_expert...`, `action_in_proj...`); LeRobot's `PI0Policy` / `PI05Policy` store the same names under
`model.`. Both load; we save openpi's names (no prefix). pi0.5 differs by name in its suffix only: `time_mlp_in/out`
instead of `state_proj` and `action_time_mlp_in/out`, and adaRMS expert norms (`...input_layernorm.dense.weight/bias`,
`...post_attention_layernorm.dense.*`, `gemma_expert.model.norm.dense.*`) instead of `...layernorm.weight`. Which
variant to build comes from the config (openpi's `"pi05": true`, LeRobot's `"type": "pi05"`; see PI0Config.from_dict);
weights of the other variant are refused with a message saying so.

lm_head, said out loud: both checkpoints carry `paligemma_with_expert.paligemma.lm_head.weight` (tied to the
PaliGemma token embedding in Gemma) and `paligemma_with_expert.gemma_expert.lm_head.weight` (the expert has no
vocabulary use at all). pi0 never computes logits, so this model has no lm_head: the loader drops both entries
(logged once) and the saver does not write them. A checkpoint saved here therefore lacks them; LeRobot's loader
would need them re-tied from `...language_model.embed_tokens.weight` if it loads strictly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import PI0Config
from transformers.models.gemma.modeling_gemma import GemmaRotaryEmbedding

from .modeling import PI0Model, _gemma_config

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
LEROBOT_PREFIX = "model."
SKIPPED_SUFFIX = "lm_head.weight"


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of every shard listed in model.safetensors.index.json."""
    d = Path(directory)
    single, index = d / WEIGHTS_NAME, d / INDEX_NAME
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object; re-save the checkpoint with its shard index")
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            path = d / shard
            if not path.is_file():
                raise FileNotFoundError(f"{path}: shard listed in {index.name} is missing; download the whole checkpoint")
            sd.update(load_file(str(path)))
        return sd
    raise FileNotFoundError(f"{d}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found; point at a converted pi0 PyTorch checkpoint")


def canonical_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LeRobot (`model.` prefix) or openpi names -> this model's names; lm_head entries dropped (see module doc)."""
    out: dict[str, torch.Tensor] = {}
    skipped = []
    for name, t in sd.items():
        # None of this model's own names starts with "model.", so a leading "model." is always LeRobot's wrapper.
        if name.startswith(LEROBOT_PREFIX):
            name = name[len(LEROBOT_PREFIX) :]
        if name.endswith(SKIPPED_SUFFIX):
            skipped.append(name)
            continue
        out[name] = t
    if skipped:
        log.info("pi0 checkpoint: skipped %d unused lm_head tensor(s) (pi0 computes no logits): %s", len(skipped), skipped)
    return out


# Parameters only one variant has (canonical names): how a state dict tells which model it belongs to.
_VARIANT_MARKERS = {"pi0": "action_time_mlp_in.weight", "pi05": "time_mlp_in.weight"}


def checkpoint_variant(sd: Mapping[str, torch.Tensor]) -> str | None:
    """"pi0" or "pi05" by the parameters only that variant has (names with or without `model.`); None if neither."""
    names = {n[len(LEROBOT_PREFIX) :] if n.startswith(LEROBOT_PREFIX) else n for n in sd}
    found = [v for v, marker in _VARIANT_MARKERS.items() if marker in names]
    return found[0] if len(found) == 1 else None


def load_weights(model: PI0Model, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict by name and shape; one-line errors naming the first offending keys (or the variant, if it differs)."""
    sd = canonical_names(dict(sd))
    want, got_variant = model.config.variant, checkpoint_variant(sd)
    if got_variant is not None and got_variant != want:
        raise ValueError(
            f"{source}: these are {got_variant} weights but the config builds {want}; set pi05="
            f"{got_variant == 'pi05'} in the config (openpi's config.json \"pi05\": true, LeRobot's \"type\": \"pi05\")"
        )
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise KeyError(
            f"{source}: {len(missing)} missing (e.g. {missing[:3]}) and {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}) parameter names; check that config.json matches these weights"
        )
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        k, got, want = bad[0]
        raise ValueError(f"{source}: {k} has shape {got}, model expects {want} ({len(bad)} mismatches); fix config.json")
    model.load_state_dict(sd, strict=True, assign=any(p.is_meta for p in model.parameters()))


def load_model(
    source: str | Path | Mapping[str, torch.Tensor],
    config: PI0Config | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PI0Model:
    """Build a PI0Model (pi0 or pi0.5, as `config` says) and load its weights, strictly by name and shape.

    source: a directory (model.safetensors or a sharded index; its config.json is read unless `config` is given),
            or a state dict already read (openpi or LeRobot names, with or without `model.`; `config` required).
    The model is built on the meta device and takes the tensors themselves (no copy: a state dict's tensors become
    the model's parameters where `device` and `dtype` already match), then moves to `device`/`dtype`.
    """
    if isinstance(source, Mapping):
        if config is None:
            raise ValueError("load_model(state_dict): a state dict carries no sizes; pass config=PI0Config(...)")
        cfg, sd, where = config, source, "state dict"
    else:
        d = Path(source)
        cfg = config or PI0Config.load(d / CONFIG_NAME)
        sd, where = read_state_dict(d), str(d)
    with torch.device("meta"):
        model = PI0Model(cfg)
    load_weights(model, sd, source=where)
    # Non-persistent buffers (rotary inv_freq, SigLIP position ids) were created on meta: rebuild them for real.
    _materialise_buffers(model, cfg)
    return model.to(device=device, dtype=dtype).eval()


def _materialise_buffers(model: PI0Model, cfg: PI0Config) -> None:
    """Recreate the non-persistent buffers (not in any checkpoint) that a meta-device build left empty."""
    pwe = model.paligemma_with_expert
    pwe.rotary_emb = GemmaRotaryEmbedding(_gemma_config(cfg.vlm, cfg.vocab_size))
    emb = pwe.paligemma.model.vision_tower.vision_model.embeddings
    if getattr(emb, "position_ids", None) is not None and emb.position_ids.is_meta:
        emb.register_buffer("position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"buffers still on the meta device after loading: {left}; rebuild them in _materialise_buffers")


def save_weights(model: PI0Model, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # contiguous + cloned: safetensors refuses shared storage and views.
    sd = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    path = d / WEIGHTS_NAME
    metadata = {"format": "pt", "names": "openpi (no 'model.' prefix); no lm_head", "variant": model.config.variant}
    save_file(sd, str(path), metadata=metadata)
    return path
