"""LeRobot's checkpoint layout for pi0 and pi0.5 (`lerobot/pi0_libero`, `lerobot/pi05_libero`, or a local save).

A LeRobot policy directory holds:
- `config.json` with `"type": "pi0"` or `"pi05"` (full-size variant names, chunk/dim fields, `tokenizer_max_length`,
  `normalization_mapping`, `input_features` / `output_features`);
- `model.safetensors`: the weights under `model.` + the PI0Pytorch / PI05Pytorch names (checkpoint.py strips it);
- `policy_preprocessor.json` / `policy_postprocessor.json`: the processor pipelines, whose `normalizer_processor` /
  `unnormalizer_processor` steps name their statistics in `state_file` (flat safetensors, `"<feature>.<stat>"`).
It never holds the tokenizer (its `tokenizer_processor` names `google/paligemma-3b-pt-224`): that comes from
`policy.tokenizer_path`.

What it maps to here: a PI0Config (sizes from the variant names, i.e. full size, unless `sizes` is given; prompt
budget, chunk, normalisation mode, no delta actions), NormStats with the "lerobot" convention (normalization.py) and
the prompt format ("lerobot_pi0" or "pi05_state", tokenizer.py). Anything in the pipelines this project does not
reproduce (another normalisation mode, relative actions, an unknown step) is refused with one line, rather than
run with different numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file

from .config import PI0Config
from .normalization import LEROBOT_EPS, NormStats
from .tokenizer import check_prompt_format

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "policy_preprocessor.json"
POSTPROCESSOR_NAME = "policy_postprocessor.json"
LEROBOT_TYPES = ("pi0", "pi05")
STATE_KEY, ACTION_KEY = "observation.state", "action"
MODES = {"MEAN_STD": "mean_std", "QUANTILES": "quantile"}  # LeRobot's NormalizationMode -> norm_mode here
PROMPT_FORMAT = {"pi0": "lerobot_pi0", "pi05": "pi05_state"}
# Steps whose effect this project reproduces (or that change nothing here); anything else is refused.
KNOWN_STEPS = {
    "rename_observations_processor",  # key renames: the LIBERO adapter produces the model's inputs itself
    "to_batch_processor",
    "device_processor",
    "pi0_new_line_processor",  # prompt format "lerobot_pi0"
    "pi05_prepare_state_tokenizer_processor_step",  # prompt format "pi05_state"
    "tokenizer_processor",
    "normalizer_processor",
    "unnormalizer_processor",
    "relative_actions_processor",  # accepted only when disabled
    "absolute_actions_processor",  # accepted only when disabled
}
# Where the prompt format is kept in PI0Config.extra (it travels in our config.json when saved again).
PROMPT_FORMAT_KEY = "prompt_format"


@dataclass(frozen=True)
class LeRobotCheckpoint:
    """What a LeRobot directory says, in this project's terms (the weights are read by checkpoint.load_model)."""

    directory: Path
    policy_type: str  # "pi0" | "pi05"
    config: PI0Config
    norm_stats: dict[str, NormStats]  # "state", "actions" (LeRobot convention)
    prompt_format: str
    cameras: tuple[str, ...]  # LeRobot's image feature names, in the order of the model's image slots


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; copy the checkpoint's whole directory (openpi conversion or LeRobot save)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); download it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def lerobot_type(directory: str | Path) -> str | None:
    """"pi0" or "pi05" when `directory` is a LeRobot pi0/pi0.5 checkpoint (its config.json has that `type` and is not
    this project's own), else None."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("format") == "pi0-ript":
        return None
    kind = data.get("type")
    return kind if kind in LEROBOT_TYPES else None


def config_variant(directory: str | Path) -> str:
    """"pi0" or "pi05", from any layout's config.json (LeRobot's `type`, openpi's `pi05`, ours)."""
    path = Path(directory) / CONFIG_NAME
    data = _read_json(path, "config.json")
    if data.get("type") in LEROBOT_TYPES:
        return data["type"]
    return "pi05" if data.get("pi05") else "pi0"


