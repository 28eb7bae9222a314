"""The RL policy on an accelerator, checked on a CPU: the tiny pi0 on the emulated device of tests/emulated_device.py
(real CPU data behind a non-CPU device, with CUDA's device checks: mixed-device ops, CPU tensors indexed with device
indices and device draws from a CPU generator raise, as they do on a GPU).

For PPO and CFG: the rollout (`predict_chunks`, as the runner calls it) and one update step (rescoring / the
conditioned loss, backward, AdamW, as the trainer's update does it) run on the device and give exactly the CPU's
numbers for the same seed; everything the RL policy owns, and its frozen copies, live on the device; plain pi0
sampling (evaluation) gives the CPU's chunks; checkpoints move between the CPU and the device and training continues
identically; and `trainer.train` itself runs an iteration on the device that the CPU resumes exactly.
On the code before the GPU fix (c0d3ea2) these fail with the two crashes seen on an H200: "Expected a 'meta'
device type for generator but found 'cpu'" (PPO rollout) and "indices should be either on cpu or on the same device
as the indexed tensor (cpu)" (CFG condition embeddings).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from pi0.ript.policy.pi0_policy import PI0Policy, make_tiny_policy
from pi0.ript.algo import checkpoint as ckpt
from pi0.ript.algo import trainer
from pi0.ript.algo.bc import collect_demonstrations, make_reach_policy
from pi0.ript.algo.cfg import NULL, condition_labels
from pi0.ript.algo.flow_sde import stochastic_steps
from pi0.ript.algo.ppo import ppo_loss
from pi0.ript.algo.rl_policy import RLPolicy
from pi0.ript.config.schema import load_config
from pi0.ript.env.reach_sim import ReachEnvSpec
from tests.emulated_device import DEVICE, emulated_device, is_emulated
from tests.pi0_fixtures import INSTRUCTIONS, make_obs, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

IMAGE_SIZE, CHUNK, STEPS, BATCH = 28, 4, 3, 3
ADVANTAGES = torch.tensor([0.5, -0.5, 0.25])


def make_rl(kind: str, device: torch.device | str) -> RLPolicy:
    """The trainer's RL policy (make_rl_policy) around a tiny pi0 whose weights sit on `device`."""
    policy = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=IMAGE_SIZE, device=device, chunk_size=CHUNK)
    return RLPolicy(
        policy, kind, num_denoise_steps=STEPS, noise_scale=0.5, learn_noise_scale=kind == "ppo", logprob_action_dims=7,
        replan_steps=2, guidance_weight=1.5, cfg_rollout_noise=True, seed=7,
    ).eval()


def make_optimizer(rl: RLPolicy) -> torch.optim.AdamW:
    """The trainer's AdamW: the RL heads in their own group, at their own learning rate."""
    heads = {id(p) for p in rl.head_parameters()}
    params = rl.trainable_parameters(expert_only=False)
    groups = [{"params": [p for p in params if id(p) not in heads]}]
    groups.append({"params": [p for p in params if id(p) in heads], "lr": 1e-2})
    return torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01)


def observations() -> tuple[list[dict[str, np.ndarray]], list[str]]:
    rng = np.random.default_rng(0)
    return [make_obs(rng, size=32) for _ in range(BATCH)], [INSTRUCTIONS[i % 2] for i in range(BATCH)]


def rollout(rl: RLPolicy) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """predict_chunks as the runner calls it -> env actions, recorded chains [B, N+1, H, D], step log-probs [B, N]."""
    obs, instructions = observations()
    out = rl.predict_chunks(obs, instructions)
    assert out.actions.shape == (BATCH, CHUNK, 7) and np.isfinite(out.actions).all()
    chains = torch.from_numpy(np.stack([e["chain"] for e in out.extras]))
    steps = torch.from_numpy(np.stack([e["step_log_probs"] for e in out.extras]))
    return out.actions, chains, steps


