"""`pi0-ript bench train`: what one RIPT iteration costs (time per phase, peak memory) before a long run.

One training iteration per variant (loss ppo / cfg x trained part expert-only / full) on the built-in reach task,
through the real trainer, runner and workers, with a pi0 of the chosen size (random weights: only cost is measured)
on the chosen device, precision, activation checkpointing and strategy. Each variant runs in a fresh process, so its
peak memory is its own. Printed per variant: rollout, update and iteration seconds; peak GPU memory torch allocated
during rollouts and during the update (CUDA), or the process's peak RSS (CPU); and the analytic memory of weights,
gradients, AdamW state and frozen copies per rank, which needs no run at all (`--analytic-only`).

    pi0-ript bench train --size full --device cuda --precision bf16             # one GPU: the four variants
    pi0-ript bench train --size full --analytic-only                           # what should fit, no GPU needed
    torchrun --nproc_per_node 8 -m pi0.ript.bench.train --one ppo-full --size full --strategy fsdp   # one variant, sharded
    pi0-ript bench train --size tiny --device cpu --out x.json                 # the CPU check CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

VARIANTS = ("ppo-expert", "ppo-full", "cfg-expert", "cfg-full")
GIB = 2**30


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pi0-ript bench train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny", help="pi0 size: tiny (CPU) or full (3.24 B, pi0's own)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="train.precision")
    p.add_argument("--activation-checkpointing", default="none", help="train.activation_checkpointing: none | all | vision,language,expert")
    p.add_argument("--strategy", choices=("replicated", "fsdp"), default="replicated", help="train.strategy")
    p.add_argument("--nproc", type=int, default=0, help="processes per variant under torchrun (0: 1 replicated; fsdp: GPUs or 2)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--one", default=None, choices=VARIANTS, help="run this variant in this process (what each child runs)")
    p.add_argument("--workers", type=int, default=8, help="task.num_parallel_envs")
    p.add_argument("--contexts", type=int, default=4, help="algo.num_contexts")
    p.add_argument("--rollouts", type=int, default=4, help="algo.rollouts_per_env")
    p.add_argument("--episode-length", type=int, default=40, help="task.max_episode_length (reach steps)")
    p.add_argument("--denoise-steps", type=int, default=5, help="algo.num_denoise_steps")
    p.add_argument("--minibatches", type=int, default=16, help="algo.num_minibatches (update batch = samples / this)")
    p.add_argument("--image-size", type=int, default=56, help="reach camera size (the model resizes to its own)")
    p.add_argument("--analytic-only", action="store_true", help="print the analytic memory only; run nothing")
    p.add_argument("--timeout", type=float, default=600, help="seconds per variant before it is stopped")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; use {', '.join(VARIANTS)}")
    return args


# ------------------------------------------------------------------------------------------------------ the model
def model_config(size: str, chunk_size: int = 10):
    """pi0's config for the reach task: `full` is pi0's own sizes (chunk 50), `tiny` the test sizes. Reach actions
    are velocities (no delta dims)."""
    from pi0.model.config import PI0Config

    if size == "full":
        return PI0Config.full(delta_action_dims=())
    return PI0Config.tiny(image_size=56, vocab_size=1024, chunk_size=chunk_size, delta_action_dims=())


def build_policy(size: str, device: str, seed: int = 0):
    """A random-weight pi0 built directly on `device` (a full pi0 never materialises on the CPU first)."""
    import torch

    from pi0.model.modeling import PI0Model
    from pi0.model.normalization import identity_stats
    from pi0.ript.policy.pi0_policy import PI0Policy
    from pi0.model.tokenizer import build_word_tokenizer
    from pi0.ript.env.reach_sim import ReachEnvSpec

    spec = ReachEnvSpec()
    tokenizer = build_word_tokenizer([spec.instruction(t) for t in range(spec.num_tasks())])
    torch.manual_seed(seed)
    with torch.device(device):
        model = PI0Model(model_config(size))
    return PI0Policy(model, tokenizer, identity_stats(), device=device, seed=seed)


def analytic_memory(size: str, variant: str, strategy: str, world_size: int, bf16: bool) -> dict[str, float]:
    """GiB per rank of what training holds regardless of batch: fp32 weights, fp32 gradients and AdamW's two fp32
    moments of the trained parameters, and the frozen full-weight copies (the CFG rollout anchor; under FSDP the
    rollout replica, which is also the anchor). Activations come on top and depend on the batch: see the run."""
    import torch

    from pi0.model.modeling import PI0Model
    from pi0.ript.algo.memory import frozen_copy_bytes, plan_memory
    from pi0.ript.config.algo_schema import AlgoConfig

    with torch.device("meta"):
        model = PI0Model(model_config(size))
    total = sum(p.numel() for p in model.parameters())
    frozen_prefix = sum(p.numel() for p in model.paligemma_with_expert.paligemma.parameters())
    trained = total - frozen_prefix if variant.endswith("expert") else total
    shards = world_size if strategy == "fsdp" else 1
    algo = AlgoConfig()  # the variants run with the algo defaults (run_one sets none of these keys)
    copies = frozen_copy_bytes("cfg" if variant.startswith("cfg") else "ppo", algo.kl_coef, algo.cfg_null_anchor,
                               algo.cfg_anchor_coef, strategy == "fsdp", bf16)
    plan = plan_memory(total, trained, copies, shards)  # what the trainer checks before its first rollout
    out = {"parameters_billion": total / 1e9, "trained_billion": trained / 1e9, "weights_gib": 4 * total / shards / GIB,
           "gradients_gib": plan.gradients / GIB, "adamw_gib": plan.adamw / GIB, "frozen_copies_gib": plan.frozen_copies / GIB}
    out["static_gib"] = out["weights_gib"] + out["gradients_gib"] + out["adamw_gib"] + out["frozen_copies_gib"]
    return out


def uses_bf16(args) -> bool:
    """Whether train.precision resolves to bf16 here (auto: on CUDA)."""
    if args.precision != "auto":
        return args.precision == "bf16"
    if args.device != "auto":
        return args.device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def machine() -> dict[str, Any]:
    import torch

    info = {"cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / GIB
    return info


# ------------------------------------------------------------------------------------------------- one variant
def run_one(args) -> dict[str, Any]:
    """One training iteration of `args.one` in this process (under torchrun: on every rank)."""
    from pi0.ript.algo.trainer import train
    from pi0.ript.config.schema import load_config
    from pi0.ript.policy.devices import resolve_device

    loss, part = args.one.split("-")
    device = resolve_device(args.device) if args.device == "auto" else args.device
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}" if device == "cuda" else device
    output_dir = tempfile.mkdtemp(prefix="bench_train_")
    overrides = [
        "task.benchmark_name=reach", f"task.image_size={args.image_size}", "task.num_wait_steps=0",
        f"task.max_episode_length={args.episode_length}", "task.replan_steps=5", f"task.num_parallel_envs={args.workers}",
        "features.use_ript_vla_runner=true", f"policy.device={device.split(':')[0]}",
        f"algo.loss={loss}", f"algo.rollouts_per_env={args.rollouts}", f"algo.num_contexts={args.contexts}",
        "algo.dynamic_sampling=false", f"algo.num_denoise_steps={args.denoise_steps}", f"algo.num_minibatches={args.minibatches}",
        "algo.update_epochs=1", f"train.expert_only={part == 'expert'}", f"train.precision={args.precision}",
        f"train.activation_checkpointing={args.activation_checkpointing}", f"train.strategy={args.strategy}",
        "train.num_iterations=1", "train.eval_every=0", "train.eval_at_start=false", "train.save_checkpoints=false",
        "train.progress=false", f"train.output_dir={output_dir}",
    ]
    cfg = load_config(None, overrides)
    started = time.perf_counter()
    policy = build_policy(args.size, device)
    build_seconds = time.perf_counter() - started
    metrics = train(cfg, base_policy=policy)
    result = {
        "variant": args.one, "build_s": build_seconds,
        "rollout_s": metrics["time/rollout_s"], "update_s": metrics["time/update_s"], "iteration_s": metrics["time/iteration_s"],
        "samples": metrics["update/samples"], "optimizer_steps": metrics["update/optimizer_steps"],
        "env_steps_per_second": metrics["rollout/env_steps_per_second"],
        "rollout_peak_gib": metrics.get("memory/rollout_peak_gib"), "update_peak_gib": metrics.get("memory/update_peak_gib"),
        # ru_maxrss is KiB on Linux: the whole process's peak (model build included), for CPU runs.
        "process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    return result


def process_count(args) -> int:
    if args.nproc > 0:
        return args.nproc
    if args.strategy != "fsdp":
        return 1
    import torch

    return max(torch.cuda.device_count(), 2) if args.device != "cpu" else 2


def _child(args, variant: str) -> dict[str, Any]:
    """Run one variant in a fresh process (its own peak memory), under torchrun when it needs several; a failure
    or timeout is a result, not a crash."""
    nproc = process_count(args)
    launcher = [sys.executable]
    if nproc > 1:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                     "--master_port", str(port)]
    command = launcher + ["-m", "pi0.ript.bench.train", "--one", variant]
    for key in ("size", "device", "precision", "activation_checkpointing", "strategy", "workers", "contexts", "rollouts",
                "episode_length", "denoise_steps", "minibatches", "image_size"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        try:
            proc = subprocess.run(command + ["--out", out.name], capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"variant": variant, "error": f"timed out after {args.timeout:.0f} s"}
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            return {"variant": variant, "error": (lines[-1] if lines else f"exit code {proc.returncode}")[:300]}
        return json.loads(open(out.name).read())


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.one:
        result = run_one(args)
        if int(os.environ.get("RANK", "0")) == 0 and args.out:
            with open(args.out, "w") as f:
                json.dump(result, f)
        return 0
    world_size = process_count(args)
    results: dict[str, Any] = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k not in ("out", "one")}, "variants": {}}
    print(f"machine: {results['machine']}")
    print(f"pi0 {args.size}, device {args.device}, precision {args.precision}, activation checkpointing "
          f"{args.activation_checkpointing}, strategy {args.strategy}; reach: {args.workers} workers, {args.contexts} "
          f"contexts x {args.rollouts} rollouts, {args.episode_length} steps, {args.denoise_steps} denoising steps, "
          f"{args.minibatches} minibatches; {world_size} process(es)")
    header = f"{'variant':<11} {'static GiB':>10} {'(weights/grads/adam/copies)':>28} {'rollout s':>9} {'update s':>8} {'iter s':>7} {'rollout GiB':>11} {'update GiB':>10} {'RSS GiB':>8}"
    print(header)
    for variant in args.variants:
        analytic = analytic_memory(args.size, variant, args.strategy, world_size, uses_bf16(args))
        row = {"analytic": analytic}
        if not args.analytic_only:
            row.update(_child(args, variant))
        results["variants"][variant] = row
        split = "/".join(_fmt(analytic[k]) for k in ("weights_gib", "gradients_gib", "adamw_gib", "frozen_copies_gib"))
        if "error" in row:
            print(f"{variant:<11} {analytic['static_gib']:>10.1f} {split:>28}  failed: {row['error']}")
            continue
        print(f"{variant:<11} {analytic['static_gib']:>10.1f} {split:>28} {_fmt(row.get('rollout_s')):>9} "
              f"{_fmt(row.get('update_s')):>8} {_fmt(row.get('iteration_s')):>7} {_fmt(row.get('rollout_peak_gib')):>11} "
              f"{_fmt(row.get('update_peak_gib')):>10} {_fmt(row.get('process_peak_rss_gib')):>8}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 1 if any("error" in row for row in results["variants"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
