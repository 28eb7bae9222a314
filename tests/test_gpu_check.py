"""`scripts/gpu_check.sh --dry-run`: every section of the GPU machine check runs on a CPU with tiny sizes, under its
time limit, and writes its results as it goes; `pi0-ript bench train` reports what the trainer did and memory that
adds up from the parameter counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT as _ROOT
from pi0.ript.bench.train import analytic_memory

REPO_ROOT = Path(_ROOT)
SECTIONS = ["machine", "bench_model", "bench_eval", "bench_train", "bench_compile", "bench_eval_compiled", "bench_eval_long",
            "bench_runner_quick", "eval_ranks"]


@pytest.mark.libero
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check"
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/gpu_check.sh"), "--dry-run", "--sections", ",".join(SECTIONS), str(out)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=900,
    )
    summary = json.loads((out / "gpu_check.json").read_text())
    assert list(summary) == SECTIONS, result.stdout[-3000:]
    assert result.returncode == 0 and all(s["exit_code"] == 0 for s in summary.values()), result.stdout[-4000:]
    assert all((out / f"{name}.log").stat().st_size > 0 for name in SECTIONS)

    bench = json.loads((out / "bench_train.json").read_text())
    assert list(bench["variants"]) == ["ppo-full", "cfg-full"]
    for variant, row in bench["variants"].items():
        assert row["rollout_s"] > 0 and row["update_s"] > 0 and row["samples"] > 0 and row["optimizer_steps"] == 2, variant
        assert row["process_peak_rss_gib"] > 0
        assert row["analytic"] == pytest.approx(analytic_memory("tiny", variant, "replicated", 1, bf16=False))
    assert bench["settings"]["activation_checkpointing"] == "all"

    evaluation = json.loads((out / "bench_eval.json").read_text())
    assert [r["setting"] for r in evaluation["results"]] == ["all-off", "robosuite-physics", "compiled-scenes", "defaults"]
    assert evaluation["settings"]["machine_warmup_seconds"] > 0  # one env built and reset before the first setting
    for row in evaluation["results"]:  # one 6-step episode each, counted by the real runner
        assert row["episodes"] == 1 and row["env_steps"] == 6 and row["inference_calls"] >= 1, row
        assert row["env_steps_per_second"] == pytest.approx(6 / row["wall_seconds"], rel=1e-6)
        # Start-up (a worker process, an ~8 s env build) apart, the rate over the 5 later steps is higher.
        assert 0 < row["seconds_to_first_step"] < row["wall_seconds"]
        assert row["env_steps_per_second_after_first_step"] > row["env_steps_per_second"]
        assert row["task_loads"] == 1  # one worker, one task
    # Where the workers' MuJoCo models came from: the machine warm-up wrote the scene, so the settings with the cache
    # load it; all-off compiles at the build and again at its hard first reset.
    assert {r["setting"]: r["scene_models"] for r in evaluation["results"]} == {
        "all-off": {"loaded": 0, "compiled": 2}, "robosuite-physics": {"loaded": 1, "compiled": 0},
        "compiled-scenes": {"loaded": 0, "compiled": 1}, "defaults": {"loaded": 1, "compiled": 0}}
    # The saved run prints again, table and one schedule line per setting, without running anything.
    report = subprocess.run([sys.executable, "-m", "pi0.ript.cli", "bench", "eval", "--report", str(out / "bench_eval.json")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    lines = report.stdout.splitlines()
    assert "after start" in lines[0] and [line.split(":")[0] for line in lines[5:]] == [
        "all-off", "robosuite-physics", "compiled-scenes", "defaults"]
    compiled = json.loads((out / "bench_eval_compiled.json").read_text())
    assert [r["setting"] for r in compiled["results"]] == ["defaults"] and compiled["results"][0]["env_steps"] == 6
    long = json.loads((out / "bench_eval_long.json").read_text())
    assert [r["setting"] for r in long["results"]] == ["defaults"] and long["results"][0]["episodes"] == 1
    quick = json.loads((out / "bench_runner_quick.json").read_text())
    assert quick["sim"]["1"]["render_every_1"]["steps"] > 0 and quick["pickle"]["bytes"] > 0
    ranks = json.loads((out / "eval_ranks" / "results.json").read_text())
    assert ranks["episodes"] == 4 and ranks["runner_stats"]["ranks"] == 2
    assert [r["episodes"] for r in ranks["runner_stats"]["per_rank"]] == [2, 2]
    assert json.loads((out / "bench_model.json").read_text())["results"]
    assert json.loads((out / "bench_compile.json").read_text())["results"]


def test_gpu_check_names_an_unknown_section(tmp_path):
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts/gpu_check.sh"), "--sections", "machine,bench_evals", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown section 'bench_evals'" in result.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_gpu_check_deadline_cuts_limits_and_skips(tmp_path):
    """--deadline 30: `machine` keeps its 20 s limit (30 less the 10 s kill grace); `bench_model` comes after the
    seconds `machine` took (importing torch), would have under 20 s and is skipped, recorded as such; a deadline that
    is not a whole number is refused in one line."""
    script = str(REPO_ROOT / "scripts/gpu_check.sh")
    result = subprocess.run(["bash", script, "--dry-run", "--deadline", "30", "--sections", "machine,bench_model", str(tmp_path)],
                            cwd=REPO_ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["machine"]["exit_code"] == 0 and not summary["machine"]["skipped"], result.stdout
    assert "== machine (limit 20s)" in result.stdout and summary["machine"]["seconds"] >= 1
    assert summary["bench_model"] == {"exit_code": 125, "seconds": 0, "timed_out": False, "skipped": True}, result.stdout
    assert "== bench_model: skipped" in result.stdout and result.returncode == 1
    bad = subprocess.run(["bash", script, "--deadline", "soon", str(tmp_path / "bad")], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--deadline needs a whole number of seconds" in bad.stderr


def test_analytic_memory_adds_up():
    """Full pi0: 3.24 B parameters, 0.31 B outside the vision-language prefix; bytes per parameter as AdamW in fp32."""
    full = analytic_memory("full", "ppo-full", "replicated", 1, bf16=False)
    assert full["parameters_billion"] == pytest.approx(3.238, abs=1e-3)
    assert full["weights_gib"] == pytest.approx(full["parameters_billion"] * 1e9 * 4 / 2**30)
    assert full["adamw_gib"] == pytest.approx(2 * full["gradients_gib"]) and full["frozen_copies_gib"] == 0
    expert = analytic_memory("full", "ppo-expert", "replicated", 1, bf16=False)
    assert expert["trained_billion"] == pytest.approx(0.315, abs=1e-3) and expert["weights_gib"] == full["weights_gib"]
    cfg32 = analytic_memory("full", "cfg-full", "replicated", 1, bf16=False)
    cfg16 = analytic_memory("full", "cfg-full", "replicated", 1, bf16=True)
    assert cfg32["frozen_copies_gib"] == pytest.approx(full["weights_gib"]) and cfg16["frozen_copies_gib"] == pytest.approx(full["weights_gib"] / 2)
    sharded = analytic_memory("full", "ppo-full", "fsdp", 8, bf16=True)
    assert sharded["weights_gib"] + sharded["gradients_gib"] + sharded["adamw_gib"] == pytest.approx(
        (full["weights_gib"] + full["gradients_gib"] + full["adamw_gib"]) / 8)
    assert sharded["frozen_copies_gib"] == pytest.approx(full["weights_gib"])  # the rollout replica