def update(rl: RLPolicy, optimizer: torch.optim.Optimizer, chains: torch.Tensor, old: torch.Tensor,
           frozen: RLPolicy, update_generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One minibatch step of the trainer's update (minibatch_loss + backward + clip + AdamW), on the model's device."""
    device = rl.model.device
    obs, instructions = observations()
    inputs = rl.policy.prepare_batch(obs, instructions)
    chains = chains.to(device)
    if rl.optimizer_kind == "ppo":
        new, kl = rl.chain_log_prob(inputs, chains, prefix_grad=True, reference=frozen)
        scored = stochastic_steps(STEPS, rl.sampler)
        new, old = new[:, scored].sum(dim=1), old[:, scored].sum(dim=1).to(new)
        per_sample, _ = ppo_loss(new, old, ADVANTAGES.to(device), 0.2)
        per_sample = per_sample + 0.1 * kl
        ratio = (new - old).exp().detach()
    else:
        labels = condition_labels(ADVANTAGES, 0.25, update_generator)
        noise = torch.randn(chains[:, -1].shape, generator=update_generator)
        time = rl.model.sample_time(BATCH, update_generator)
        per_sample, gap, anchor_gap = rl.cfg_loss(
            inputs, chains[:, -1], labels.to(device), noise.to(device), time.to(device), True, frozen, frozen
        )
        per_sample = per_sample + 0.1 * gap + 0.5 * anchor_gap
        ratio = anchor_gap.detach()
    loss = per_sample.mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(rl.trainable_parameters(False), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), "ratio": ratio}


def run(kind: str, device: torch.device | str) -> dict[str, object]:
    """Rollout + one update, as the trainer runs them; every result brought back to the CPU."""
    rl = make_rl(kind, device)
    frozen = copy.deepcopy(rl).eval()  # the KL reference / CFG anchor, as the trainer copies it
    optimizer = make_optimizer(rl)
    actions, chains, steps = rollout(rl)
    stats = update(rl, optimizer, chains, steps, frozen, torch.Generator().manual_seed(1))
    return {
        "actions": actions, "chains": chains, "steps": steps, **{k: v.cpu() for k, v in stats.items()},
        "weights": {k: v.detach().cpu() for k, v in rl.state_dict().items()},
        "rl": rl, "frozen": frozen, "optimizer": optimizer,
    }


def misplaced(module: torch.nn.Module, device: torch.device) -> list[str]:
    """Names of parameters and buffers that are not on `device` (on the emulated device: not emulated tensors)."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return [f"{name} on {t.device}" for name, t in tensors if t.device != device or is_emulated(t) != (device == DEVICE)]


def optimizer_misplaced(optimizer: torch.optim.Optimizer) -> list[str]:
    """AdamW moments not on their parameter's device (`step` stays a CPU scalar on every device, as torch keeps it)."""
    bad = []
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value) and (value.device != p.device or is_emulated(value) != is_emulated(p)):
                bad.append(f"{key} on {value.device} for a parameter on {p.device}")
    return bad


# --- the emulation itself: it must raise where CUDA raises ------------------------------------------------------------
def test_emulated_device_raises_where_cuda_does():
    cpu_generator = torch.Generator().manual_seed(0)
    with emulated_device() as device:
        with pytest.raises(RuntimeError, match="Expected a 'meta' device type for generator but found 'cpu'"):
            torch.randn(2, 3, generator=cpu_generator, device=device)
        x = torch.zeros(2, 3, device=device)
        with pytest.raises(RuntimeError, match="Expected a 'meta' device type for generator but found 'cpu'"):
            x.normal_(generator=cpu_generator)
        with pytest.raises(RuntimeError, match=r"indices should be either on cpu or on the same device as the indexed tensor \(cpu\)"):
            torch.zeros(3, 4)[torch.tensor([0, 2], device=device)]
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            x + torch.ones(2, 3)
        with pytest.raises(TypeError):  # as on CUDA: to the host first
            x.numpy()
        # What CUDA allows: CPU scalars, CPU indices, explicit copies; data-dependent values work.
        y = (x + torch.tensor(2.0))[torch.tensor([1])]
        assert is_emulated(y) and y.device == device and y.sum().item() == 6.0 and bool((y > 1).all())
        assert type(y.cpu()) is torch.Tensor and y.cpu().numpy().tolist() == [[2.0, 2.0, 2.0]]
        # Draws on the device without a generator come from the device's own stream, not the CPU's; a generator on
        # the device draws on the device (another stream than a CPU generator's with that seed), not on the CPU.
        torch.manual_seed(3)
        on_device = torch.randn(4, device=device).cpu()
        torch.manual_seed(3)
        assert not torch.equal(on_device, torch.randn(4))
        device_generator = torch.Generator(device=device).manual_seed(0)
        assert device_generator.device == device and isinstance(device_generator, torch.Generator)
        on_device = torch.randn(4, generator=device_generator, device=device)
        assert not torch.equal(on_device.cpu(), torch.randn(4, generator=torch.Generator().manual_seed(0)))
        with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator but found 'meta'"):
            torch.randn(4, generator=device_generator)
        # A device tensor made out of the emulation's sight has no data: it fails loudly instead of computing garbage.
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.Python)):
            no_data = torch.zeros(2, device=device)
        with pytest.raises(RuntimeError, match="without data"):
            x[0, :2] + no_data
        # torch.save keeps the device: loading without map_location needs the device, map_location="cpu" does not.
        buffer = io.BytesIO()
        torch.save({"moment": x + 1}, buffer)
        assert is_emulated(torch.load(io.BytesIO(buffer.getvalue()))["moment"])
    with pytest.raises(RuntimeError, match="map_location"):
        torch.load(io.BytesIO(buffer.getvalue()))
    loaded = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu")["moment"]
    assert type(loaded) is torch.Tensor and loaded.tolist() == [[1.0] * 3] * 2


