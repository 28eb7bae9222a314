"""The group schedule's arithmetic (pi0.ript.env.schedule): predicted cycles, the choice of k, the call-time fit.
Pure logic, no processes: cheap, and the numbers are the issue's."""

from __future__ import annotations

import pytest

from pi0.ript.env.schedule import CallTimeFit, GroupSchedule, choose_groups, model_load, predicted_cycle_seconds

H200 = (0.140, 0.008)  # pi0 in bf16 on an H200: a = 140 ms, c = 8 ms per sample (issue 17)
COMPILED = (0.020, 0.003)  # what compiled inference aims at
LIBERO_CHUNK = 5 * 0.031 + 0.014  # replan 5 on the GPU box: five physics steps, one rendered


def test_cycle_is_the_group_round_trip_or_the_models_time_whichever_is_longer():
    # k = 1: simulate, then one call for all 14
    assert predicted_cycle_seconds(1, 14, LIBERO_CHUNK, *H200) == pytest.approx(0.169 + 0.140 + 14 * 0.008)
    # k = 2: the model runs two calls of 7 back to back (0.392 s), longer than a group's own round trip (0.365 s)
    assert predicted_cycle_seconds(2, 14, LIBERO_CHUNK, *H200) == pytest.approx(2 * (0.140 + 7 * 0.008))
    assert model_load(2, 14, LIBERO_CHUNK, *H200) == pytest.approx(1.0)
    # simulation-bound: the round trip dominates and the model idles
    assert predicted_cycle_seconds(2, 4, 1.5, 0.2, 0.0) == pytest.approx(1.7)
    assert model_load(2, 4, 1.5, 0.2, 0.0) == pytest.approx(0.4 / 1.7)


def test_two_groups_win_on_the_emulated_h200_box():
    assert choose_groups(14, LIBERO_CHUNK, *H200) == 2


def test_several_groups_win_with_compiled_inference():
    k = choose_groups(14, LIBERO_CHUNK, *COMPILED)
    cycles = {g: predicted_cycle_seconds(g, 14, LIBERO_CHUNK, *COMPILED) for g in range(1, 15)}
    assert 3 <= k <= 7  # small batches pay off once the fixed cost is small...
    assert cycles[k] <= min(cycles.values()) * 1.03  # ...and the pick is within the tolerance of the best
    assert model_load(k, 14, LIBERO_CHUNK, *COMPILED) <= 0.9  # with headroom for late replies


def test_lock_step_wins_when_simulation_is_nearly_free():
    # reach without the step-time model: ~1 ms a step, a 140 ms fixed cost per call: one big batch
    assert choose_groups(8, 0.005, *H200) == 1


def test_two_halves_for_libero_on_two_cores_at_replan_1():
    # 4 LIBERO envs on 2 CPU cores, ~0.47 s a step each, a 200 ms call: lock-step and two halves predict the same
    # cycle; two halves leave the model idle 40% of it (docs/PERFORMANCE.md measured them 1.13-1.32x lock-step)
    assert choose_groups(4, 0.47, 0.2, 0.0) == 2


def test_single_calls_when_the_model_is_mostly_idle():
    # LIBERO on a 2-core CPU, replan 5, a 200 ms call: every k predicts the same cycle; one env per call waits least
    assert choose_groups(4, 1.5, 0.2, 0.0) == 4
    assert choose_groups(1, 1.5, 0.2, 0.0) == 1


def test_call_time_fit_recovers_a_and_c_and_needs_two_batch_sizes():
    fit = CallTimeFit()
    fit.observe(14, 0.140 + 14 * 0.008)
    assert fit.fit() is None  # one batch size: the fixed and per-sample costs cannot be told apart
    fit.observe(7, 0.140 + 7 * 0.008)
    fit.observe(3, 0.140 + 3 * 0.008)
    a, c = fit.fit()
    assert a == pytest.approx(0.140) and c == pytest.approx(0.008)


