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
    assert results["finished"] is True and not out.with_name(out.name + ".partial").exists()
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
    # Each ratio is the quotient of the two numbers this run measured (a ratio taken against the wrong point, mode or
    # worker count would differ), and the limits are the sim section's own points.
    from pi0.ript.bench.inference import inference_limit
    from pi0.ript.bench.sim import sim_limit

    assert sim_limit(results, 1, 5) == sim["episodes_render_every_5"]["env_steps_per_second"]
    assert runners["parallel_1"]["ratio_to_sim_limit"] == pytest.approx(
        runners["parallel_1"]["env_steps_per_second"] / sim_limit(results, 1, 5))
    assert runners["parallel_1"]["ratio_to_serial"] == pytest.approx(
        runners["parallel_1"]["env_steps_per_second"] / runners["serial"]["env_steps_per_second"])

    latency = results["latency"]["latency_50ms_replan_1"]
    assert latency["overlapped"]["env_steps_per_second"] > 0 and latency["lockstep"]["env_steps_per_second"] > 0
    assert latency["overlapped_over_lockstep"] == pytest.approx(
        latency["overlapped"]["env_steps_per_second"] / latency["lockstep"]["env_steps_per_second"])
    n = results["settings"]["latency_workers"]
    limits = [sim_limit(results, n, 1), inference_limit(results, "latency_50ms", n, 1)]
    assert latency["sim_limit"] == limits[0] and latency["inference_limit"] == limits[1]
    assert latency["overlapped_over_min_limit"] == pytest.approx(latency["overlapped"]["env_steps_per_second"] / min(limits))
    assert latency["same_episodes"] is True  # scheduling never changes an episode

    features = results["features"]["workers_1_replan_5"]
    assert features["on"]["episodes_per_hour"] > 0 and features["off"]["episodes_per_hour"] > 0
    assert features["steps_ratio_on_over_off"] == pytest.approx(
        features["on"]["env_steps_per_second"] / features["off"]["env_steps_per_second"])
    assert features["episodes_ratio_on_over_off"] == pytest.approx(
        features["on"]["episodes_per_hour"] / features["off"]["episodes_per_hour"])

    emulated = results["emulated"]["h200_a140_c8"]  # the GPU box emulated: sleeping reach workers, L(b) = a + c*b
    for mode in ("defaults", "lockstep", "all_off"):
        assert emulated["runs"][mode]["env_steps_per_second"] > 0 and emulated["runs"][mode]["episodes_per_hour"] > 0
    assert emulated["best_predicted_steps_per_second"] > 0 and 1 <= emulated["best_k"] <= emulated["config"]["workers"]
    runs = emulated["runs"]
    assert emulated["defaults_over_all_off"] == pytest.approx(
        runs["defaults"]["env_steps_per_second"] / runs["all_off"]["env_steps_per_second"])
    assert emulated["defaults_over_best_predicted"] == pytest.approx(
        runs["defaults"]["env_steps_per_second"] / emulated["best_predicted_steps_per_second"])
    # The policy sleeps a = 140 ms + c = 8 ms per sample: the fit must find about that, not just something positive.
    assert 0.1 < emulated["call_fit"]["fixed_seconds"] < 0.3 and 0.002 < emulated["call_fit"]["per_sample_seconds"] < 0.03
    assert emulated["same_episodes"] is True  # neither the schedule nor render on demand changes an episode
    assert "Machine:" in run.stdout and results["machine"]["cpus"] >= 1 and results["machine"]["torch"]

    memory = results["memory"]
    assert memory["main_rss_bytes"] > 0 and memory["bare_env_rss_bytes"] > 0
    assert memory["worker_rss_bytes"] and all(r > 0 for r in memory["worker_rss_bytes"])

    # Every number in the measured sections is positive (a zero rate would mean a section silently did nothing).
    for section in ("sim", "pickle", "inference", "memory"):
        assert not _positive_numbers(results[section]), _positive_numbers(results[section])
    assert {row["target"] for row in results["targets"]}


def test_bench_keeps_the_sections_done_when_a_later_one_fails(tmp_path, monkeypatch, no_orphans):
    """A run stopped part-way (a time limit on a lent GPU box, a crash) leaves a whole JSON of the sections it
    finished, marked unfinished: the GPU check's runs are short and cannot be repeated at will."""
    import pi0.ript.bench as bench

    def broken_inference(args, results):
        raise RuntimeError("stopped in the inference section")

    import torch

    monkeypatch.setattr(bench, "bench_inference", broken_inference)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="inference section"):
            bench.main(["--smoke", "--sections", "sim,inference", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the bench keeps its policy to one thread; later tests get theirs back
    results = json.loads(out.read_text())
    assert results["finished"] is False and "inference" not in results
    assert results["sim"]["1"]["render_every_1"]["env_steps_per_second"] > 0
    assert list(results["section_seconds"]) == ["sim"] and results["wall_seconds"] >= results["section_seconds"]["sim"]
    # The saved part prints as markdown like a whole run.
    assert "simulation limit" in bench.markdown(results)