# --- the RL policy on the device ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ppo", "cfg"])
def test_everything_the_rl_policy_owns_is_on_the_device(kind):
    with emulated_device() as device:
        rl = make_rl(kind, device)
        owned = [n for n, _ in list(rl.named_parameters()) + list(rl.named_buffers()) if not n.startswith("model.")]
        assert owned, "the RL heads (noise scale, mask, condition embeddings) are registered on the policy"
        assert misplaced(rl, device) == []
        assert misplaced(copy.deepcopy(rl), device) == []  # the trainer's frozen copies (KL reference, CFG anchor)
        assert rl.model.device == device


@pytest.mark.parametrize("kind", ["ppo", "cfg"])
def test_rollout_and_update_on_the_device_match_the_cpu(kind):
    cpu = run(kind, "cpu")
    with emulated_device() as device:
        dev = run(kind, device)
        assert misplaced(dev["rl"], device) == [] and misplaced(dev["frozen"], device) == []
        assert optimizer_misplaced(dev["optimizer"]) == []
    # Same seed, same rollout chunks and chains on both devices (exactly: the emulated device computes on the CPU).
    np.testing.assert_array_equal(dev["actions"], cpu["actions"])
    torch.testing.assert_close(dev["chains"], cpu["chains"], rtol=0, atol=0)
    # ... and the same update.
    for key in ("loss", "grad_norm", "ratio"):
        torch.testing.assert_close(dev[key], cpu[key], rtol=0, atol=0, msg=key)
    assert cpu["weights"].keys() == dev["weights"].keys()
    for name, value in cpu["weights"].items():
        torch.testing.assert_close(dev["weights"][name], value, rtol=0, atol=0, msg=name)
    start = make_rl(kind, "cpu").state_dict()
    assert not torch.equal(cpu["weights"]["model.action_out_proj.weight"], start["model.action_out_proj.weight"])
    if kind == "ppo":  # the rollout's log-probabilities are what the update rescores: ratio 1 before the step
        torch.testing.assert_close(cpu["ratio"], torch.ones(BATCH), rtol=1e-4, atol=1e-4)
        assert not torch.equal(cpu["weights"]["noise.log_scale"], start["noise.log_scale"])  # the learned head moved
    else:
        assert not torch.equal(cpu["weights"]["condition.embedding"], start["condition.embedding"])


@pytest.mark.parametrize("kind", ["ppo", "cfg"])
def test_seeded_rollouts_on_the_device_match_the_cpu(kind):
    """train.policy_noise=per_episode's path: one CPU generator per sample, the draws moved to the device."""
    obs, instructions = observations()
    seeds = list(range(100, 100 + BATCH))
    cpu = make_rl(kind, "cpu").predict_chunks(obs, instructions, sample_seeds=seeds)
    with emulated_device() as device:
        dev = make_rl(kind, device).predict_chunks(obs, instructions, sample_seeds=seeds)
    np.testing.assert_array_equal(dev.actions, cpu.actions)
    for d, c in zip(dev.extras, cpu.extras):
        np.testing.assert_array_equal(d["chain"], c["chain"])


def test_cfg_guidance_and_loss_on_the_device():
    """The CFG pieces that index the condition embeddings with labels built on the model's device."""
    obs, instructions = observations()
    results = {}
    for name in ("cpu", "device"):
        with emulated_device() if name == "device" else contextlib.nullcontext(torch.device("cpu")) as device:
            rl = make_rl("cfg", device)
            with torch.no_grad():
                rl.condition.embedding.copy_(torch.linspace(-1, 1, rl.condition.embedding.numel()).view_as(rl.condition.embedding))
            inputs = rl.policy.prepare_batch(obs, instructions)
            x = torch.randn(BATCH, CHUNK, rl.model.config.max_action_dim, generator=torch.Generator().manual_seed(2))
            with torch.no_grad():
                cache = rl.prefix_cache(inputs, with_grad=False)
                v = rl.guided_velocity(cache, inputs.state, x.to(device), 0.5)
            with torch.enable_grad():
                labels = torch.full((BATCH,), NULL, dtype=torch.long, device=device)
                loss, _, _ = rl.cfg_loss(inputs, x.to(device), labels, torch.zeros_like(x).to(device),
                                         torch.full((BATCH,), 0.5, device=device), True)
            results[name] = (v.cpu(), loss.detach().cpu())
    torch.testing.assert_close(results["device"][0], results["cpu"][0], rtol=0, atol=0)
    torch.testing.assert_close(results["device"][1], results["cpu"][1], rtol=0, atol=0)