def test_call_time_fit_keeps_costs_non_negative():
    fit = CallTimeFit()
    fit.observe(2, 0.30)
    fit.observe(8, 0.20)  # noise: bigger batches looked faster
    a, c = fit.fit()
    assert c == 0.0 and a == pytest.approx(0.25)
    fit = CallTimeFit()
    fit.observe(2, 0.01)
    fit.observe(4, 0.05)  # a line through these would cross zero below b = 1.5
    a, c = fit.fit()
    assert a == 0.0 and c > 0
    with pytest.raises(ValueError, match="batch=0"):
        fit.observe(0, 0.1)


def test_schedule_starts_lock_step_then_probes_a_second_batch_size_then_predicts():
    schedule = GroupSchedule()
    assert schedule.groups(14) == 1  # nothing measured yet
    schedule.observe_chunk(LIBERO_CHUNK)
    schedule.observe_call(14, 0.140 + 14 * 0.008)
    assert schedule.groups(14) == 2  # a batch of 7 next, so that c can be fitted
    schedule.observe_call(7, 0.140 + 7 * 0.008)
    assert schedule.groups(14) == 2  # the prediction's choice
    assert schedule.single_call_seconds() == pytest.approx(0.148)
    assert schedule.as_dict()["call_per_sample_seconds"] == pytest.approx(0.008)
    small = GroupSchedule()
    small.observe_chunk(0.005)
    small.observe_call(3, 0.2)
    assert small.groups(14) == 1  # the one size seen is already small: probe with everyone


def test_fixed_groups_are_capped_by_the_envs_in_an_episode():
    schedule = GroupSchedule(fixed_groups=3)
    assert schedule.groups(14) == 3
    assert schedule.groups(2) == 2


def test_bench_eval_schedule_line_states_the_model_and_the_measured_rate():
    """`pi0-ript bench eval` prints, per setting, what the schedule's model predicts from the runner's own S and L
    (the numbers of the third H200 run's defaults) and the measured rate against the best prediction."""
    from pi0.ript.bench.eval import schedule_line

    row = {"setting": "defaults", "workers": 14, "replan_steps": 5, "env_steps_per_second_after_first_step": 282.4,
           "model_busy_seconds": 20.2, "wall_seconds": 27.3, "seconds_to_first_step": 5.5,
           "schedule": {"groups": 2, "sim_seconds_per_chunk": 0.0968, "call_fixed_seconds": 0.0499,
                        "call_per_sample_seconds": 0.00953}}
    line = schedule_line(row)
    best = 14 * 5 / predicted_cycle_seconds(2, 14, 0.0968, 0.0499, 0.00953)  # max(S + L(7), 2 L(7)) = 2 L(7)
    assert best == pytest.approx(70 / (2 * (0.0499 + 7 * 0.00953)))
    assert f"2: {best:.0f}" in line and "1: 250" in line and f"= {282.4 / best:.2f}x the best prediction (k = 2)" in line
    assert "model busy 20.2 of 21.8 s after the first step" in line
    # The best k is looked for among every k, not only the first few printed: with cheap calls (a = 20, c = 3 ms,
    # S = 175 ms; the emulated compiled_a20_c3 case) it is past 6.
    cheap = {**row, "schedule": {"groups": 5, "sim_seconds_per_chunk": 0.175, "call_fixed_seconds": 0.020,
                                 "call_per_sample_seconds": 0.003}}
    rates = {k: 70 / predicted_cycle_seconds(k, 14, 0.175, 0.020, 0.003) for k in range(1, 15)}
    assert max(rates, key=rates.get) == 7 and "(k = 7)" in schedule_line(cheap) and f"7: {rates[7]:.0f}" in schedule_line(cheap)
    # Lock-step (no fit): said so, not a made-up prediction.
    lockstep = {**row, "setting": "all-off", "schedule": {}}
    assert schedule_line(lockstep).startswith("all-off: no schedule fit")
