"""RIPT-VLA post-training of pi0, in one file that reads top to bottom (CleanRL style).

    python -m pi0.ript.algo.trainer --config pi0/ript/config/learning_demo.yaml [--resume] [key=value ...]
    torchrun --nproc_per_node 2 -m pi0.ript.algo.trainer --config ...          # one process per GPU / CPU share
    torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:29500 --nproc_per_node 8 \
        -m pi0.ript.algo.trainer --config ...                                    # multi-node: a rendezvous address

One iteration:
  1. rollouts     each rank draws contexts (task, init state) from its shard and runs K = algo.rollouts_per_env
                  episodes of each through the env runner, all in parallel as workers allow;
  2. sampling     dynamic sampling drops contexts whose K rewards agree (no signal) and draws replacements, for at
                  most algo.max_sampling_rounds rounds;
  3. advantages   RLOO: A = r - mean of the other K-1 rewards of the same context;
  4. update       update_epochs passes over minibatches of chunks (every policy query of a kept episode is one
                  sample, carrying its episode's advantage): PPO on flow-SDE chain log-probabilities, or
                  advantage-conditioned flow matching (CFG); gradients averaged over ranks; AdamW with warm-up;
  5. log          metrics reduced over ranks; rank 0 writes TensorBoard, metrics.jsonl, success.png, checkpoints.

Gradients are averaged with one all-reduce per optimizer step (as CleanRL's multi-GPU PPO does) rather than through
the DistributedDataParallel wrapper: the loss is not one forward call (a prefix pass, then one expert pass per
denoising step), and ranks keep different numbers of samples after dynamic sampling, which DDP's per-forward hooks
cannot express. Each rank takes the same number of optimizer steps, and each sample weighs the same on every rank.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pi0.ript.algo import checkpoint as ckpt
from pi0.ript.algo.cfg import condition_labels
from pi0.ript.algo.dynamic_sampling import ContextSampler, sample_groups
from pi0.ript.algo.flow_sde import stochastic_steps
from pi0.ript.algo.ppo import ppo_loss
from pi0.ript.algo.rl_policy import RLPolicy
from pi0.ript.algo.rloo import rloo_advantages
from pi0.ript.env.episode import Episode, EpisodeRequest

log = logging.getLogger("pi0.ript.train")


def train(cfg: DictConfig, resume: bool = False) -> dict[str, Any]:
    """Run `cfg.train.num_iterations` RIPT iterations (continuing from the latest checkpoint when `resume`).
    Returns the last iteration's metrics plus `success_history` (eval success rate by iteration) on every rank."""
    a, tc = cfg.algo, cfg.train

    # --- processes: torchrun sets RANK / WORLD_SIZE; a plain `python -m` run is rank 0 of 1 ------------------------
    rank, world_size, device = setup_distributed(tc.dist_backend, cfg.policy.device)
    is_main = rank == 0
    output_dir = Path(tc.output_dir)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(tc.seed + rank)

    # --- policy: the pi0 checkpoint wrapped for RL sampling; a frozen copy when the KL penalty is on ---------------
    from pi0.model.policy import PI0Policy  # imported here so `--help` does not load transformers

    base_policy = PI0Policy.from_pretrained(cfg.policy.checkpoint_path, device=device)
    rl = make_rl_policy(cfg, base_policy, seed=tc.seed * 1000 + rank)
    reference = None
    if a.kl_coef > 0:
        reference = copy.deepcopy(rl).eval()  # the starting policy; on resume it is rebuilt from the same checkpoint
        for p in reference.parameters():
            p.requires_grad_(False)
    # cfg: the null condition's anchor, a frozen policy whose sampling velocity the null branch is pulled towards
    # (instead of only refitting the policy's own samples, which drifts): the starting policy, or a snapshot of the
    # policy that sampled the current iteration's rollouts, refreshed before each update.
    anchor = None
    if a.optimizer == "cfg" and a.cfg_null_anchor != "none" and a.cfg_anchor_coef > 0:
        anchor = reference if (a.cfg_null_anchor == "start" and reference is not None) else copy.deepcopy(rl).eval()
        for p in anchor.parameters():
            p.requires_grad_(False)
    params = rl.trainable_parameters(tc.expert_only)
    # The RL heads (a learned noise scale, the CFG condition embeddings) start from fixed values (the configured
    # scale, zeros) and must move by order one to matter: at the policy's fine-tuning learning rate that would take
    # thousands of steps (e.g. the conditions would not differ at all, and CFG would be plain self-imitation of
    # successes and failures alike). So they get their own learning rate.
    heads = {id(p) for p in rl.head_parameters()}
    groups = [{"params": [p for p in params if id(p) not in heads]}]
    if any(id(p) in heads for p in params):
        groups.append({"params": [p for p in params if id(p) in heads], "lr": a.head_learning_rate})
    optimizer = torch.optim.AdamW(groups, lr=tc.learning_rate, weight_decay=tc.weight_decay, eps=tc.adam_eps)
    warmup = max(int(tc.warmup_steps), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    update_generator = torch.Generator().manual_seed(tc.seed * 1000 + rank + 1)  # minibatch order, CFG draws

    # --- envs and contexts: this rank's shard of every (task, init state) -----------------------------------------
    from pi0.ript.env import create_env_runner

    runner = create_env_runner(cfg, rl, rank=rank, world_size=world_size)
    spec = runner.env_spec
    task_ids = list(cfg.task.task_ids) or list(range(spec.num_tasks()))
    all_contexts = [(t, i) for t in task_ids for i in range(spec.num_init_states(t))]
    sampler = ContextSampler(all_contexts[rank::world_size], seed=tc.seed * 1000 + rank, success_memory_size=a.success_memory_size)
    contexts_per_rank = math.ceil(a.num_contexts / world_size)
    eval_requests = [
        EpisodeRequest(task_id=t, init_state=i) for t in task_ids for i in range(tc.eval_episodes_per_task)
    ][rank::world_size]

    # --- resume: weights, optimizer, schedule, every RNG stream and the next iteration ---------------------------
    start_iteration, optimizer_steps, history = 0, 0, []
    if resume:
        found = ckpt.latest_checkpoint(output_dir)
        if found is None:
            log.warning("--resume: no checkpoint under %s; starting from iteration 0", output_dir)
        else:
            ckpt.load_module_state(found, rl)
            opt_state = torch.load(found / "optimizer.pt", map_location="cpu", weights_only=False)  # any device: load_state_dict moves it
            optimizer.load_state_dict(opt_state["optimizer"])
            scheduler.load_state_dict(opt_state["scheduler"])
            state = ckpt.load_trainer_state(found)
            start_iteration, optimizer_steps, history = state["iteration"] + 1, state["optimizer_steps"], state["history"]
            rank_state = ckpt.load_rank_state(found, rank)
            ckpt.restore_global_rng(rank_state)
            rl.generator.set_state(rank_state["rollout_generator"])
            update_generator.set_state(rank_state["update_generator"])
            sampler.load_state_dict(rank_state["sampler"])
            if is_main:
                log.info("resumed from %s: next iteration %d", found, start_iteration)

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))
    reward_of = (lambda e: float(e.success)) if a.reward == "success" else (lambda e: float(e.total_reward))
    metrics: dict[str, Any] = {}
    K = a.rollouts_per_env

    def rollout(contexts: list[tuple[int, int]]) -> list[tuple[list[Episode], torch.Tensor]]:
        """K episodes per context through the runner (all at once); grouped back by request order."""
        requests = [EpisodeRequest(task_id=t, init_state=i, rollout_index=k) for t, i in contexts for k in range(K)]
        episodes: list[Episode | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="rollouts", leave=False, disable=not (is_main and tc.progress))
        for episode in runner.run_episodes(requests):
            episodes[episode.request_id] = episode
            bar.update(1)
        bar.close()
        groups = [episodes[c * K : (c + 1) * K] for c in range(len(contexts))]
        return [(group, torch.tensor([reward_of(e) for e in group])) for group in groups]

    def evaluate(iteration: int) -> float:
        """Success rate over eval init states 0..N-1 of every task, with a fixed sampling seed; the training RNG
        stream is saved and restored around it, so evaluating never changes what training does."""
        saved = rl.generator.get_state()
        rl.generator.manual_seed(tc.eval_seed + rank)
        rl.deterministic = tc.eval_deterministic
        successes = sum(float(e.success) for e in runner.run_episodes(list(map(copy.copy, eval_requests))))
        rl.deterministic = False
        rl.generator.set_state(saved)
        total = all_reduce_sum(torch.tensor([successes, float(len(eval_requests))]))
        rate = float(total[0] / total[1])
        history.append({"iteration": iteration, "eval_success_rate": rate})
        if writer is not None:
            writer.add_scalar("eval/success_rate", rate, iteration)
        return rate

    try:
        if tc.eval_at_start and start_iteration == 0:
            evaluate(0)
        iterations = tqdm(range(start_iteration, tc.num_iterations), desc="RIPT", disable=not (is_main and tc.progress))
        for iteration in iterations:
            started = time.perf_counter()

            # 1-2. rollouts with dynamic sampling ---------------------------------------------------------------
            runner.stats.reset()
            groups = sample_groups(sampler, rollout, contexts_per_rank, a.dynamic_sampling, a.max_sampling_rounds)
            rollout_seconds = time.perf_counter() - started
            env_steps = runner.stats.env_steps

            # 3. RLOO advantages, then one sample per policy query of every kept episode ------------------------
            samples: list[tuple[dict, str, np.ndarray, Any, float]] = []  # obs, instruction, chain, step log-probs, A
            kept_advantages = []
            if groups.kept:
                advantages = rloo_advantages(torch.stack([rewards for _, _, rewards in groups.kept]))
                kept_advantages = advantages.flatten().tolist()
                for (_, episodes, _), group_advantages in zip(groups.kept, advantages):
                    for episode, advantage in zip(episodes, group_advantages.tolist()):
                        if a.optimizer == "cfg" and not a.cfg_fit_negatives and advantage <= 0:
                            continue  # fit only better-than-group chunks (the null condition sees them too)
                        for record in episode.inference:
                            samples.append(
                                (record.observation, episode.instruction, record.extras["chain"],
                                 record.extras.get("step_log_probs"), advantage)
                            )
            if a.normalize_advantages and samples:
                scale = torch.tensor([s[4] for s in samples]).std().clamp_min(1e-6)
                samples = [(o, i, c, lp, adv / float(scale)) for o, i, c, lp, adv in samples]

            # 4. update epochs over minibatches ------------------------------------------------------------------
            update_started = time.perf_counter()
            totals = torch.zeros(7, dtype=torch.float64)  # loss, clipped, approx_kl, kl_to_start, samples, grad_norm, anchor gap
            steps_taken = 0
            if all_reduce_sum(torch.tensor([float(len(samples))]))[0] > 0:
                if anchor is not None and a.cfg_null_anchor == "rollout":
                    anchor.load_state_dict(rl.state_dict())
                rl.train()
                chains = torch.from_numpy(np.stack([s[2] for s in samples])) if samples else None
                sample_advantages = torch.tensor([s[4] for s in samples], dtype=torch.float32)
                scored = stochastic_steps(a.num_denoise_steps, a.sampler)  # steps that carry a log-density
                if a.optimizer == "ppo":
                    if any(s[3] is None for s in samples):
                        raise RuntimeError("ppo needs rollout log-probabilities: the rollouts were sampled without noise")
                    old_log_prob = torch.from_numpy(np.stack([s[3] for s in samples]))[:, scored]
                for epoch in range(a.update_epochs):
                    order = torch.randperm(len(samples), generator=update_generator)
                    for mb_index, mb in enumerate(torch.tensor_split(order, a.num_minibatches)):
                        global_count = all_reduce_sum(torch.tensor([float(len(mb))]))[0]
                        if len(mb) > 0:
                            idx = mb.tolist()
                            inputs = rl.policy.prepare_batch([samples[j][0] for j in idx], [samples[j][1] for j in idx])
                            if a.optimizer == "ppo":
                                new_log_prob, kl = rl.chain_log_prob(inputs, chains[mb].to(device), not tc.expert_only, reference)
                                new_log_prob, old = new_log_prob[:, scored], old_log_prob[mb].to(new_log_prob)
                                if a.ppo_ratio == "chain":  # one ratio per chunk: the product of the step ratios
                                    new_log_prob, old = new_log_prob.sum(dim=1), old.sum(dim=1)
                                per_sample, stats = ppo_loss(new_log_prob, old, sample_advantages[mb].to(device), a.clip_eps)
                                totals[1] += stats["clipped"].sum().item()
                                totals[2] += stats["approx_kl"].sum().item()
                            else:
                                labels = condition_labels(sample_advantages[mb], a.cfg_condition_dropout, update_generator)
                                noise = torch.randn(chains[mb, -1].shape, generator=update_generator)
                                flow_time = rl.model.sample_time(len(mb), update_generator)
                                per_sample, kl, anchor_gap = rl.cfg_loss(
                                    inputs, chains[mb, -1].to(device), labels.to(device), noise.to(device),
                                    flow_time.to(device), not tc.expert_only, reference, anchor,
                                )
                                if anchor_gap is not None:
                                    per_sample = per_sample + a.cfg_anchor_coef * anchor_gap
                                    totals[6] += anchor_gap.detach().sum().item()
                            if kl is not None:
                                per_sample = per_sample + a.kl_coef * kl
                                totals[3] += kl.detach().sum().item()
                            totals[0] += per_sample.detach().sum().item()
                            totals[4] += len(mb)
                            # Sum over this rank's samples / samples over all ranks: after the all-reduce, every
                            # sample in the global minibatch weighs the same.
                            (per_sample.sum() / global_count / a.grad_accum_steps).backward()
                        if (mb_index + 1) % a.grad_accum_steps == 0 or mb_index + 1 == a.num_minibatches:
                            average_gradients(params, world_size)
                            grad_norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm if a.max_grad_norm > 0 else float("inf"))
                            totals[5] += float(grad_norm)
                            optimizer.step()
                            scheduler.step()
                            optimizer.zero_grad(set_to_none=True)
                            steps_taken += 1
                            optimizer_steps += 1
                rl.eval()
            update_seconds = time.perf_counter() - update_started

            # 5. metrics over all ranks, then logs and checkpoint ------------------------------------------------
            all_rewards = torch.cat(groups.all_rewards) if groups.all_rewards else torch.zeros(0)
            adv = torch.tensor(kept_advantages, dtype=torch.float64)
            summed = all_reduce_sum(torch.tensor([
                float((all_rewards > 0).sum()), float(all_rewards.numel()), float(all_rewards.sum()),
                float(len(groups.kept)), float(groups.dropped), float(groups.dropped_all_success),
                float(groups.dropped_all_failure), float(groups.rounds), float(adv.numel()), float(adv.sum()),
                float((adv ** 2).sum()), float(env_steps), rollout_seconds, *totals.tolist(),
            ], dtype=torch.float64)).tolist()
            (n_success, n_episodes, reward_sum, kept, dropped, dropped_success, dropped_failure, rounds, n_adv,
             adv_sum, adv_sq, steps, rollout_s, loss, clipped, approx_kl, kl_start, n_samples, grad_norm, anchor_gap_sum) = summed
            adv_mean = adv_sum / max(n_adv, 1)
            metrics = {
                "iteration": iteration,
                "rollout/success_rate": n_success / max(n_episodes, 1),
                "rollout/mean_reward": reward_sum / max(n_episodes, 1),
                "rollout/episodes": int(n_episodes),
                "rollout/env_steps_per_second": steps / max(rollout_s / world_size, 1e-9),  # ranks run side by side
                "sampling/contexts_kept": int(kept),
                "sampling/contexts_dropped": int(dropped),
                "sampling/dropped_all_success": int(dropped_success),
                "sampling/dropped_all_failure": int(dropped_failure),
                "sampling/rounds_mean": rounds / world_size,
                "advantage/mean": adv_mean,
                "advantage/std": math.sqrt(max(adv_sq / max(n_adv, 1) - adv_mean**2, 0.0)),
                "update/samples": int(n_samples),
                "update/loss": loss / max(n_samples, 1),
                "update/clip_fraction": clipped / max(n_samples, 1),
                "update/approx_kl": approx_kl / max(n_samples, 1),
                "update/kl_to_start": kl_start / max(n_samples, 1),
                "update/grad_norm": grad_norm / world_size / max(steps_taken, 1),
                "update/optimizer_steps": optimizer_steps,
                "update/learning_rate": scheduler.get_last_lr()[0],
                "update/noise_scale": float(rl.noise().detach().mean()),
                "update/cfg_condition_gap": rl.condition_gap(),
                "update/cfg_anchor_gap": anchor_gap_sum / max(n_samples, 1),
                "time/rollout_s": rollout_seconds,
                "time/update_s": update_seconds,
            }
            if tc.eval_every > 0 and (iteration + 1) % tc.eval_every == 0:
                metrics["eval/success_rate"] = evaluate(iteration + 1)
            metrics["time/iteration_s"] = time.perf_counter() - started
            if is_main:
                write_metrics(output_dir, writer, metrics)
                iterations.set_postfix(success=f"{metrics['rollout/success_rate']:.2f}", kept=int(kept))
            last = iteration + 1 == tc.num_iterations
            if (tc.checkpoint_every > 0 and (iteration + 1) % tc.checkpoint_every == 0) or last:
                save_checkpoint(cfg, output_dir, iteration, rl, base_policy, optimizer, scheduler, sampler,
                                update_generator, optimizer_steps, history, rank, world_size)
    finally:
        runner.close()
        if writer is not None:
            writer.close()
    checksum = weights_checksum(rl)
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, checksum)
        if len(set(gathered)) > 1:
            raise RuntimeError(f"ranks ended with different weights (checksums {gathered}): gradient averaging failed")
    if is_main and history:
        plot_success(output_dir, history)
    return {**metrics, "success_history": history, "weights_checksum": checksum}


