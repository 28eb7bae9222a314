"""Malformed input gets one line naming the key or file and what is allowed, exit code 2, and no traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from pi0.ript.cli import main

CONFIG = f"{REPO_ROOT}/pi0/ript/config/ript_vla_test.yaml"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A real (tiny) pi0 checkpoint, and broken copies of it."""
    from pi0.ript.policy.pi0_policy import make_tiny_policy

    root = tmp_path_factory.mktemp("ckpt")
    good = root / "good"
    make_tiny_policy(["pick up the bowl"], image_size=56).save_pretrained(good)
    broken = {}
    for name, edit in {
        "no_norm_stats": lambda d: (d / "norm_stats.json").unlink(),
        "bad_json_norm_stats": lambda d: (d / "norm_stats.json").write_text("{not json"),
        "no_actions_key": lambda d: (d / "norm_stats.json").write_text(json.dumps({"norm_stats": {"state": json.loads((good / "norm_stats.json").read_text())["norm_stats"]["state"]}})),
    }.items():
        target = root / name
        subprocess.run(["cp", "-r", str(good), str(target)], check=True)
        edit(target)
        broken[name] = target
    return broken


CASES = [
    # (overrides, text the one-line message must contain)
    (["task.num_paralel_envs=2"], "num_paralel_envs"),
    (["task.num_parallel_envs=two"], "num_parallel_envs"),
    (["task.num_parallel_envs=0"], "task.num_parallel_envs=0 must be >= 1"),
    (["algo.rollouts_per_env=1"], "algo.rollouts_per_env=1 must be >= 2"),
    (["task.benchmark_name=libero_100"], "task.benchmark_name='libero_100' is unknown: use one of"),
    (["task.task_ids=[42]"], "task.task_ids: 42 is not a task of libero_spatial: use 0..9"),
    (["task.max_episode_length=-5"], "task.max_episode_length=-5 must be >= 1"),
    (["task.image_size=0"], "task.image_size=0 must be >= 16"),
    (["task.replan_steps=0"], "task.replan_steps=0 must be >= 1"),
    (["task.num_wait_steps=-1"], "task.num_wait_steps=-1 must be >= 0"),
    (["task.model_cache_gb=-1"], "task.model_cache_gb=-1.0 must be >= 0 (0: compile every scene, no cache)"),
    (["eval.policy_noise=fixed"], "eval.policy_noise='fixed': use per_episode or stream"),
    (["policy.dtype=float16"], "policy.dtype='float16': use float32 or bfloat16"),
    (["policy.compile_dynamic_batch=true"], "policy.compile_dynamic_batch=true applies to policy.compile=default or reduce-overhead, not 'auto'"),
    (["policy.kind=pi0", "policy.checkpoint_path=/nonexistent/ckpt"], "policy.checkpoint_path='/nonexistent/ckpt' is not a directory"),
    (["algo.loss=sgd"], "algo.loss='sgd': use one of ppo, cfg"),
    (["algo.optimizer=sgd"], "algo.optimizer='sgd': use one of ppo, cfg"),
    (["algo.optimizer=cfg", "algo.loss=ppo2"], "algo.loss='ppo2' disagree"),
    (["algo.cfg_null_anchor=previous"], "algo.cfg_null_anchor='previous': use none, start or rollout"),
    (["algo.cfg_fit_negatives=false"], "algo.cfg_guidance_base=negative needs algo.cfg_fit_negatives=true"),
    (["runner.start_method=thread"], "runner.start_method='thread': use spawn, forkserver or fork"),
    (["eval.episodes_per_task=0"], "eval.episodes_per_task=0 must be >= 1"),
    (["eval.init_state_offset=49", "eval.episodes_per_task=2"], "exceeds the 50 init states of task 0"),
    (["task.num_parallel_envs"], "must look like key=value"),
    (["features.use_ript_vla_runner=false", "features.enable_parallel_envs=true"], "the serial LIBEROEnvRunner runs one env"),
    (["runner.worker_timeout_s=0"], "runner.worker_timeout_s=0.0 must be > 0"),
]


def _run(capsys, argv):
    before = signal.getsignal(signal.SIGTERM)
    code = main(argv)
    # main() in-process gives SIGTERM back as it found it (it once left it raising KeyboardInterrupt in pytest)
    assert signal.getsignal(signal.SIGTERM) is before
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("overrides, expected", CASES, ids=[c[0][0] for c in CASES])
def test_bad_config_value(overrides, expected, capsys, tmp_path):
    code, err = _run(capsys, ["eval", "--config", CONFIG, f"eval.output_dir={tmp_path}", *overrides])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("broken, expected", [
    ("no_norm_stats", "norm_stats.json"),
    ("bad_json_norm_stats", "norm_stats.json"),
    ("no_actions_key", "actions"),
])
def test_bad_checkpoint(broken, expected, checkpoints, capsys, tmp_path):
    path = checkpoints[broken]
    code, err = _run(capsys, ["eval", "--config", CONFIG, f"policy.checkpoint_path={path}", f"eval.output_dir={tmp_path}"])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "policy.checkpoint_path" in lines[0] and expected in lines[0], err


def test_missing_and_malformed_config_files(capsys, tmp_path):
    code, err = _run(capsys, ["eval", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2 and "nope.yaml not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    code, err = _run(capsys, ["eval", "--config", str(bad)])
    assert code == 2 and "bad.yaml is not valid YAML" in err
    wrong_section = tmp_path / "wrong.yaml"
    wrong_section.write_text("tsak:\n  benchmark_name: libero_goal\n")
    code, err = _run(capsys, ["eval", "--config", str(wrong_section)])
    assert code == 2 and "tsak" in err


def test_the_console_script_prints_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "pi0.ript.cli", "eval", "--config", CONFIG, "task.image_size=0"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: task.image_size=0 must be >= 16 pixels"


def test_algo_optimizer_is_the_earlier_name_of_algo_loss():
    from pi0.ript.config.schema import load_config

    assert load_config(None, ["algo.optimizer=cfg"]).algo.loss == "cfg"
    assert load_config(None, ["algo.optimizer=cfg"]).algo.optimizer is None  # folded: one key is read
    assert load_config(None, []).algo.loss == "ppo"


@pytest.mark.parametrize("settings, expected", [
    ("defaults,fastest", "--settings: unknown fastest; use all-off, defaults, task-major, per-step, robosuite-physics, compiled-scenes, serial"),
    ("defaults,task-major,defaults", "--settings defaults,task-major,defaults: name each setting once"),
])
def test_bench_eval_settings_are_checked_before_anything_runs(settings, expected, capsys):
    from pi0.ript.bench.eval import main as bench_eval

    with pytest.raises(SystemExit) as exit_info:
        bench_eval(["--settings", settings])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
