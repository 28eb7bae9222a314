"""RIPT learns: a tiny pi0 behaviour-cloned to intermediate success on the reach task is lifted by RL.

Seeded end to end (demonstrations, BC, rollouts, updates). The success rate is the trainer's own evaluation
(`success_history`: eval init states 0..N-1 of every task, fixed sampling seed), before the first update and after
the last. Budget: each run well under 10 minutes on a 2-core CPU; the whole file under ~12.
"""

import time
from pathlib import Path

import pytest

from pi0.ript.algo.bc import behaviour_clone, collect_demonstrations, make_reach_policy
from pi0.ript.algo.trainer import train
from pi0.ript.config.schema import load_config
from pi0.ript.env.reach_sim import ReachEnvSpec

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "pi0/ript/config/learning_demo.yaml"


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory) -> Path:
    """The demo's starting policy: 75 BC steps on perturbed scripted demonstrations (as `python -m pi0.ript.algo.bc`)."""
    spec = ReachEnvSpec(image_size=56)
    demos = collect_demonstrations(spec, range(spec.num_tasks()), range(50), chunk_size=10, max_steps=40, seed=0)
    policy = make_reach_policy(demos, image_size=56, chunk_size=10, seed=0)
    behaviour_clone(policy, demos, steps=75, seed=0)
    directory = tmp_path_factory.mktemp("bc") / "reach_bc"
    policy.save_pretrained(directory)
    return directory


def run(bc_checkpoint: Path, output_dir: Path, overrides: list[str]) -> tuple[float, float, float]:
    cfg = load_config(DEMO_CONFIG, [f"policy.checkpoint_path={bc_checkpoint}", f"train.output_dir={output_dir}",
                                    "train.progress=false", *overrides])
    started = time.perf_counter()
    history = train(cfg)["success_history"]
    return history[0]["eval_success_rate"], history[-1]["eval_success_rate"], time.perf_counter() - started


def test_ppo_raises_success_by_25_points(bc_checkpoint, tmp_path):
    before, after, seconds = run(bc_checkpoint, tmp_path / "ppo", ["algo.optimizer=ppo"])
    print(f"ppo: eval success {before:.3f} -> {after:.3f} in {seconds:.0f} s")
    assert 0.2 <= before <= 0.6, f"the BC starting policy should be intermediate, got {before:.3f}"
    assert after - before >= 0.25, f"ppo: {before:.3f} -> {after:.3f}"
    assert seconds < 600


def test_cfg_raises_success(bc_checkpoint, tmp_path):
    before, after, seconds = run(bc_checkpoint, tmp_path / "cfg", ["algo.optimizer=cfg"])
    print(f"cfg: eval success {before:.3f} -> {after:.3f} in {seconds:.0f} s")
    assert after - before >= 0.1, f"cfg: {before:.3f} -> {after:.3f}"
    assert seconds < 600