# --- helpers (small, in the order the loop uses them) ----------------------------------------------------------------
def setup_distributed(backend: str, policy_device: str) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (RANK/WORLD_SIZE); one process otherwise. nccl needs a GPU each."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available() and policy_device != "cpu"
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return rank, world_size, torch.device("cuda", local_rank)
    return rank, world_size, torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_rl_policy(cfg: DictConfig, base_policy: Any, seed: int) -> RLPolicy:
    a = cfg.algo
    return RLPolicy(
        base_policy,
        optimizer=a.optimizer,
        num_denoise_steps=a.num_denoise_steps,
        noise_scale=a.noise_scale,
        learn_noise_scale=a.learn_noise_scale,
        logprob_action_dims=a.logprob_action_dims,
        replan_steps=cfg.task.replan_steps,
        guidance_weight=a.cfg_guidance_weight,
        cfg_rollout_noise=a.cfg_rollout_noise,
        guidance_base=a.cfg_guidance_base,
        seed=seed,
        sampler=a.sampler,
    ).eval()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (the identity in a single process); gloo reduces CPU tensors."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Sum every rank's gradient (each already divided by the global sample count) in one flat all-reduce.
    A parameter with no gradient on this rank (it had no samples) contributes zeros."""
    if world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def weights_checksum(module: torch.nn.Module) -> str:
    """A short digest of every weight, to check that ranks stayed in sync (and for tests)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_metrics(output_dir: Path, writer: Any, metrics: dict[str, Any]) -> None:
    with open(output_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    for key, value in metrics.items():
        if key != "iteration" and isinstance(value, (int, float)):
            writer.add_scalar(key, value, metrics["iteration"])
    writer.flush()


def save_checkpoint(cfg, output_dir, iteration, rl, base_policy, optimizer, scheduler, sampler, update_generator,
                    optimizer_steps, history, rank, world_size) -> None:
    """Every rank writes its RNG states into the staging directory; rank 0 writes the rest and renames it."""
    staging = ckpt.staging_dir(output_dir, iteration)
    if rank == 0:
        staging.mkdir(parents=True, exist_ok=True)
    barrier()
    ckpt.write_rank_state(staging, rank, ckpt.rng_state({
        "rollout_generator": rl.generator.get_state(),
        "update_generator": update_generator.get_state(),
        "sampler": sampler.state_dict(),
    }))
    barrier()
    if rank == 0:
        ckpt.finalize(
            output_dir, iteration, staging, rl, base_policy.save_pretrained,
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            {"optimizer_steps": optimizer_steps, "history": history, "world_size": world_size},
            cfg,
        )
    barrier()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def plot_success(output_dir: Path, history: list[dict[str, Any]]) -> None:
    """success.png: evaluation success rate by iteration (the curve to look at)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["iteration"] for h in history], [h["eval_success_rate"] for h in history], marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("eval success rate")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output_dir / "success.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pi0.ript.algo.trainer", description="RIPT-VLA training for pi0")
    parser.add_argument("--config", required=True, help="YAML config, e.g. pi0/ript/config/learning_demo.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. algo.optimizer=cfg train.num_iterations=5")
    args = parser.parse_args(argv)
    from pi0.ript.config.schema import ConfigError, load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
