"""`pi0-ript bench --smoke` on real LIBERO: every section runs and reports positive numbers.

No timing assertions: this checks the bench works (CI runs it); the numbers themselves live in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.libero


def _positive_numbers(tree, path="") -> list[str]:
    """Paths of numbers that are not > 0 (ratios, rates, bytes, seconds): all of them should be."""
    bad = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            bad += _positive_numbers(value, f"{path}.{key}")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        if not tree > 0 and not path.endswith(".resets"):  # a short window may hold no reset
            bad.append(f"{path}={tree}")
    return bad


def test_bench_smoke_reports_every_section(tmp_path, no_orphans):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "pi0.ript.cli", "bench", "runner", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "targets (ratios from this run)" in run.stdout
    results = json.loads(out.read_text())
    for section in ("sim", "pickle", "inference", "runners", "latency", "features", "memory", "emulated", "targets"):
        assert results.get(section), f"section {section} missing or empty"

    sim = results["sim"]["1"]
    for mode in ("render_every_1", "render_every_5", "episodes_render_every_1", "episodes_render_every_5"):
        assert sim[mode]["env_steps_per_second"] > 0
    assert results["pickle"]["bytes"] > 2 * 64 * 64 * 3  # two 64x64 RGB cameras
    assert results["pickle"]["fraction_of_rendered_step"] > 0
    assert results["inference"]["small"]["1"]["chunks_per_second"] > 0
    assert results["inference"]["latency_50ms"]["1"]["chunks_per_second"] > 0

    runners = results["runners"]
    for name in ("serial", "parallel_1"):
        point = runners[name]
        assert point["env_steps_per_second"] > 0 and point["episodes_per_hour"] > 0 and point["env_steps"] > 0
        assert point["phase_seconds"]["stepping_envs"] > 0 and point["phase_seconds"]["inference"] > 0
    assert runners["parallel_1"]["ratio_to_sim_limit"] > 0

    latency = results["latency"]["latency_50ms_replan_1"]
    assert latency["overlapped"]["env_steps_per_second"] > 0 and latency["lockstep"]["env_steps_per_second"] > 0
    assert latency["overlapped_over_lockstep"] > 0 and latency["overlapped_over_min_limit"] > 0
    assert latency["same_episodes"] is True  # scheduling never changes an episode

    features = results["features"]["workers_1_replan_5"]
    assert features["on"]["episodes_per_hour"] > 0 and features["off"]["episodes_per_hour"] > 0
    assert features["steps_ratio_on_over_off"] > 0 and features["episodes_ratio_on_over_off"] > 0

    emulated = results["emulated"]["h200_a140_c8"]  # the GPU box emulated: sleeping reach workers, L(b) = a + c*b
    for mode in ("defaults", "lockstep", "all_off"):
        assert emulated["runs"][mode]["env_steps_per_second"] > 0 and emulated["runs"][mode]["episodes_per_hour"] > 0
    assert emulated["best_predicted_steps_per_second"] > 0 and 1 <= emulated["best_k"] <= emulated["config"]["workers"]
    assert emulated["call_fit"]["per_sample_seconds"] > 0  # the policy's c = 8 ms was seen
    assert emulated["same_episodes"] is True  # neither the schedule nor render on demand changes an episode
    assert "Machine:" in run.stdout and results["machine"]["cpus"] >= 1 and results["machine"]["torch"]

    memory = results["memory"]
    assert memory["main_rss_bytes"] > 0 and memory["bare_env_rss_bytes"] > 0
    assert memory["worker_rss_bytes"] and all(r > 0 for r in memory["worker_rss_bytes"])

    # Every number in the measured sections is positive (a zero rate would mean a section silently did nothing).
    for section in ("sim", "pickle", "inference", "memory"):
        assert not _positive_numbers(results[section]), _positive_numbers(results[section])
    assert {row["target"] for row in results["targets"]}
