"""Mixed precision and activation checkpointing for training, on the tiny pi0 (CPU: the same code paths as CUDA).

- activation checkpointing keeps fewer activations for backward and changes no loss or gradient;
- a bf16-autocast update agrees with the fp32 one within bf16 tolerance (and really ran in bf16);
- the train keys reject bad values with one line, exit code 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pi0.ript.policy.pi0_policy import make_tiny_policy
from pi0.ript.algo.parallel import resolve_precision
from pi0.ript.config.algo_schema import checkpointed_parts
from pi0.ript.algo.rl_policy import RLPolicy
from pi0_fixtures import INSTRUCTIONS, make_obs

BATCH = 3


def make_rl(optimizer: str) -> RLPolicy:
    policy = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, device="cpu")
    return RLPolicy(policy, optimizer=optimizer, num_denoise_steps=3, noise_scale=1.0, learn_noise_scale=True,
                    logprob_action_dims=7, replan_steps=5, seed=0)


def rollout_batch(rl: RLPolicy):
    rng = np.random.default_rng(0)
    observations = [make_obs(rng, 64) for _ in range(BATCH)]
    instructions = INSTRUCTIONS[:BATCH]
    out = rl.predict_chunks(observations, instructions)
    chains = torch.from_numpy(np.stack([e["chain"] for e in out.extras]))
    return rl.policy.prepare_batch(observations, instructions), chains


def loss_and_grads(rl: RLPolicy, inputs, chains, optimizer: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's per-minibatch objective (full fine-tuning: gradients through the prefix too), and its grads."""
    rl.zero_grad(set_to_none=True)
    rl.train()
    with rl.autocast():
        if optimizer == "ppo":
            log_prob, _ = rl.chain_log_prob(inputs, chains, prefix_grad=True)
            loss = -log_prob.sum()
        else:
            g = torch.Generator().manual_seed(1)
            labels = torch.tensor([1, 2, 0])
            noise = torch.randn(chains[:, -1].shape, generator=g)
            time = rl.model.sample_time(BATCH, g)
            per_sample, _, _ = rl.cfg_loss(inputs, chains[:, -1], labels, noise, time, prefix_grad=True)
            loss = per_sample.sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in rl.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def saved_activation_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while `fn` runs (what activation checkpointing cuts)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total


@pytest.mark.parametrize("optimizer", ["ppo", "cfg"])
def test_activation_checkpointing_saves_activations_and_changes_nothing(optimizer):
    torch.manual_seed(0)
    rl = make_rl(optimizer)
    inputs, chains = rollout_batch(rl)
    plain_bytes = saved_activation_bytes(lambda: loss_and_grads(rl, inputs, chains, optimizer))
    plain_loss, plain_grads = loss_and_grads(rl, inputs, chains, optimizer)
    rl.model.set_activation_checkpointing(checkpointed_parts("all"))
    checkpointed_bytes = saved_activation_bytes(lambda: loss_and_grads(rl, inputs, chains, optimizer))
    loss, grads = loss_and_grads(rl, inputs, chains, optimizer)
    assert checkpointed_bytes < 0.6 * plain_bytes, (checkpointed_bytes, plain_bytes)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == plain_grads.keys()
    vision_grads = [n for n in grads if "vision_tower" in n]
    assert vision_grads and all(grads[n].abs().sum() > 0 for n in vision_grads[:3])  # the recomputed tower still learns
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # Each part on its own is accepted, and switching off restores the plain path.
    for part in ("vision", "language", "expert"):
        rl.model.set_activation_checkpointing((part,))
    rl.model.set_activation_checkpointing(())
    assert saved_activation_bytes(lambda: loss_and_grads(rl, inputs, chains, optimizer)) == plain_bytes


