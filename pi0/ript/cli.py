"""`pi0-ript` console script: eval | train | bench.

    pi0-ript eval  --config pi0/ript/config/ript_vla_test.yaml [--robustness] [key=value ...]
    torchrun --nproc_per_node N -m pi0.ript.cli eval ...     (one GPU per process, the episodes shared)
    pi0-ript train --config pi0/ript/config/learning_demo.yaml [--resume] [key=value ...]
    pi0-ript bench [runner|model|train|eval] [options]

Errors the user can fix (a bad config value, a missing file or package) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pi0.ript.config.schema import ConfigError, load_config

DEFAULT_CONFIG = "pi0/ript/config/ript_vla_test.yaml"

BENCH_TARGETS = ("runner", "model", "train", "eval")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _raise_keyboard_interrupt(signum, frame):
    # SIGTERM (a cluster scheduler, `kill`) takes the same clean path as Ctrl-C: workers closed, results kept.
    raise KeyboardInterrupt


def _config_path(path: str | None) -> str:
    """The default config ships inside the package, so `pi0-ript eval` works from any directory."""
    if path is not None:
        return path
    from pathlib import Path

    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    from pi0.ript.config.schema import CONFIG_DIR

    return str(CONFIG_DIR / "ript_vla_test.yaml")


def _user_error_hint(exc: BaseException, command: str = "eval") -> str | None:
    """One line for errors a user can fix; None for bugs, which keep their traceback."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, (FileNotFoundError, ImportError)) and str(exc):
        return str(exc).splitlines()[0]
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            if command == "train":
                from pi0.ript.algo.trainer import OUT_OF_MEMORY_HINT

                return OUT_OF_MEMORY_HINT
            return "CUDA out of memory: lower task.num_parallel_envs (e.g. task.num_parallel_envs=1) or use policy.dtype=bfloat16"
    except ImportError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pi0-ript", description="pi0 + RIPT-VLA on LIBERO")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("eval", "evaluate a policy on a LIBERO suite"), ("train", "RIPT-VLA post-training")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", "--config_path", dest="config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
        p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. task.num_parallel_envs=4")
        if name == "train":
            p.add_argument("--resume", action="store_true", help="continue from the checkpoint in train.output_dir")
        else:
            p.add_argument("--robustness", action="store_true", help="the clean suite of task.benchmark_name and its LIBERO-PRO perturbations, compared")
    bench = sub.add_parser("bench", help="throughput and memory benchmarks: `bench [runner|model|train|eval] [options]`")
    bench.add_argument("target", nargs="?", default="runner", choices=BENCH_TARGETS)
    argv = sys.argv[1:] if argv is None else list(argv)
    # The benchmarks parse their own options; only the optional target name is ours, so `pi0-ript bench --out x`
    # means the runner bench rather than an unknown target.
    bench_args: list[str] = []
    if argv[:1] == ["bench"]:
        has_target = len(argv) > 1 and argv[1] in BENCH_TARGETS
        argv, bench_args = argv[: 1 + has_target], argv[1 + has_target :]
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Put back the caller's handler on return: main() called in-process (tests, a notebook) must not leave
    # SIGTERM turned into KeyboardInterrupt for the rest of that process.
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return _run_command(args, bench_args)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def _run_command(args, bench_args: list[str]) -> int:
    """The chosen command; an interrupt or a known user error becomes an exit code and one line."""
    try:
        if args.command == "bench":
            if args.target == "model":
                from pi0.ript.bench.model import main as bench_main
            elif args.target == "train":
                from pi0.ript.bench.train import main as bench_main
            elif args.target == "eval":
                from pi0.ript.bench.eval import main as bench_main
            else:
                from pi0.ript.bench import main as bench_main
            return bench_main(bench_args) or 0
        cfg = load_config(_config_path(args.config), args.overrides)
        if args.command == "eval":
            from pi0.ript.eval_ranks import EvalRanks
            from pi0.ript.evaluate import run_eval, run_robustness

            ranks = EvalRanks.from_environment()  # under torchrun: this process's share of the episodes and its GPU
            try:
                (run_robustness if args.robustness else run_eval)(cfg, ranks)
            finally:
                ranks.close()
        else:
            from pi0.ript.algo.trainer import train

            train(cfg, resume=args.resume)
        return 0
    except KeyboardInterrupt:
        print("interrupted: workers stopped; finished results are on disk, re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        hint = _user_error_hint(exc, args.command)
        if hint is None:
            raise
        print(f"error: {hint}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