def test_plain_pi0_sampling_on_the_device_matches_the_cpu():
    """Evaluation's path: PI0Policy.predict_chunks with the policy's own seeded noise gives the CPU's chunks."""
    obs, instructions = observations()
    make = lambda device: make_tiny_policy(INSTRUCTIONS, seed=0, image_size=IMAGE_SIZE, device=device, chunk_size=CHUNK,  # noqa: E731
                                                record_extras=True)
    cpu = make("cpu").predict_chunks(obs, instructions)
    seeds = list(range(100, 100 + len(obs)))  # eval.policy_noise=per_episode: per-sample seeds, drawn on the CPU
    cpu_seeded = make("cpu").predict_chunks(obs, instructions, sample_seeds=seeds)
    with emulated_device() as device:
        policy = make(device)
        assert misplaced(policy.model, device) == []
        dev = policy.predict_chunks(obs, instructions)
        dev_seeded = policy.predict_chunks(obs, instructions, sample_seeds=seeds)
    np.testing.assert_array_equal(dev.actions, cpu.actions)
    np.testing.assert_array_equal(dev.extras[0]["noise"], cpu.extras[0]["noise"])
    np.testing.assert_array_equal(dev_seeded.actions, cpu_seeded.actions)
    assert not np.array_equal(cpu_seeded.extras[0]["noise"], cpu.extras[0]["noise"])


# --- checkpoints across devices -----------------------------------------------------------------------------------
def save(rl: RLPolicy, optimizer: torch.optim.Optimizer, output_dir, iteration: int):
    """As the trainer's save_checkpoint writes it: rank RNG state, then finalize (weights, optimizer, trainer state)."""
    staging = ckpt.staging_dir(output_dir, iteration)
    staging.mkdir(parents=True, exist_ok=True)
    ckpt.write_rank_state(staging, 0, ckpt.rng_state({"rollout_generator": rl.generator.get_state()}))
    return ckpt.finalize(output_dir, iteration, staging, rl, rl.policy.save_pretrained, {"optimizer": optimizer.state_dict()},
                         {"optimizer_steps": iteration + 1, "history": []}, OmegaConf.create({"policy": {}}))


def resume(kind: str, device, found) -> tuple[RLPolicy, torch.optim.AdamW]:
    """As the trainer resumes: module state, then the optimizer state loaded onto the CPU and moved by AdamW."""
    rl = make_rl(kind, device)
    ckpt.load_module_state(found, rl)
    optimizer = make_optimizer(rl)
    optimizer.load_state_dict(torch.load(found / "optimizer.pt", map_location="cpu", weights_only=False)["optimizer"])
    rl.generator.set_state(ckpt.load_rank_state(found, 0)["rollout_generator"])
    return rl, optimizer


