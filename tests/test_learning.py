"""RIPT learns: a tiny pi0 behaviour-cloned to intermediate success on the reach task is lifted by PPO.

Seeded end to end (demonstrations, BC, rollouts, updates; one torch thread, since the thread count changes float
reduction order and so the sampled trajectories). The success rate is the trainer's own evaluation (`success_history`:
eval init states 0..39 of each of the 3 tasks, fixed sampling seed), before the first update and after the last.

Measured with pi0/ript/config/learning_demo.yaml on this 2-core CPU (ddpm flow-SDE, per-step PPO ratios, 8 contexts
x 8 rollouts, 16 iterations): eval success 0.442 -> 0.600 (iteration 8) -> 0.725 (iteration 16), +28 points, the
issue's target being +25. CFG (advantage-conditioned flow matching, the demo config's cfg keys: plain ODE rollouts,
guidance v_null + 1.0 (v_pos - v_neg), the null condition anchored to the rollout policy): 0.408 -> 0.667 -> 0.650,
+24 points in 376 s; the test asks for a measurable lift, at least 10 points (the eval's noise is about +-4.5).
"""

import time
from pathlib import Path

import pytest
import torch

from pi0.ript.algo.bc import behaviour_clone, collect_demonstrations, make_reach_policy
from pi0.ript.algo.trainer import train
from pi0.ript.config.schema import load_config
from pi0.ript.env.reach_sim import ReachEnvSpec

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "pi0/ript/config/learning_demo.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# PPO's lift depends on the CPU's float rounding (+28.3 and +21.6 points on two machines, same code and seed; +16.7
# to +28.3 over three seeds): at least 15 points. CFG: +24 on both machines, +8 to +24 over seeds (docs/TRAINING.md).
@pytest.mark.parametrize("optimizer, min_lift", [("ppo", 0.15), ("cfg", 0.10)])
def test_rl_raises_success(bc_checkpoint, tmp_path, optimizer, min_lift):
    output_dir = tmp_path / optimizer
    cfg = load_config(DEMO_CONFIG, [f"policy.checkpoint_path={bc_checkpoint}", f"train.output_dir={output_dir}",
                                    "train.progress=false", f"algo.loss={optimizer}"])
    started = time.perf_counter()
    history = train(cfg)["success_history"]
    seconds = time.perf_counter() - started
    before, after = history[0]["eval_success_rate"], history[-1]["eval_success_rate"]
    print(f"{optimizer}: eval success {[round(h['eval_success_rate'], 3) for h in history]} in {seconds:.0f} s")
    assert 0.2 <= before <= 0.6, f"the BC starting policy should be intermediate, got {before:.3f}"
    assert after - before >= min_lift, f"{optimizer}: {before:.3f} -> {after:.3f}"
    assert seconds < 600
    assert (output_dir / "success.png").stat().st_size > 0
