"""The RL view of a pi0 policy: samples chunks the way the trainer needs and returns what it needs per sample.

`RLPolicy` implements the runners' `RolloutPolicy` protocol around a `PI0Policy`. Observations go through the
policy's own preprocessing (`prepare_batch`) and chunks through its own postprocessing (`postprocess`), so the
runner, the trainer and plain evaluation share one data path; only the sampler differs:

- `ppo`: the flow-SDE sampler (`flow_sde.sde_sample`). Per sample, `extras` carries the denoising `chain`
  [N+1, H, 32] and its per-step `step_log_probs` [N] (None when it was sampled without noise), which the trainer,
  rescoring the chain under the current weights, turns into the PPO ratio (per chain or per step, `algo.ppo_ratio`).
- `cfg`: classifier-free-guided flow sampling, v_null + w (v_positive - v_base) with the base the negative or the
  null condition (plain ODE sampling by default; optionally with the same injected noise, for exploration).
  `extras` carries the `chain` too; its last entry is the normalised chunk the trainer fits with the conditioned
  flow-matching loss.

The module owns the trainable RL pieces next to the pi0 weights: the noise scale (fixed buffer or learned) and the
CFG condition embeddings, so one `state_dict` holds everything a checkpoint needs.

pi0 and pi0.5 (`config.pi05`) run the same code: both samplers and both losses only call `compute_prefix_cache` and
`velocity(cache, state, x, t, action_token_bias)`, whose meaning is the same for both (pi0.5 does not read `state`,
which travels in its prompt; the CFG condition is added to the action tokens, which both variants have; cfg.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from pi0.ript.algo.cfg import NEGATIVE, NULL, POSITIVE, AdvantageCondition, cfg_flow_loss, flow_matching_targets, guided_velocity
from pi0.ript.algo.flow_sde import NoiseScale, chain_log_prob, logprob_mask, normal_draws, sde_sample
from pi0.ript.policy.protocol import PolicyOutput


class RLPolicy(nn.Module):
    def __init__(
        self,
        policy: Any,
        optimizer: str,
        num_denoise_steps: int,
        noise_scale: float,
        learn_noise_scale: bool,
        logprob_action_dims: int,
        replan_steps: int,
        guidance_weight: float = 1.0,
        cfg_rollout_noise: bool = False,
        guidance_base: str = "negative",
        seed: int = 0,
        sampler: str = "ddpm",
    ):
        super().__init__()
        if optimizer not in ("ppo", "cfg"):
            raise ValueError(f"algo.optimizer={optimizer!r}: use ppo or cfg")
        object.__setattr__(self, "policy", policy)  # not a submodule: its weights are registered once, as `model`
        self.model = policy.model
        config = self.model.config
        self.optimizer_kind = optimizer
        self.chunk_size = int(config.chunk_size)
        self.action_dim = int(getattr(policy, "action_dim", config.env_action_dim))
        self.num_denoise_steps = num_denoise_steps
        self.sampler = sampler  # flow_sde transition kind: ddpm (marginal-preserving) or additive
        self.noise = NoiseScale(config.max_action_dim, noise_scale, learnable=learn_noise_scale and optimizer == "ppo")
        self.condition = AdvantageCondition(config.expert.width) if optimizer == "cfg" else None
        self.guidance_weight = guidance_weight
        self.guidance_base = guidance_base  # cfg: v_null + w (v_positive - v_base), base = negative or unconditional (null)
        self.cfg_rollout_noise = cfg_rollout_noise
        self.register_buffer(
            "mask", logprob_mask(self.chunk_size, config.max_action_dim, min(replan_steps, self.chunk_size), logprob_action_dims)
        )
        self.deterministic = False  # True: plain ODE sampling (no injected noise), e.g. for evaluation
        self.autocast_dtype: torch.dtype | None = None  # mixed precision (train.precision): bf16 autocast, fp32 weights
        # Rollout noise: a CPU generator (draws move to the model's device), so a seed samples the same on any device;
        # its state is checkpointed.
        self.generator = torch.Generator().manual_seed(seed)
        # The RL heads and the mask were built on the CPU: they live where the pi0 weights live (and move with them).
        self.to(self.model.device)

    def autocast(self) -> torch.autocast:
        """Mixed precision for a forward pass: matmuls and attention in `autocast_dtype` while weights, optimizer state
        and the sampler's arithmetic stay fp32; a no-op without it. Entered per call, since autocast is per thread
        and the runner may call the policy from its inference thread."""
        dtype = self.autocast_dtype or torch.bfloat16
        return torch.autocast(self.model.device.type, dtype=dtype, enabled=self.autocast_dtype is not None)

    # --- rollout (RolloutPolicy) -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunks(
        self, observations: Sequence[dict[str, np.ndarray]], instructions: Sequence[str], sample_seeds: Sequence[int] | None = None,
    ) -> PolicyOutput:
        """`sample_seeds` (one per observation; the runner passes them for requests with a noise_seed): sample b's
        starting noise and every step's injected noise come from a generator seeded with sample_seeds[b], its
        starting noise as PI0Policy.seeded_noise draws it. Without them, everything comes from `self.generator`."""
        was_training = self.model.training
        self.model.eval()
        try:
            inputs = self.policy.prepare_batch(list(observations), list(instructions))
            with self.autocast():
                cache = self.prefix_cache(inputs, with_grad=False)
            batch = len(observations)
            generators = self.generator if sample_seeds is None else [torch.Generator().manual_seed(int(s)) for s in sample_seeds]
            noise = normal_draws((batch, self.chunk_size, self.model.config.max_action_dim), generators, self.model.device)
            velocity = self._rollout_velocity(cache, inputs.state, batch)
            stochastic = not self.deterministic and (self.optimizer_kind == "ppo" or self.cfg_rollout_noise)
            # Without injected noise the chain is the plain Euler ODE (zero-width mask: nothing is sampled).
            mask = self.mask if stochastic else torch.zeros_like(self.mask)
            with self.autocast():
                chain, step_log_probs = sde_sample(velocity, noise, self.num_denoise_steps, self.noise(), mask, generators, self.sampler)
            env_actions = self.policy.postprocess(chain[:, -1], inputs.raw_state)
        finally:
            self.model.train(was_training)
        chain_np = chain.to(torch.float32).cpu().numpy()
        step_np = step_log_probs.to(torch.float64).cpu().numpy()
        # Without injected noise a chain has no density to score: None, so the trainer's PPO check can refuse it.
        extras = [{"chain": chain_np[b], "step_log_probs": step_np[b] if stochastic else None} for b in range(batch)]
        return PolicyOutput(actions=np.asarray(env_actions, dtype=np.float64), extras=extras)

    def _rollout_velocity(self, cache, state: torch.Tensor, batch: int):
        if self.condition is None:
            return lambda x, t: self.model.velocity(cache, state, x, t)
        stacked = self.stacked_cache(cache)  # built once per chunk, shared by every denoising step
        return lambda x, t: self.guided_velocity(cache, state, x, t, stacked)

    def _guidance_labels(self) -> list[int]:
        return [POSITIVE, NULL] + ([NEGATIVE] if self.guidance_base == "negative" else [])

    def stacked_cache(self, cache):
        """The prefix cache repeated once per guidance condition, so all conditions run as one batched pass."""
        batch = cache.batch_size
        return cache.index_select(torch.arange(batch).repeat(len(self._guidance_labels())))

    def guided_velocity(self, cache, state: torch.Tensor | None, x: torch.Tensor, t: torch.Tensor | float, stacked=None):
        """The CFG sampling velocity v_null + w (v_positive - v_base) at (x, t): the conditions are stacked along the
        batch, one forward pass instead of two or three (the usual CFG batching; small batches are overhead-bound)."""
        labels = self._guidance_labels()
        k, batch = len(labels), x.shape[0]
        stacked = self.stacked_cache(cache) if stacked is None else stacked
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(batch)
        bias = self.condition(torch.tensor(labels, device=x.device).repeat_interleave(batch))
        state = None if state is None else state.repeat(k, 1)  # pi0.5 may be given no state (it reads none)
        v = self.model.velocity(stacked, state, x.repeat(k, 1, 1), t.repeat(k), bias).split(batch)
        return guided_velocity(v[0], v[1], self.guidance_weight, v[2] if k == 3 else None)

    def head_parameters(self) -> list[nn.Parameter]:
        """The RL heads' parameters: the learned noise scale and the CFG condition embeddings (those that exist)."""
        heads = list(self.noise.parameters())
        if self.condition is not None:
            heads += list(self.condition.parameters())
        return heads

    def condition_gap(self) -> float:
        """|positive - null| of the CFG condition embeddings (0 before any update, and without CFG)."""
        if self.condition is None:
            return 0.0
        embedding = self.condition.embedding.detach()
        return float((embedding[POSITIVE] - embedding[NULL]).norm())

    # --- update-time scoring -------------------------------------------------------------------------------------
    def prefix_cache(self, inputs: Any, with_grad: bool):
        """The vision-language prefix; without gradient when only the action expert trains (saves its backward)."""
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            return self.model.compute_prefix_cache(
                inputs.images, inputs.image_masks, inputs.tokens, inputs.token_masks, getattr(inputs, "slots_present", None)
            )

    def frozen_prefix_cache(self, other: "RLPolicy", inputs: Any, cache, prefix_grad: bool):
        """`other`'s (a frozen copy's) prefix cache. When the prefix does not train (expert_only), both prefixes still
        hold the starting weights, so this policy's `cache` is the same thing and the second prefix pass is skipped."""
        if not prefix_grad:
            return cache
        with torch.no_grad():
            return other.prefix_cache(inputs, with_grad=False)

    def chain_log_prob(
        self, inputs: Any, chains: torch.Tensor, prefix_grad: bool, reference: "RLPolicy | None" = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-step log-probabilities [B, N] of recorded chains under the current weights (and the KL to `reference`)."""
        cache = self.prefix_cache(inputs, with_grad=prefix_grad)
        velocity = lambda x, t: self.model.velocity(cache, inputs.state, x, t)  # noqa: E731
        reference_velocity = None
        if reference is not None:
            reference_cache = self.frozen_prefix_cache(reference, inputs, cache, prefix_grad)
            reference_velocity = lambda x, t: reference.model.velocity(reference_cache, inputs.state, x, t)  # noqa: E731
        return chain_log_prob(velocity, chains, self.noise(), self.mask, reference_velocity, self.sampler)

    def cfg_loss(
        self,
        inputs: Any,
        actions: torch.Tensor,
        labels: torch.Tensor,
        noise: torch.Tensor,
        time: torch.Tensor,
        prefix_grad: bool,
        reference: "RLPolicy | None" = None,
        anchor: "RLPolicy | None" = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-sample conditioned flow-matching loss [B] on the executed entries of the normalised chunks `actions`;
        with `reference`, the per-sample squared velocity gap to the reference (the flow analogue of a KL); with
        `anchor`, the squared gap between this policy's null velocity and the anchor's guided (sampling) velocity."""
        if self.condition is None:
            raise RuntimeError("cfg_loss needs algo.optimizer=cfg (no condition embeddings were built)")
        cache = self.prefix_cache(inputs, with_grad=prefix_grad)
        x_t, target = flow_matching_targets(actions, noise, time)
        predicted = self.model.velocity(cache, inputs.state, x_t, time, self.condition(labels))
        loss = cfg_flow_loss(predicted, target, self.mask)
        gap = anchor_gap = None
        if reference is not None:
            reference_cache = self.frozen_prefix_cache(reference, inputs, cache, prefix_grad)
            with torch.no_grad():
                null = torch.full_like(labels, NULL)
                reference_v = reference.model.velocity(reference_cache, inputs.state, x_t, time, reference.condition(null))
            gap = cfg_flow_loss(predicted, reference_v, self.mask)
        if anchor is not None:
            anchor_cache = self.frozen_prefix_cache(anchor, inputs, cache, prefix_grad)
            with torch.no_grad():
                anchor_v = anchor.guided_velocity(anchor_cache, inputs.state, x_t, time)
            null_v = self.model.velocity(cache, inputs.state, x_t, time, self.condition(torch.full_like(labels, NULL)))
            anchor_gap = cfg_flow_loss(null_v, anchor_v, self.mask)
        return loss, gap, anchor_gap

    def trainable_parameters(self, expert_only: bool) -> list[nn.Parameter]:
        """Everything, or (expert_only) the action expert, the action/state/time projections (pi0.5: the action
        projections, the time MLP and the expert's adaRMS norms) and the RL heads; the vision tower and the language
        model are frozen (requires_grad False) in that case."""
        if expert_only:
            for p in self.model.paligemma_with_expert.paligemma.parameters():
                p.requires_grad_(False)
        return [p for p in self.parameters() if p.requires_grad]
