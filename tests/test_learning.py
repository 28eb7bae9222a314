"""RIPT learns: a tiny pi0 behaviour-cloned to intermediate success on the reach task is lifted by PPO.

Seeded end to end (demonstrations, BC, rollouts, updates; one torch thread, since the thread count changes float
reduction order and so the sampled trajectories). The success rate is the trainer's own evaluation (`success_history`:
eval init states 0..39 of each of the 3 tasks, fixed sampling seed), before the first update and after the last.

Measured with pi0/ript/config/learning_demo.yaml on this 2-core CPU (ddpm flow-SDE, per-step PPO ratios, 8 contexts
x 8 rollouts, 16 iterations): eval success 0.442 -> 0.600 (iteration 8) -> 0.725 (iteration 16), +28 points, the
issue's target being +25. CFG (advantage-conditioned flow matching, the demo config's cfg keys: plain ODE rollouts,
guidance v_null + 1.0 (v_pos - v_neg), the null condition anchored to the rollout policy): 0.408 -> 0.667 -> 0.650,
+24 points in 376 s; the test asks for a measurable lift, at least 10 points (the eval's noise is about +-4.5).

pi0.5 (`python -m pi0.ript.algo.bc --variant pi05`: 300 BC steps, task-only prompt, quantile normalisation), the same
demo config with PPO: 0.383 -> 0.492 -> 0.575, +19.2 points (docs/TRAINING.md, "pi0.5 on the reach task").
"""

import time
from pathlib import Path

import pytest
import torch

from pi0.ript.algo.bc import BC_STEPS, behaviour_clone, collect_demonstrations, make_reach_policy
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


def _bc_checkpoint(tmp_path_factory, variant: str) -> Path:
    """The demo's starting policy, as `python -m pi0.ript.algo.bc --variant VARIANT`: BC_STEPS[variant] (pi0: 75,
    pi05: 300) BC steps on perturbed scripted demonstrations."""
    spec = ReachEnvSpec(image_size=56)
    demos = collect_demonstrations(spec, range(spec.num_tasks()), range(50), chunk_size=10, max_steps=40, seed=0)
    policy = make_reach_policy(demos, image_size=56, chunk_size=10, seed=0, variant=variant)
    behaviour_clone(policy, demos, steps=BC_STEPS[variant], seed=0)
    directory = tmp_path_factory.mktemp("bc") / f"reach_bc_{variant}"
    policy.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory) -> Path:
    return _bc_checkpoint(tmp_path_factory, "pi0")


@pytest.fixture(scope="module")
def bc_checkpoint_pi05(tmp_path_factory) -> Path:
    return _bc_checkpoint(tmp_path_factory, "pi05")


def test_pi05_bc_policy_round_trip(tmp_path):
    """`--variant pi05` builds a tiny pi0.5 with a task-only prompt, quantile statistics and pi0's 48-token budget, and
    a reload prompts and normalises the same way (fast: a few demonstrations, no BC)."""
    from pi0.ript.policy.pi0_policy import PI0Policy

    spec = ReachEnvSpec(image_size=28)
    demos = collect_demonstrations(spec, range(spec.num_tasks()), range(1), chunk_size=5, max_steps=10, seed=0)
    policy = make_reach_policy(demos, image_size=28, chunk_size=5, seed=0, variant="pi05")
    policy.save_pretrained(tmp_path / "pi05")
    reloaded = PI0Policy.from_pretrained(tmp_path / "pi05", device="cpu")
    for p in (policy, reloaded):
        assert p.config.pi05 and p.config.norm_mode == "quantile" and p.config.max_token_len == 48
        assert p.prompt_format == "openpi"
        assert all(s.q01 is not None and s.q99 is not None for s in p.norm_stats.values())
    inputs = [p.prepare_batch(demos.observations[:2], demos.instructions[:2]) for p in (policy, reloaded)]
    assert torch.equal(inputs[0].tokens, inputs[1].tokens) and torch.equal(inputs[0].state, inputs[1].state)
    assert inputs[0].token_masks[0].sum() == 9  # <bos>, the 7 task words, "\n": no state in the prompt
    with pytest.raises(ValueError, match="variant"):
        make_reach_policy(demos, image_size=28, chunk_size=5, seed=0, variant="pi1")


def _run_demo(checkpoint: Path, output_dir: Path, optimizer: str, label: str) -> tuple[float, float]:
    """The demo config from `checkpoint`; eval success before the first update and after the last."""
    cfg = load_config(DEMO_CONFIG, [f"policy.checkpoint_path={checkpoint}", f"train.output_dir={output_dir}",
                                    "train.progress=false", f"algo.loss={optimizer}"])
    started = time.perf_counter()
    history = train(cfg)["success_history"]
    seconds = time.perf_counter() - started
    before, after = history[0]["eval_success_rate"], history[-1]["eval_success_rate"]
    print(f"{label}: eval success {[round(h['eval_success_rate'], 3) for h in history]} in {seconds:.0f} s")
    assert 0.2 <= before <= 0.6, f"{label}: the BC starting policy should be intermediate, got {before:.3f}"
    # No time limit here: speed is for the benches; a loaded CI machine must not fail a learning test (printed above).
    assert (output_dir / "success.png").stat().st_size > 0
    return before, after


# PPO's lift depends on the CPU's float rounding (+28.3 and +21.6 points on two machines, same code and seed; +16.7
# to +28.3 over three seeds): at least 15 points. CFG: +24 on both machines, +8 to +24 over seeds (docs/TRAINING.md).
@pytest.mark.parametrize("optimizer, min_lift", [("ppo", 0.15), ("cfg", 0.10)])
def test_rl_raises_success(bc_checkpoint, tmp_path, optimizer, min_lift):
    before, after = _run_demo(bc_checkpoint, tmp_path / optimizer, optimizer, optimizer)
    assert after - before >= min_lift, f"{optimizer}: {before:.3f} -> {after:.3f}"


# pi0.5 (no state token; task-only prompt, quantile normalisation; 300 BC steps to an intermediate start): PPO lifts
# it +19.2 points on the 2-core sandbox (0.383 -> 0.492 -> 0.575, docs/TRAINING.md). The eval's noise is about +-4.5
# and pi0's PPO lift moved 7 points between two CPUs: at least 10 points.
PI05_MIN_LIFT = 0.10


def test_rl_raises_success_pi05(bc_checkpoint_pi05, tmp_path):
    before, after = _run_demo(bc_checkpoint_pi05, tmp_path / "ppo_pi05", "ppo", "pi05 ppo")
    assert after - before >= PI05_MIN_LIFT, f"pi05 ppo: {before:.3f} -> {after:.3f}"
