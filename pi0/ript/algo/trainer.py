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

Where it runs (`pi0.ript.algo.parallel`): `train.strategy=replicated` keeps the whole model on every rank and sums
gradients with one all-reduce per optimizer step (as CleanRL's multi-GPU PPO does) rather than through the
DistributedDataParallel wrapper: the loss is not one forward call (a prefix pass, then one expert pass per
denoising step), and ranks keep different numbers of samples after dynamic sampling, which DDP's per-forward hooks
cannot express. `train.strategy=fsdp` shards weights, gradients and AdamW state (torch's fully_shard) and samples
rollouts with a full replica of the weights. Each rank takes the same number of optimizer steps, and each sample
weighs the same on every rank. `train.precision` (bf16 autocast on CUDA by default, fp32 weights and optimizer)
and `train.activation_checkpointing` trade speed for memory.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from tqdm import tqdm

from pi0.ript.algo import checkpoint as ckpt
from pi0.ript.algo.cfg import condition_labels
from pi0.ript.algo.dynamic_sampling import ContextSampler, sample_groups
from pi0.ript.algo.flow_sde import stochastic_steps
from pi0.ript.algo.memory import check_memory, free_bytes, frozen_copy_bytes, plan_memory
from pi0.ript.algo.parallel import (
    all_reduce_sum, average_gradients, barrier, full_optimizer_state, full_tensor,
    load_full_optimizer_state, resolve_precision, setup_distributed, shard_fsdp, sync_full_weights,
)
from pi0.ript.algo.ppo import ppo_loss
from pi0.ript.algo.rl_policy import RLPolicy
from pi0.ript.algo.rloo import rloo_advantages
from pi0.ript.config.algo_schema import checkpointed_parts
from pi0.ript.config.schema import ConfigError, apply_debug_mode
from pi0.ript.env.episode import Episode, EpisodeRequest
from pi0.ript.success_rate import success_interval

log = logging.getLogger("pi0.ript.train")

# What a CUDA out-of-memory error during training should make the user try, in order of what it costs them.
OUT_OF_MEMORY_HINT = (
    "CUDA out of memory during training: raise algo.num_minibatches (smaller update batches), set "
    "train.activation_checkpointing=all, train.expert_only=true, or shard with train.strategy=fsdp under torchrun; "
    "fewer task.num_parallel_envs lowers rollout memory"
)


@dataclass
class SampleBatch:
    """The iteration's training data, one sample per policy query of every kept episode (CleanRL's rollout buffer)."""

    observations: list[dict[str, np.ndarray]]  # what the policy saw
    instructions: list[str]
    chains: torch.Tensor  # [S, N+1, H, D] denoising chains recorded at rollout time (last entry: the chunk)
    old_step_log_probs: torch.Tensor | None  # [S, N] per-step log-probs under the rollout policy (None: no noise)
    advantages: torch.Tensor  # [S] the episode's RLOO advantage
    weights: torch.Tensor  # [S] 1; 0 for a placeholder that only keeps FSDP's collectives in step on a rank without data

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def num_real(self) -> int:
        return int(self.weights.sum())

    @staticmethod
    def from_records(records: list[tuple[Any, str, float]], weight: float = 1.0) -> "SampleBatch":
        """(inference record, instruction, advantage) triples -> a batch."""
        log_probs = [r.extras.get("step_log_probs") for r, _, _ in records]
        return SampleBatch(
            observations=[r.observation for r, _, _ in records],
            instructions=[instruction for _, instruction, _ in records],
            chains=torch.from_numpy(np.stack([r.extras["chain"] for r, _, _ in records])),
            old_step_log_probs=None if any(lp is None for lp in log_probs) else torch.from_numpy(np.stack(log_probs)),
            advantages=torch.tensor([adv for _, _, adv in records], dtype=torch.float32),
            weights=torch.full((len(records),), weight),
        )


def train(cfg: DictConfig, resume: bool = False, base_policy: Any = None) -> dict[str, Any]:
    """Run `cfg.train.num_iterations` RIPT iterations (continuing from the latest checkpoint when `resume`).
    Returns the last iteration's metrics plus `success_history` (eval success rate by iteration) on every rank.
    `base_policy`: a PI0Policy to start from instead of loading `policy.checkpoint_path` (benchmarks)."""
    cfg = apply_debug_mode(cfg)  # the runner gets the same one-task, short-horizon view
    a, tc = cfg.algo, cfg.train
    fsdp = tc.strategy == "fsdp"

    # --- processes: torchrun sets RANK / WORLD_SIZE; a plain `python -m` run is rank 0 of 1 ------------------------
    rank, world_size, device = setup_distributed(tc.dist_backend, cfg.policy.device, tc.strategy)
    is_main = rank == 0
    if device.type == "cuda":
        from pi0.ript.env.libero_sim import render_on_gpu

        render_on_gpu(device.index)  # this rank's env workers render on its card, not every rank's on the first
    autocast_dtype = resolve_precision(tc.precision, device)
    output_dir = Path(tc.output_dir)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(tc.seed + rank)
    found = ckpt.latest_checkpoint(output_dir) if resume else None
    if found is not None:
        saved_strategy = ckpt.load_trainer_state(found).get("strategy", "replicated")
        if saved_strategy != tc.strategy:
            raise ConfigError(
                f"train.strategy={tc.strategy}: {found} was written with train.strategy={saved_strategy} (its optimizer "
                f"state is laid out for that); resume with train.strategy={saved_strategy}"
            )

    # --- policy: fp32 master weights wrapped for RL sampling; frozen copies where the loss needs them --------------
    from pi0.ript.policy.pi0_policy import PI0Policy  # imported here so `--help` does not load transformers

    if base_policy is None:
        # A LeRobot checkpoint carries no tokenizer: policy.tokenizer_path names it (passed only when set).
        tokenizer = {"tokenizer_path": cfg.policy.tokenizer_path} if cfg.policy.tokenizer_path else {}
        base_policy = PI0Policy.from_pretrained(cfg.policy.checkpoint_path, device=device, **tokenizer)
    rl = make_rl_policy(cfg, base_policy, seed=tc.seed * 1000 + rank)
    rl.autocast_dtype = autocast_dtype
    rl.model.set_activation_checkpointing(checkpointed_parts(tc.activation_checkpointing))
    memory_line = check_training_memory(cfg, rl, device, autocast_dtype, world_size)  # before anything is spent
    if is_main:
        log.info(memory_line)
    reference = frozen_copy(rl, autocast_dtype) if a.kl_coef > 0 else None  # the starting policy (rebuilt from it on resume)
    # cfg: the null condition's anchor, a frozen policy whose sampling velocity the null branch is pulled towards
    # (instead of only refitting the policy's own samples, which drifts): the starting policy, or the policy that
    # sampled the current iteration's rollouts (refreshed before each update).
    anchor = None
    use_anchor = a.loss == "cfg" and a.cfg_null_anchor != "none" and a.cfg_anchor_coef > 0
    if use_anchor and a.cfg_null_anchor == "start":
        anchor = reference if reference is not None else frozen_copy(rl, autocast_dtype)
    if found is not None:
        ckpt.load_module_state(found, rl)
    params = rl.trainable_parameters(tc.expert_only)
    # The runner samples with `rollout_policy`: the policy itself, or under FSDP a full replica of its weights on each
    # rank, refreshed after every update (ranks call the policy at unrelated times; sharded weights would need
    # every rank in every call). That replica is also the rollout anchor: it holds the weights that sampled.
    rollout_policy = rl
    if fsdp:
        rollout_policy = frozen_copy(rl)
        shard_fsdp(rl, device, autocast_dtype)
        params = [p for p in rl.parameters() if p.requires_grad]
    if use_anchor and a.cfg_null_anchor == "rollout":
        anchor = rollout_policy if fsdp else frozen_copy(rl, autocast_dtype)
    # The RL heads (a learned noise scale, the CFG condition embeddings) start from fixed values (the configured
    # scale, zeros) and must move by order one to matter: at the policy's fine-tuning learning rate that would take
    # thousands of steps (e.g. the conditions would not differ at all, and CFG would be plain self-imitation of
    # successes and failures alike). So they get their own learning rate.
    heads = {name for name, p in rl.named_parameters() if any(p is h for h in rl.head_parameters())}
    head_params = [p for name, p in rl.named_parameters() if name in heads and p.requires_grad]
    groups = [{"params": [p for name, p in rl.named_parameters() if name not in heads and p.requires_grad]}]
    if head_params:
        groups.append({"params": head_params, "lr": a.head_learning_rate})
    optimizer = torch.optim.AdamW(groups, lr=tc.learning_rate, weight_decay=tc.weight_decay, eps=tc.adam_eps)
    warmup = max(int(tc.warmup_steps), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    update_generator = torch.Generator().manual_seed(tc.seed * 1000 + rank + 1)  # minibatch order, CFG draws

    # --- envs and contexts: this rank's shard of every (task, init state) -----------------------------------------
    from pi0.ript.env import create_env_runner

    runner = create_env_runner(cfg, rollout_policy, rank=rank, world_size=world_size)
    spec = runner.env_spec
    task_ids = list(cfg.task.task_ids) or list(range(spec.num_tasks()))
    all_contexts = [(t, i) for t in task_ids for i in range(spec.num_init_states(t))]
    sampler = ContextSampler(all_contexts[rank::world_size], seed=tc.seed * 1000 + rank, success_memory_size=a.success_memory_size)
    contexts_per_rank = math.ceil(a.num_contexts / world_size)
    per_episode_noise = tc.policy_noise == "per_episode"
    eval_requests = [
        EpisodeRequest(task_id=t, init_state=i, noise_seed=tc.eval_seed if per_episode_noise else None)
        for t in task_ids for i in range(tc.eval_episodes_per_task)
    ][rank::world_size]

    # --- resume: optimizer, schedule, every RNG stream and the next iteration (the weights were loaded above) -----
    start_iteration, optimizer_steps, history = 0, 0, []
    if resume and found is None:
        log.warning("--resume: no checkpoint under %s; starting from iteration 0", output_dir)
    if found is not None:
        opt_state = torch.load(found / "optimizer.pt", map_location="cpu", weights_only=False)  # any device: load_state_dict moves it
        if fsdp:
            load_full_optimizer_state(rl, optimizer, opt_state["optimizer"])
        else:
            optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        state = ckpt.load_trainer_state(found)
        start_iteration, optimizer_steps, history = state["iteration"] + 1, state["optimizer_steps"], state["history"]
        rank_state = ckpt.load_rank_state(found, rank)
        ckpt.restore_global_rng(rank_state)
        rollout_policy.generator.set_state(rank_state["rollout_generator"])
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
    first_record: list[tuple[Any, str]] = []  # any one policy query of this rank (the FSDP placeholder's input)

    sampling_round = {"iteration": -1, "round": 0}  # which rollout() call of which iteration (per_episode noise)

    def rollout_noise_seed() -> int | None:
        """train.policy_noise=per_episode: one seed per (iteration, dynamic-sampling round), so a context drawn in
        two rounds, or two iterations, is not replayed with the same noise; a resumed run draws the same seeds."""
        if not per_episode_noise:
            return None
        seed = np.random.SeedSequence([tc.seed, sampling_round["iteration"], sampling_round["round"]]).generate_state(1)[0]
        sampling_round["round"] += 1
        return int(seed)

    def rollout(contexts: list[tuple[int, int]]) -> list[tuple[list[Episode], torch.Tensor]]:
        """K episodes per context through the runner (all at once); grouped back by request order."""
        noise_seed = rollout_noise_seed()
        requests = [EpisodeRequest(task_id=t, init_state=i, rollout_index=k, noise_seed=noise_seed) for t, i in contexts for k in range(K)]
        episodes: list[Episode | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="rollouts", leave=False, disable=not (is_main and tc.progress))
        for episode in runner.run_episodes(requests):
            episodes[episode.request_id] = episode
            if not first_record and episode.inference:
                first_record.append((episode.inference[0], episode.instruction))
            bar.update(1)
        bar.close()
        groups = [episodes[c * K : (c + 1) * K] for c in range(len(contexts))]
        return [(group, torch.tensor([reward_of(e) for e in group])) for group in groups]

    def evaluate(iteration: int) -> float:
        """Success rate over eval init states 0..N-1 of every task, with a fixed sampling seed; the training RNG
        stream is saved and restored around it, so evaluating never changes what training does."""
        generator = rollout_policy.generator
        saved = generator.get_state()
        generator.manual_seed(tc.eval_seed + rank)
        rollout_policy.deterministic = tc.eval_deterministic
        successes = sum(float(e.success) for e in runner.run_episodes(eval_requests))
        rollout_policy.deterministic = False
        generator.set_state(saved)
        total = all_reduce_sum(torch.tensor([successes, float(len(eval_requests))]))
        rate = float(total[0] / total[1])
        interval = success_interval(int(total[0]), int(total[1]))  # how far the rate may be from the policy's own
        history.append({"iteration": iteration, "eval_success_rate": rate, "eval_success_rate_ci95": interval})
        if writer is not None:
            writer.add_scalar("eval/success_rate", rate, iteration)
            writer.add_scalar("eval/success_rate_ci95_low", interval[0], iteration)
            writer.add_scalar("eval/success_rate_ci95_high", interval[1], iteration)
        return rate

    def minibatch_loss(batch: SampleBatch, mb: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-sample loss [len(mb)] of the chosen objective on minibatch `mb`, and its summed diagnostics."""
        idx = mb.tolist()
        inputs = rl.policy.prepare_batch([batch.observations[j] for j in idx], [batch.instructions[j] for j in idx])
        chains = batch.chains[mb].to(device)
        stats: dict[str, float] = {}
        with rl.autocast():
            if a.loss == "ppo":
                new_log_prob, kl = rl.chain_log_prob(inputs, chains, not tc.expert_only, reference)
                scored = stochastic_steps(a.num_denoise_steps, a.sampler)  # steps that carry a log-density
                new_log_prob, old = new_log_prob[:, scored], batch.old_step_log_probs[mb][:, scored].to(new_log_prob)
                if a.ppo_ratio == "chain":  # one ratio per chunk: the product of the step ratios
                    new_log_prob, old = new_log_prob.sum(dim=1), old.sum(dim=1)
                per_sample, ppo_stats = ppo_loss(new_log_prob, old, batch.advantages[mb].to(device), a.clip_eps)
                weights = batch.weights[mb].to(device)
                stats["clipped"] = float((ppo_stats["clipped"] * weights).sum())
                stats["approx_kl"] = float((ppo_stats["approx_kl"] * weights).sum())
            else:
                labels = condition_labels(batch.advantages[mb], a.cfg_condition_dropout, update_generator)
                noise = torch.randn(chains[:, -1].shape, generator=update_generator)
                flow_time = rl.model.sample_time(len(mb), update_generator)
                per_sample, kl, anchor_gap = rl.cfg_loss(
                    inputs, chains[:, -1], labels.to(device), noise.to(device), flow_time.to(device),
                    not tc.expert_only, reference, anchor,
                )
                weights = batch.weights[mb].to(device)
                if anchor_gap is not None:
                    per_sample = per_sample + a.cfg_anchor_coef * anchor_gap
                    stats["anchor_gap"] = float((anchor_gap.detach() * weights).sum())
        if kl is not None:  # the KL penalty to the starting policy (ppo) or its flow analogue (cfg)
            per_sample = per_sample + a.kl_coef * kl
            stats["kl_to_start"] = float((kl.detach() * weights).sum())
        stats["loss"] = float((per_sample.detach() * weights).sum())
        return per_sample * weights, stats

    def update(batch: SampleBatch) -> tuple[dict[str, float], int]:
        """`update_epochs` passes over minibatches; returns the summed diagnostics and the optimizer steps taken."""
        nonlocal optimizer_steps
        totals: dict[str, float] = {}
        steps_taken = 0
        if a.loss == "ppo" and batch.num_real > 0 and batch.old_step_log_probs is None:
            raise RuntimeError("ppo needs rollout log-probabilities: the rollouts were sampled without noise")
        for epoch in range(a.update_epochs):
            order = torch.randperm(len(batch), generator=update_generator)
            for mb_index, mb in enumerate(torch.tensor_split(order, a.num_minibatches)):
                global_count = all_reduce_sum(torch.tensor([float(batch.weights[mb].sum())]))[0]
                placeholder = fsdp and len(mb) == 0 and len(batch) > 0
                if placeholder:  # FSDP needs every rank in every forward/backward: a pass that weighs nothing
                    mb = torch.zeros(1, dtype=torch.long)
                if len(mb) > 0:
                    per_sample, stats = minibatch_loss(batch, mb)
                    if placeholder:
                        per_sample, stats = per_sample * 0.0, {}
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + value
                    totals["samples"] = totals.get("samples", 0.0) + (0.0 if placeholder else float(batch.weights[mb].sum()))
                    # Sum over this rank's samples / samples over all ranks: after the gradient reduction every
                    # sample in the global minibatch weighs the same. FSDP averages over ranks: undo its division.
                    loss = per_sample.sum() / global_count.clamp_min(1.0) / a.grad_accum_steps
                    (loss * world_size if fsdp else loss).backward()
                if (mb_index + 1) % a.grad_accum_steps == 0 or mb_index + 1 == a.num_minibatches:
                    if not fsdp:
                        average_gradients(params, world_size)
                    max_norm = a.max_grad_norm if a.max_grad_norm > 0 else float("inf")
                    grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))
                    totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps_taken += 1
                    optimizer_steps += 1
        return totals, steps_taken

    try:
        if tc.eval_at_start and start_iteration == 0:
            evaluate(0)
        iterations = tqdm(range(start_iteration, tc.num_iterations), desc="RIPT", disable=not (is_main and tc.progress))
        for iteration in iterations:
            started = time.perf_counter()

            # 1-2. rollouts with dynamic sampling ---------------------------------------------------------------
            reset_peak_memory(device)
            runner.stats.reset()
            first_record.clear()
            sampling_round.update(iteration=iteration, round=0)
            groups = sample_groups(sampler, rollout, contexts_per_rank, a.dynamic_sampling, a.max_sampling_rounds)
            rollout_seconds = time.perf_counter() - started
            env_steps = runner.stats.env_steps
            rollout_peak = peak_memory_gib(device)

            # 3. RLOO advantages, then one sample per policy query of every kept episode ------------------------
            records: list[tuple[Any, str, float]] = []  # (inference record, instruction, advantage)
            kept_advantages = []
            if groups.kept:
                advantages = rloo_advantages(torch.stack([rewards for _, _, rewards in groups.kept]))
                kept_advantages = advantages.flatten().tolist()
                for (_, episodes, _), group_advantages in zip(groups.kept, advantages):
                    for episode, advantage in zip(episodes, group_advantages.tolist()):
                        if a.loss == "cfg" and not a.cfg_fit_negatives and advantage <= 0:
                            continue  # fit only better-than-group chunks (the null condition sees them too)
                        records.extend((record, episode.instruction, advantage) for record in episode.inference)
            if a.normalize_advantages and records:
                scale = torch.tensor([adv for _, _, adv in records]).std().clamp_min(1e-6)
                records = [(r, i, adv / float(scale)) for r, i, adv in records]

            # 4. update epochs over minibatches ------------------------------------------------------------------
            reset_peak_memory(device)
            update_started = time.perf_counter()
            totals: dict[str, float] = {}
            steps_taken = 0
            if all_reduce_sum(torch.tensor([float(len(records))]))[0] > 0:
                if anchor is not None and a.cfg_null_anchor == "rollout" and not fsdp:
                    anchor.load_state_dict(rl.state_dict())  # (under FSDP the anchor is the rollout replica itself)
                if records:
                    batch = SampleBatch.from_records(records)
                else:  # nothing kept here but elsewhere: FSDP still needs this rank's passes (with weight 0)
                    batch = SampleBatch.from_records([(*first_record[0], 0.0)], weight=0.0) if fsdp else None
                rl.train()
                if batch is None:  # replicated: no data on this rank, but the same optimizer steps and all-reduces
                    batch = SampleBatch([], [], torch.zeros(0), None, torch.zeros(0), torch.zeros(0))
                try:
                    totals, steps_taken = update(batch)
                except torch.cuda.OutOfMemoryError as exc:
                    raise torch.cuda.OutOfMemoryError(f"{OUT_OF_MEMORY_HINT} ({str(exc).splitlines()[0]})") from exc
                rl.eval()
                if fsdp:
                    sync_full_weights(rl, rollout_policy)  # the next rollouts sample with the updated weights
            update_seconds = time.perf_counter() - update_started

            # 5. metrics over all ranks, then logs and checkpoint ------------------------------------------------
            all_rewards = torch.cat(groups.all_rewards) if groups.all_rewards else torch.zeros(0)
            adv = torch.tensor(kept_advantages, dtype=torch.float64)
            summed = reduce_named({
                "successes": float((all_rewards > 0).sum()), "episodes": float(all_rewards.numel()),
                "reward_sum": float(all_rewards.sum()), "kept": float(len(groups.kept)), "dropped": float(groups.dropped),
                "dropped_success": float(groups.dropped_all_success), "dropped_failure": float(groups.dropped_all_failure),
                "rounds": float(groups.rounds), "advantages": float(adv.numel()), "advantage_sum": float(adv.sum()),
                "advantage_sq_sum": float((adv**2).sum()), "env_steps": float(env_steps), "rollout_s": rollout_seconds,
                **{key: totals.get(key, 0.0) for key in ("loss", "clipped", "approx_kl", "kl_to_start", "samples", "grad_norm", "anchor_gap")},
            })
            n_samples = max(summed["samples"], 1)
            adv_mean = summed["advantage_sum"] / max(summed["advantages"], 1)
            metrics = {
                "iteration": iteration,
                "rollout/success_rate": summed["successes"] / max(summed["episodes"], 1),
                "rollout/mean_reward": summed["reward_sum"] / max(summed["episodes"], 1),
                "rollout/episodes": int(summed["episodes"]),
                "rollout/env_steps_per_second": summed["env_steps"] / max(summed["rollout_s"] / world_size, 1e-9),  # ranks run side by side
                "sampling/contexts_kept": int(summed["kept"]),
                "sampling/contexts_dropped": int(summed["dropped"]),
                "sampling/dropped_all_success": int(summed["dropped_success"]),
                "sampling/dropped_all_failure": int(summed["dropped_failure"]),
                "sampling/rounds_mean": summed["rounds"] / world_size,
                "advantage/mean": adv_mean,
                "advantage/std": math.sqrt(max(summed["advantage_sq_sum"] / max(summed["advantages"], 1) - adv_mean**2, 0.0)),
                "update/samples": int(summed["samples"]),
                "update/loss": summed["loss"] / n_samples,
                "update/clip_fraction": summed["clipped"] / n_samples,
                "update/approx_kl": summed["approx_kl"] / n_samples,
                "update/kl_to_start": summed["kl_to_start"] / n_samples,
                "update/grad_norm": summed["grad_norm"] / world_size / max(steps_taken, 1),
                "update/optimizer_steps": optimizer_steps,
                "update/learning_rate": scheduler.get_last_lr()[0],
                "update/noise_scale": float(rollout_policy.noise().detach().mean()),
                "update/cfg_condition_gap": rollout_policy.condition_gap(),
                "update/cfg_anchor_gap": summed["anchor_gap"] / n_samples,
                "time/rollout_s": rollout_seconds,
                "time/update_s": update_seconds,
            }
            if device.type == "cuda":  # peak GPU memory allocated by torch in each phase, on this rank
                metrics["memory/rollout_peak_gib"] = rollout_peak
                metrics["memory/update_peak_gib"] = peak_memory_gib(device)
            if tc.eval_every > 0 and (iteration + 1) % tc.eval_every == 0:
                metrics["eval/success_rate"] = evaluate(iteration + 1)
            metrics["time/iteration_s"] = time.perf_counter() - started
            if is_main:
                write_metrics(output_dir, writer, metrics)
                iterations.set_postfix(success=f"{metrics['rollout/success_rate']:.2f}", kept=int(summed["kept"]))
            last = iteration + 1 == tc.num_iterations
            due = (tc.checkpoint_every > 0 and (iteration + 1) % tc.checkpoint_every == 0) or last
            if due and tc.save_checkpoints:
                optimizer_state = full_optimizer_state(rl, optimizer) if fsdp else optimizer.state_dict()
                save_checkpoint(cfg, output_dir, iteration, rollout_policy, optimizer_state, scheduler, sampler,
                                update_generator, optimizer_steps, history, rank, world_size)
    finally:
        runner.close()
        if writer is not None:
            writer.close()
    checksum = weights_checksum(rollout_policy)
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, checksum)
        if len(set(gathered)) > 1:
            raise RuntimeError(f"ranks ended with different weights (checksums {gathered}): gradient averaging failed")
    if is_main and history:
        plot_eval_history(output_dir, history)
    return {**metrics, "success_history": history, "weights_checksum": checksum}


# --- helpers (small, in the order the loop uses them) ----------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_rl_policy(cfg: DictConfig, base_policy: Any, seed: int) -> RLPolicy:
    a = cfg.algo
    return RLPolicy(
        base_policy,
        optimizer=a.loss,
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


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory torch allocated on the GPU since the last reset (0 on a CPU: the process RSS is not per phase)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def check_training_memory(cfg: DictConfig, rl: RLPolicy, device: torch.device, autocast_dtype: torch.dtype | None,
                          world_size: int, free: int | None = None) -> str:
    """The memory plan's log line, or ConfigError if the gradients, AdamW state and frozen copies this config needs
    do not fit next to the weights already on `device` (pi0.ript.algo.memory). The frozen copies follow the
    conditions under which train() builds them: the KL reference, the CFG anchor, the FSDP rollout replica.
    `free`: bytes free (default: asked of the device)."""
    a, tc = cfg.algo, cfg.train
    fsdp = tc.strategy == "fsdp"

    def copies(kl_coef: float, anchor: str, fsdp: bool) -> list[int]:
        return frozen_copy_bytes(a.loss, kl_coef, anchor, a.cfg_anchor_coef, fsdp, autocast_dtype == torch.bfloat16)

    total = sum(p.numel() for p in rl.parameters())
    language_and_vision = sum(p.numel() for p in rl.model.paligemma_with_expert.paligemma.parameters())
    trained_full = sum(p.numel() for p in rl.parameters() if p.requires_grad)
    trained = trained_full - language_and_vision if tc.expert_only else trained_full
    shards = world_size if fsdp else 1
    plan = plan_memory(total, trained, copies(a.kl_coef, a.cfg_null_anchor, fsdp), shards)
    alternatives = {}
    if not tc.expert_only:
        alternatives["train.expert_only=true"] = plan_memory(total, trained_full - language_and_vision, copies(a.kl_coef, a.cfg_null_anchor, fsdp), shards)
    if not fsdp and world_size > 1:
        alternatives[f"train.strategy=fsdp over these {world_size} ranks"] = plan_memory(total, trained, copies(a.kl_coef, a.cfg_null_anchor, True), world_size)
    if a.kl_coef > 0:
        alternatives["algo.kl_coef=0"] = plan_memory(total, trained, copies(0.0, a.cfg_null_anchor, fsdp), shards)
    if a.loss == "cfg" and a.cfg_null_anchor != "none":
        alternatives["algo.cfg_null_anchor=none"] = plan_memory(total, trained, copies(a.kl_coef, "none", fsdp), shards)
    if free is None:
        free = free_bytes(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return check_memory(plan, free, str(device), alternatives)


def frozen_copy(rl: RLPolicy, weights_dtype: torch.dtype | None = None) -> RLPolicy:
    """A frozen, separate copy of the policy (the KL reference, a CFG anchor, the FSDP rollout replica). With
    `weights_dtype` (bf16 under mixed precision) its pi0 weights are stored in it: a frozen copy only ever runs
    forward passes, which autocast computes in bf16 anyway, so fp32 storage would only cost memory (6 GiB of 12
    for a full pi0)."""
    copied = copy.deepcopy(rl).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    if weights_dtype is not None:
        copied.model.to(weights_dtype)
    return copied


def reduce_named(values: dict[str, float]) -> dict[str, float]:
    """Sum named scalars over ranks (one all-reduce); the names stay attached to their values."""
    summed = all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64)).tolist()
    return dict(zip(values, summed))


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


def save_checkpoint(cfg, output_dir, iteration, rollout_policy, optimizer_state, scheduler, sampler, update_generator,
                    optimizer_steps, history, rank, world_size) -> None:
    """Every rank writes its RNG states into the staging directory; rank 0 writes the rest and renames it. The weights
    come from the rollout policy: the policy itself, or under FSDP its full replica (synced after every update), so
    the checkpoint is a full state dict that loads into a single process."""
    staging = ckpt.staging_dir(output_dir, iteration)
    if rank == 0:
        staging.mkdir(parents=True, exist_ok=True)
    barrier()
    ckpt.write_rank_state(staging, rank, ckpt.rng_state({
        "rollout_generator": rollout_policy.generator.get_state(),
        "update_generator": update_generator.get_state(),
        "sampler": sampler.state_dict(),
    }))
    barrier()
    if rank == 0:
        ckpt.finalize(
            output_dir, iteration, staging, rollout_policy, rollout_policy.policy.save_pretrained,
            {"optimizer": optimizer_state, "scheduler": scheduler.state_dict()},
            {"optimizer_steps": optimizer_steps, "history": history, "world_size": world_size, "strategy": cfg.train.strategy},
            cfg,
        )
    barrier()


def plot_eval_history(output_dir: Path, history: list[dict[str, Any]]) -> None:
    """success.png: evaluation success rate by iteration (the curve to look at), with its 95% interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["iteration"] for h in history], [h["eval_success_rate"] for h in history], marker="o")
    banded = [h for h in history if h.get("eval_success_rate_ci95")]  # (histories resumed from before the key: none)
    if banded:
        ax.fill_between([h["iteration"] for h in banded], [h["eval_success_rate_ci95"][0] for h in banded],
                        [h["eval_success_rate_ci95"][1] for h in banded], alpha=0.2, label="95% interval")
        ax.legend(loc="lower right")
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
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. algo.loss=cfg train.num_iterations=5")
    args = parser.parse_args(argv)
    from pi0.ript.config.schema import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    if dist.is_initialized():
        barrier()  # every rank done before any tears the group down (a rank leaving early aborted its peer's gloo threads)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
