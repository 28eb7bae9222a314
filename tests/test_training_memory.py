"""Training checks, once the weights are on the device, that its gradients, AdamW state and frozen copies fit in
what is left, and otherwise stops before the first rollout with one line naming settings that would fit. The
arithmetic is the one `pi0-ript bench train --analytic-only` prints (measured against a GPU's peaks in
docs/PERFORMANCE.md); the check runs on a real tiny pi0, and end to end through `pi0-ript train`."""

from __future__ import annotations

import pytest
import torch

import pi0.ript.algo.trainer as trainer
from conftest import REPO_ROOT, live_children
from pi0.ript.algo.memory import GIB, check_memory, plan_memory
from pi0.ript.algo.trainer import check_training_memory, make_rl_policy
from pi0.ript.config.errors import ConfigError
from pi0.ript.config.schema import load_config
from pi0.ript.policy.pi0_policy import make_tiny_policy

DEMO = f"{REPO_ROOT}/pi0/ript/config/learning_demo.yaml"


def test_full_size_plans_match_the_bench_figures():
    """Full-size pi0 (3.238 B parameters, 0.3 B outside PaliGemma): full PPO in bf16 needs 12.1 GiB of gradients
    and 24.1 of AdamW next to its 12.1 of weights; CFG adds a 6.0 GiB bf16 anchor (docs/PERFORMANCE.md)."""
    from pi0.ript.bench.train import analytic_memory

    for variant in ("ppo-full", "cfg-full", "ppo-expert", "cfg-expert"):
        row = analytic_memory("full", variant, "replicated", 1, bf16=True)
        total, trained = round(row["parameters_billion"] * 1e9), round(row["trained_billion"] * 1e9)
        plan = plan_memory(total, trained, [2] if variant.startswith("cfg") else [])
        assert plan.more_bytes / GIB == pytest.approx(row["static_gib"] - row["weights_gib"], abs=0.01)
    full = analytic_memory("full", "ppo-full", "replicated", 1, bf16=True)
    assert (round(full["gradients_gib"], 1), round(full["adamw_gib"], 1)) == (12.1, 24.1)


def test_fsdp_plan_shards_the_optimizer_and_counts_the_replica():
    total = 1_000_000
    plan = plan_memory(total, total, [4], shards=4)
    assert (plan.gradients, plan.adamw, plan.frozen_copies) == (total, 2 * total, 4 * total)
    assert plan.freed_by_sharding == 3 * total
    assert plan.more_bytes == 4 * total  # the replica is copied before the full weights are released


@pytest.fixture(scope="module")
def tiny_rl():
    """(config, RLPolicy) for overrides of the demo config, around one real tiny pi0."""
    policy = make_tiny_policy(["reach the red target"], image_size=28, chunk_size=5)

    def build(*overrides: str):
        cfg = load_config(DEMO, ["policy.device=cpu", *overrides])
        return cfg, make_rl_policy(cfg, policy, seed=0)
    return build


def test_a_plan_that_fits_is_logged_and_one_that_does_not_names_what_would(tiny_rl):
    cfg, rl = tiny_rl("algo.loss=ppo", "algo.kl_coef=0")
    total = sum(p.numel() for p in rl.parameters())
    outside_paligemma = total - sum(p.numel() for p in rl.model.paligemma_with_expert.paligemma.parameters())
    full_need, expert_need = 12 * total, 12 * outside_paligemma  # fp32 gradients + two AdamW moments
    line = check_training_memory(cfg, rl, torch.device("cpu"), None, 1, free=full_need + 1)
    assert "GiB free" in line and "before activations" in line
    with pytest.raises(ConfigError, match="use train.expert_only=true") as refused:
        check_training_memory(cfg, rl, torch.device("cpu"), None, 1, free=(full_need + expert_need) // 2)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="use a GPU with more memory"):
        check_training_memory(cfg, rl, torch.device("cpu"), None, 1, free=expert_need // 2)


def test_frozen_copies_follow_the_loss_settings(tiny_rl):
    """KL reference and CFG anchor each add one copy (bf16 under mixed precision), and dropping them is offered."""
    _, rl = tiny_rl()
    total = sum(p.numel() for p in rl.parameters())
    for overrides, copies in ((["algo.loss=ppo", "algo.kl_coef=0"], 0), (["algo.loss=ppo", "algo.kl_coef=0.1"], 1),
                              (["algo.loss=cfg", "algo.cfg_null_anchor=rollout"], 1), (["algo.loss=cfg", "algo.cfg_null_anchor=start", "algo.kl_coef=0.1"], 1),
                              (["algo.loss=cfg", "algo.cfg_null_anchor=none"], 0)):
        cfg, rl = tiny_rl(*overrides)
        line = check_training_memory(cfg, rl, torch.device("cpu"), torch.bfloat16, 1, free=10 * GIB)
        assert f"frozen copies {2 * total * copies / GIB:.1f}" in line, (overrides, line)
    cfg, rl = tiny_rl("algo.loss=cfg", "algo.cfg_null_anchor=rollout")
    with pytest.raises(ConfigError, match="algo.cfg_null_anchor=none"):
        check_training_memory(cfg, rl, torch.device("cpu"), torch.bfloat16, 1, free=12 * total + total)  # no room for the anchor


def test_train_refuses_before_the_first_rollout(monkeypatch, capsys, tmp_path, no_orphans):
    """`pi0-ript train` on a device with too little memory: exit code 2, one line, and no worker was ever started."""
    from pi0.ript.cli import main

    started = []
    monkeypatch.setattr(trainer, "free_bytes", lambda device, ranks=1: (started.append(len(live_children())), 1024)[1])
    policy_dir = tmp_path / "policy"
    make_tiny_policy(["reach the red target"], image_size=28, chunk_size=5).save_pretrained(policy_dir)
    children_before = len(live_children())
    code = main(["train", "--config", DEMO, f"policy.checkpoint_path={policy_dir}", f"train.output_dir={tmp_path / 'run'}",
                 "policy.device=cpu", "task.image_size=28", "train.progress=false"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "training needs" in lines[0] and "0.0 GiB are free" in lines[0], err
    assert started == [children_before] and not (tmp_path / "run" / "metrics.jsonl").exists()  # no worker yet


def test_check_memory_passes_through_when_it_fits():
    plan = plan_memory(10, 10, [])
    assert check_memory(plan, plan.more_bytes, "cpu", {}).startswith("training memory on cpu")


def test_free_bytes_asks_the_card_on_cuda_and_shares_host_memory_between_local_ranks(monkeypatch):
    """The CUDA branch (exercised here through a stand-in for torch.cuda.mem_get_info): the card's own free bytes."""
    import psutil

    from pi0.ript.algo.memory import free_bytes

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (asked.append(device), (7 * GIB, 80 * GIB))[1])
    assert free_bytes(torch.device("cuda", 1), ranks_on_this_host=8) == 7 * GIB and asked == [torch.device("cuda", 1)]
    available = psutil.virtual_memory().available
    assert free_bytes(torch.device("cpu"), ranks_on_this_host=2) == pytest.approx(available / 2, rel=0.2)
