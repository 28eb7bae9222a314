"""The eval summary's success rates carry Wilson 95% intervals: in results.json, the printed table and the chart."""

from __future__ import annotations

import pytest

from pi0.ript.evaluate import format_robustness_table, format_table, plot_success, summarize
from pi0.ript.success_rate import success_interval


@pytest.mark.parametrize("successes, episodes, low, high", [
    (45, 50, 0.7864, 0.9565),  # textbook values of Wilson's interval at 95%
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1, 2, 0.0945, 0.9055),
])
def test_wilson_interval_matches_reference_values(successes, episodes, low, high):
    lo, hi = success_interval(successes, episodes)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)
    assert lo <= successes / episodes <= hi


def test_interval_narrows_with_more_episodes_and_is_absent_without_any():
    widths = [hi - lo for lo, hi in (success_interval(9 * n // 10, n) for n in (10, 50, 500))]
    assert widths[0] > widths[1] > widths[2]
    assert success_interval(0, 0) is None


def test_summary_table_and_chart_carry_the_intervals(tmp_path):
    records = [{"task_id": t, "task_name": f"task {t}", "success": i < 3 * (t + 1)} for t in range(2) for i in range(8)]
    summary = summarize(records, [0, 1, 2])
    assert summary["per_task"]["0"]["success_rate_ci95"] == success_interval(3, 8)
    assert summary["per_task"]["2"]["success_rate_ci95"] is None  # a task without episodes
    assert summary["success_rate_ci95"] == success_interval(9, 16)
    table = format_table(summary)
    lo, hi = success_interval(9, 16)
    assert table.splitlines()[0].split()[:4] == ["task", "success", "rate", "95%"]
    assert table.splitlines()[-1].split() == ["all", "9/16", "56.2%", f"{100 * lo:.1f}-{100 * hi:.1f}"]
    plot_success(summary, tmp_path / "success.png", "suite")
    assert (tmp_path / "success.png").stat().st_size > 0
    combined = {"clean_suite": "a", "suites": {"a": {**summary, "perturbation": "clean"},
                                               "b": {**summarize(records[:8], [0]), "perturbation": "swap"}}}
    rows = format_robustness_table(combined).splitlines()
    assert f"{100 * lo:.1f}-{100 * hi:.1f}" in rows[1] and rows[2].split()[-1] == f"{100 * (3 / 8 - 9 / 16):+.1f}"
