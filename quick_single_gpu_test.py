#!/usr/bin/env python
"""One full RIPT iteration on LIBERO — rollouts through the configured runner → RLOO advantages → one policy update →
checkpoint — on the GPU if there is one, else the CPU. Exits non-zero on any failure.

    python quick_single_gpu_test.py --config_path pi0/ript/config/ript_vla_test.yaml [key=value ...]

Sizes are cut down so the check takes minutes (one context, K=2, short episodes, one update epoch); dotlist overrides
after the config path win over them. Without a checkpoint at `policy.checkpoint_path`, a tiny random pi0 is saved
first and used instead (its rollouts all fail, so the update carries zero advantage: this checks the pipeline, not
learning — see pi0/ript/config/learning_demo.yaml for that).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

QUICK = [
    "train.num_iterations=1", "train.checkpoint_every=1", "train.eval_every=0",
    "algo.num_contexts=1", "algo.rollouts_per_env=2", "algo.dynamic_sampling=false",
    "algo.update_epochs=1", "algo.num_minibatches=1",
    "task.max_episode_length=15", "train.output_dir=outputs/quick_single_gpu_test",
]


def main() -> int:
    parser = argparse.ArgumentParser(description="one RIPT iteration on LIBERO")
    parser.add_argument("--config_path", "--config", dest="config_path", default="pi0/ript/config/ript_vla_test.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    from pi0.ript.algo import checkpoint as ckpt
    from pi0.ript.algo.trainer import train
    from pi0.ript.config.schema import ConfigError, load_config

    try:
        cfg = load_config(args.config_path, QUICK + list(args.overrides))
    except ConfigError as exc:
        print(f"❌ config: {exc}")
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}")
    output_dir = Path(cfg.train.output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)  # a fresh iteration 0 every time
    output_dir.mkdir(parents=True)

    if not Path(cfg.policy.checkpoint_path).is_dir():
        from pi0.ript.policy.pi0_policy import make_tiny_policy
        from pi0.ript.env.factory import make_env_spec

        spec = make_env_spec(cfg)
        tiny = output_dir / "tiny_pi0_checkpoint"
        make_tiny_policy([spec.instruction(t) for t in range(spec.num_tasks())], image_size=112).save_pretrained(tiny)
        print(f"no checkpoint at {cfg.policy.checkpoint_path}: using a tiny random pi0 saved at {tiny}")
        cfg.policy.checkpoint_path = str(tiny)

    started = time.perf_counter()
    try:
        train(cfg)
    except Exception as exc:  # report and exit non-zero; the traceback is what to debug
        import traceback

        traceback.print_exc()
        print(f"❌ RIPT iteration failed: {type(exc).__name__}: {exc}")
        return 1
    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    checkpoint = ckpt.latest_checkpoint(output_dir)
    problems = []
    if len(metrics) != 1 or metrics[0]["iteration"] != 0:
        problems.append(f"expected one iteration in metrics.jsonl, got {len(metrics)}")
    elif metrics[0]["rollout/episodes"] < 2 or metrics[0]["update/optimizer_steps"] < 1:
        problems.append(f"no rollouts or no update: {metrics[0]}")
    if checkpoint is None:
        problems.append(f"no checkpoint under {output_dir}")
    for problem in problems:
        print(f"❌ {problem}")
    if problems:
        return 1
    m = metrics[0]
    print(
        f"✅ one RIPT iteration in {time.perf_counter() - started:.0f} s: {m['rollout/episodes']} rollouts "
        f"(success {m['rollout/success_rate']:.2f}), {m['update/optimizer_steps']} update(s), loss {m['update/loss']:.4g}, "
        f"checkpoint {checkpoint}"
        + (f"; peak GPU memory {m['memory/rollout_peak_gib']:.1f} GiB rolling out, {m['memory/update_peak_gib']:.1f} GiB updating"
           if "memory/update_peak_gib" in m else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