@pytest.mark.parametrize("optimizer", ["ppo", "cfg"])
def test_bf16_update_matches_fp32_within_bf16_tolerance(optimizer):
    torch.manual_seed(0)
    rl = make_rl(optimizer)
    inputs, chains = rollout_batch(rl)
    fp32_loss, fp32_grads = loss_and_grads(rl, inputs, chains, optimizer)
    rl.autocast_dtype = resolve_precision("bf16", torch.device("cpu"))
    bf16_loss, bf16_grads = loss_and_grads(rl, inputs, chains, optimizer)
    assert not torch.equal(bf16_loss, fp32_loss)  # autocast really changed the arithmetic
    torch.testing.assert_close(bf16_loss, fp32_loss, rtol=3e-2, atol=3e-2)
    flat32 = torch.cat([fp32_grads[n].flatten() for n in fp32_grads])
    flat16 = torch.cat([bf16_grads[n].flatten() for n in fp32_grads])
    cosine = torch.nn.functional.cosine_similarity(flat32, flat16, dim=0)
    assert cosine > 0.99, float(cosine)
    assert (flat16.norm() / flat32.norm() - 1).abs() < 0.05
    # Weights and gradients stay fp32 (master weights): only the compute ran in bf16.
    assert all(g.dtype == torch.float32 for g in bf16_grads.values())
    assert all(p.dtype == torch.float32 for p in rl.parameters())


def test_bf16_rollouts_stay_fp32_at_the_interface():
    rl = make_rl("ppo")
    rl.autocast_dtype = torch.bfloat16
    rng = np.random.default_rng(0)
    out = rl.predict_chunks([make_obs(rng, 64)], INSTRUCTIONS[:1])
    assert out.actions.dtype == np.float64 and np.isfinite(out.actions).all()
    assert out.extras[0]["chain"].dtype == np.float32 and np.isfinite(out.extras[0]["step_log_probs"]).all()


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None  # fp32 on CPUs unless asked
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert checkpointed_parts("none") == () and checkpointed_parts("false") == ()
    assert checkpointed_parts("True") == ("vision", "language", "expert")
    assert checkpointed_parts("expert, language") == ("expert", "language")


TRAIN_CASES = [
    (["train.precision=fp16"], "train.precision='fp16': use one of auto, bf16, fp32"),
    (["train.strategy=ddp"], "train.strategy='ddp': use one of replicated, fsdp"),
    (["train.activation_checkpointing=mlp"], "train.activation_checkpointing='mlp': use none, all, or a comma list of vision, language, expert"),
    (["train.strategy=fsdp"], "train.strategy=fsdp shards the model over processes: launch with torchrun"),
]
if not torch.cuda.is_available():
    TRAIN_CASES.append((["policy.device=cuda"], "policy.device=cuda: no CUDA GPU is visible to torch here"))


@pytest.mark.parametrize("overrides, expected", TRAIN_CASES, ids=[c[0][0] for c in TRAIN_CASES])
def test_bad_train_keys(overrides, expected, capsys, tmp_path):
    from conftest import REPO_ROOT
    from pi0.ript.cli import main

    config = f"{REPO_ROOT}/pi0/ript/config/learning_demo.yaml"
    code = main(["train", "--config", config, f"train.output_dir={tmp_path}", "policy.device=cpu", *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written


def test_out_of_memory_during_the_update_names_what_to_lower(monkeypatch, capsys, tmp_path):
    """A CUDA OOM in the update (raised here on a CPU run) ends `pi0-ript train` with one line and exit code 2,
    naming the keys that lower training memory."""
    from conftest import REPO_ROOT
    from pi0.ript.algo.bc import collect_demonstrations, make_reach_policy
    from pi0.ript.cli import main
    from pi0.ript.env.reach_sim import ReachEnvSpec

    policy_dir = tmp_path / "policy"
    make_reach_policy(collect_demonstrations(ReachEnvSpec(image_size=28), range(2), range(2), 5, 10), 28, 5, seed=0).save_pretrained(policy_dir)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(RLPolicy, "chain_log_prob", out_of_memory)
    code = main(["train", "--config", f"{REPO_ROOT}/pi0/ript/config/learning_demo.yaml", f"policy.checkpoint_path={policy_dir}",
                 f"train.output_dir={tmp_path / 'run'}", "task.image_size=28", "task.max_episode_length=5",
                 "algo.num_contexts=1", "algo.rollouts_per_env=2", "algo.dynamic_sampling=false", "algo.num_denoise_steps=2",
                 "train.eval_at_start=false", "train.eval_every=0", "train.progress=false", "algo.reward=total_reward"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    for key in ("algo.num_minibatches", "train.activation_checkpointing", "train.expert_only", "train.strategy=fsdp"):
        assert key in lines[0], lines[0]