def _steps(pipeline: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    steps = pipeline.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ValueError(f"{path}: no 'steps' list; save the processor again with LeRobot's save_pretrained")
    for step in steps:
        name = step.get("registry_name")
        if name not in KNOWN_STEPS:
            raise ValueError(f"{path}: processor step {name!r} is not reproduced here (known: {', '.join(sorted(KNOWN_STEPS))})")
        if name in ("relative_actions_processor", "absolute_actions_processor") and step.get("config", {}).get("enabled"):
            raise ValueError(f"{path}: {name} is enabled (relative actions); only absolute-action checkpoints are supported")
    return steps


def _step(steps: list[dict[str, Any]], name: str, path: Path) -> dict[str, Any] | None:
    found = [s for s in steps if s.get("registry_name") == name]
    if len(found) > 1:
        raise ValueError(f"{path}: {len(found)} '{name}' steps; expected one")
    return found[0] if found else None


def _mode(norm_map: Mapping[str, str], feature_type: str, where: str) -> str:
    name = norm_map.get(feature_type)
    if name not in MODES:
        raise ValueError(f"{where}: {feature_type} normalisation {name!r} is not supported; use one of {', '.join(MODES)}")
    return MODES[name]


def _read_stats(directory: Path, step: dict[str, Any], pipeline_path: Path) -> dict[str, np.ndarray]:
    name = step.get("state_file")
    if not name:
        raise ValueError(f"{pipeline_path}: step '{step.get('registry_name')}' names no state_file; save the processor again")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: statistics file named by {pipeline_path.name} is missing; download it too")
    return load_file(str(path))


def _norm_stats(flat: Mapping[str, np.ndarray], feature: str, eps: float, source: Path) -> NormStats:
    def get(stat: str, required: bool = True) -> np.ndarray | None:
        key = f"{feature}.{stat}"
        if key not in flat:
            if required:
                raise KeyError(f"{source}: '{key}' missing (have {sorted(flat)[:6]}...); recompute the dataset statistics")
            return None
        return np.asarray(flat[key], dtype=np.float64).reshape(-1)

    return NormStats(get("mean"), get("std"), get("q01", False), get("q99", False), convention="lerobot", eps=eps)


def read_lerobot_norm_stats(directory: str | Path) -> tuple[dict[str, NormStats], str]:
    """-> ({"state": ..., "actions": ...}, norm_mode) from the normalizer / unnormalizer steps of the processors.

    The state's statistics come from the preprocessor's normalizer, the actions' from the postprocessor's unnormalizer
    (what turns the model's output into env actions); LeRobot saves the same action statistics in both."""
    d = Path(directory)
    pre_path, post_path = d / PREPROCESSOR_NAME, d / POSTPROCESSOR_NAME
    pre_steps = _steps(_read_json(pre_path, PREPROCESSOR_NAME), pre_path)
    post_steps = _steps(_read_json(post_path, POSTPROCESSOR_NAME), post_path)
    norm = _step(pre_steps, "normalizer_processor", pre_path)
    unnorm = _step(post_steps, "unnormalizer_processor", post_path)
    if norm is None or unnorm is None:
        missing = pre_path if norm is None else post_path
        raise ValueError(f"{missing}: no (un)normalizer step; this checkpoint's statistics cannot be found")
    cfg, ucfg = norm.get("config", {}), unnorm.get("config", {})
    norm_map = cfg.get("norm_map", {})
    state_mode = _mode(norm_map, "STATE", str(pre_path))
    action_mode = _mode(ucfg.get("norm_map", {}), "ACTION", str(post_path))
    if _mode(norm_map, "ACTION", str(pre_path)) != action_mode:
        raise ValueError(f"{pre_path}: ACTION normalisation differs from {post_path.name}'s; save both processors again")
    if state_mode != action_mode:
        raise ValueError(f"{pre_path}: STATE {state_mode} but ACTION {action_mode}; one mode for both is supported")
    for feature, spec in cfg.get("features", {}).items():
        if spec.get("type") == "VISUAL" and norm_map.get("VISUAL", "IDENTITY") != "IDENTITY":
            raise ValueError(f"{pre_path}: camera {feature} is normalised ({norm_map['VISUAL']}); only IDENTITY is supported")
    pre_flat = _read_stats(d, norm, pre_path)
    post_flat = _read_stats(d, unnorm, post_path)
    state = _norm_stats(pre_flat, STATE_KEY, float(cfg.get("eps", LEROBOT_EPS)), d / norm["state_file"])
    actions = _norm_stats(post_flat, ACTION_KEY, float(ucfg.get("eps", LEROBOT_EPS)), d / unnorm["state_file"])
    if f"{ACTION_KEY}.mean" in pre_flat and not np.array_equal(pre_flat[f"{ACTION_KEY}.mean"], post_flat[f"{ACTION_KEY}.mean"]):
        log.warning("%s: the preprocessor's action statistics differ from the postprocessor's; using the latter", d)
    return {"state": state, "actions": actions}, action_mode


def prompt_format_for(policy_type: str, steps: list[dict[str, Any]] | None = None) -> str:
    """LeRobot pi0: the task + "\\n"; pi0.5: the state in the prompt. The pipeline, when given, must agree."""
    fmt = PROMPT_FORMAT[policy_type]
    if steps is not None:
        names = {s.get("registry_name") for s in steps}
        expected = "pi0_new_line_processor" if policy_type == "pi0" else "pi05_prepare_state_tokenizer_processor_step"
        if expected not in names:
            raise ValueError(f"{PREPROCESSOR_NAME}: a {policy_type} pipeline without '{expected}'; save it with LeRobot's {policy_type} factory")
    return check_prompt_format(fmt)


def _feature_shape(features: Mapping[str, Any], key: str, source: Path) -> int:
    spec = features.get(key)
    if not isinstance(spec, dict) or not spec.get("shape"):
        raise KeyError(f"{source}: feature '{key}' missing from config.json's features; this is not a LIBERO checkpoint")
    return int(np.prod(spec["shape"]))


def read_lerobot_checkpoint(directory: str | Path, sizes: PI0Config | None = None) -> LeRobotCheckpoint:
    """Config, statistics and prompt format of a LeRobot pi0/pi0.5 directory.

    `sizes`: model widths and depths (vlm, expert, vision, vocab) to use instead of the full-size variants that
    config.json names: LeRobot's config cannot express other sizes (the tiny test directories carry them in a
    `<name>.dims.json` beside them). A real hub checkpoint is full size: leave it None."""
    d = Path(directory)
    cfg_path = d / CONFIG_NAME
    raw = _read_json(cfg_path, "config.json")
    policy_type = raw.get("type")
    if policy_type not in LEROBOT_TYPES:
        raise ValueError(f"{cfg_path}: type {policy_type!r} is not a LeRobot pi0/pi0.5 policy (expected pi0 or pi05)")
    stats, mode = read_lerobot_norm_stats(d)
    mapping = raw.get("normalization_mapping", {})
    if mapping and MODES.get(mapping.get("ACTION")) != mode:
        raise ValueError(f"{cfg_path}: normalization_mapping {mapping} disagrees with {POSTPROCESSOR_NAME}; save them together")
    pre_path = d / PREPROCESSOR_NAME
    pre_steps = _steps(_read_json(pre_path, PREPROCESSOR_NAME), pre_path)
    prompt_format = prompt_format_for(policy_type, pre_steps)
    tok_step = _step(pre_steps, "tokenizer_processor", pre_path)
    max_len = (tok_step or {}).get("config", {}).get("max_length", raw.get("tokenizer_max_length"))
    if raw.get("use_relative_actions"):
        raise ValueError(f"{cfg_path}: use_relative_actions is true; only absolute-action checkpoints are supported")

    inputs, outputs = raw.get("input_features", {}), raw.get("output_features", {})
    state_dim = _feature_shape(inputs, STATE_KEY, cfg_path)
    action_dim = _feature_shape(outputs, ACTION_KEY, cfg_path)
    cameras = tuple(k for k, v in inputs.items() if isinstance(v, dict) and v.get("type") == "VISUAL")
    if len(stats["state"].mean) != state_dim or len(stats["actions"].mean) != action_dim:
        raise ValueError(f"{d}: statistics cover {len(stats['state'].mean)} state / {len(stats['actions'].mean)} action dims, config.json says {state_dim} / {action_dim}")

    config = PI0Config.from_dict(raw, source=str(cfg_path))  # "type": "pi05" selects pi0.5
    overrides: dict[str, Any] = {
        "norm_mode": mode,
        "delta_action_dims": (),  # LeRobot's model predicts absolute actions (relative ones are refused above)
        "env_action_dim": action_dim,
        "extra": {**config.extra, PROMPT_FORMAT_KEY: prompt_format},
    }
    if max_len is not None:
        overrides["max_token_len"] = int(max_len)
    if sizes is not None:
        overrides.update(vlm=sizes.vlm, expert=sizes.expert, vision=sizes.vision, vocab_size=sizes.vocab_size)
    config = dataclasses.replace(config, **overrides)
    return LeRobotCheckpoint(d, policy_type, config, stats, prompt_format, cameras)


__all__ = [
    "LeRobotCheckpoint",
    "config_variant",
    "lerobot_type",
    "prompt_format_for",
    "read_lerobot_checkpoint",
    "read_lerobot_norm_stats",
]