def step(rl: RLPolicy, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    _, chains, steps = rollout(rl)
    update(rl, optimizer, chains, steps, copy.deepcopy(rl).eval(), torch.Generator().manual_seed(5))
    return {k: v.detach().cpu() for k, v in rl.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_checkpoint_written_on_the_cpu_resumes_on_the_device_and_back(tmp_path):
    kind = "cfg"  # both kinds of RL head state: the condition embeddings (a parameter), the fixed noise scale (a buffer)
    rl, optimizer = make_rl(kind, "cpu"), None
    optimizer = make_optimizer(rl)
    step(rl, optimizer)
    found = save(rl, optimizer, tmp_path / "cpu_run", 0)
    cpu_next = step(rl, optimizer)  # the run that was not interrupted: its next step
    with emulated_device() as device:
        # Resumed on the device: the same weights, optimizer moments and rollout RNG, so the same next step.
        rl_dev, optimizer_dev = resume(kind, device, found)
        assert misplaced(rl_dev, device) == [] and optimizer_misplaced(optimizer_dev) == []
        assert optimizer_dev.state, "the optimizer state was restored"
        assert_same(step(rl_dev, optimizer_dev), cpu_next)
        found_dev = save(rl_dev, optimizer_dev, tmp_path / "gpu_run", 1)
        saved = {k: v.detach().cpu() for k, v in rl_dev.state_dict().items()}
        moments = [s["exp_avg"].cpu() for s in optimizer_dev.state.values()]
    # ... and written on the device, loaded back on the CPU (the trainer's resume from a GPU run is tested below).
    rl_cpu, optimizer_cpu = resume(kind, "cpu", found_dev)
    assert misplaced(rl_cpu, torch.device("cpu")) == [] and optimizer_misplaced(optimizer_cpu) == []
    assert_same({k: v.detach() for k, v in rl_cpu.state_dict().items()}, saved)
    for loaded, moment in zip([s["exp_avg"] for s in optimizer_cpu.state.values()], moments, strict=True):
        assert type(loaded) is torch.Tensor and torch.equal(loaded, moment)


# --- the trainer itself: one iteration on the device, resumed on the CPU ------------------------------------------
MAKE_RL_POLICY = trainer.make_rl_policy


def reach_cfg(policy_dir, output_dir, iterations: int):
    return load_config(None, [
        "task.benchmark_name=reach", f"task.image_size={IMAGE_SIZE}", "task.num_wait_steps=0", "task.max_episode_length=10",
        "task.replan_steps=4", "features.use_ript_vla_runner=false", f"policy.checkpoint_path={policy_dir}", "policy.device=cpu",
        "algo.loss=cfg", "algo.rollouts_per_env=2", "algo.num_contexts=2", "algo.num_denoise_steps=3",
        "algo.dynamic_sampling=false", "algo.num_minibatches=2", "algo.update_epochs=1", "algo.kl_coef=0.05",
        f"train.num_iterations={iterations}", "train.learning_rate=1e-3", "train.checkpoint_every=1", "train.progress=false",
        f"train.output_dir={output_dir}",
    ])


def run_trainer(monkeypatch, cfg, device: torch.device, start: PI0Policy, resume: bool = False) -> RLPolicy:
    """`train` with its device set to `device`. The pi0 weights come from `start` (loaded on the CPU beforehand:
    pi0's loader builds the model on `meta`, which the emulation occupies) and move to `device` as PI0Policy does."""
    monkeypatch.setattr(trainer, "setup_distributed", lambda *args, **kwargs: (0, 1, device))
    made: list[RLPolicy] = []
    monkeypatch.setattr(trainer, "make_rl_policy", lambda *args, **kwargs: made.append(MAKE_RL_POLICY(*args, **kwargs)) or made[-1])
    monkeypatch.setattr(PI0Policy, "from_pretrained", classmethod(
        lambda cls, directory, device=None, **kwargs: PI0Policy(
            copy.deepcopy(start.model), start.tokenizer, start.norm_stats, device=device, **kwargs)
    ))
    trainer.train(cfg, resume=resume)
    return made[0]


def history(output_dir) -> list[dict]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    skip = ("time/", "per_second", "memory", "peak")
    return [{k: v for k, v in m.items() if not any(s in k for s in skip)} for m in lines]


def test_trainer_iteration_on_the_device_resumes_on_the_cpu_exactly(tmp_path, monkeypatch):
    """CFG with a KL reference and the rollout anchor: an iteration on the device, then the next on the CPU from its
    checkpoint, gives the same metrics and weights as two iterations on the CPU."""
    demos = collect_demonstrations(ReachEnvSpec(image_size=IMAGE_SIZE), range(2), range(1), CHUNK, 10)
    make_reach_policy(demos, IMAGE_SIZE, CHUNK, seed=0).save_pretrained(tmp_path / "policy")
    start = PI0Policy.from_pretrained(tmp_path / "policy", device="cpu")
    cpu = torch.device("cpu")
    run_trainer(monkeypatch, reach_cfg(tmp_path / "policy", tmp_path / "cpu", 2), cpu, start)
    with emulated_device() as device:
        rl = run_trainer(monkeypatch, reach_cfg(tmp_path / "policy", tmp_path / "moved", 1), device, start)
        assert misplaced(rl, device) == []
    run_trainer(monkeypatch, reach_cfg(tmp_path / "policy", tmp_path / "moved", 2), cpu, start, resume=True)
    assert len(history(tmp_path / "cpu")) == 2 and history(tmp_path / "moved") == history(tmp_path / "cpu")
    assert_same(load_file(ckpt.latest_checkpoint(tmp_path / "moved") / "rl_state.safetensors"),
                load_file(ckpt.latest_checkpoint(tmp_path / "cpu") / "rl_state.safetensors"))
