"""The `algo` and `train` sections of the run config: every RIPT hyper-parameter, each with a one-line comment.

Imported by `pi0.ript.config.schema` into the one structured config; `AlgoConfig.validate(cfg)` checks values (one-line
`ConfigError` naming the key and what is allowed), and is called from the schema's `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pi0.ript.config.errors import require as _require

LOSSES = ("ppo", "cfg")
REWARDS = ("success", "total_reward")
SAMPLERS = ("ddpm", "additive")  # flow-SDE transition kinds (pi0.ript.algo.flow_sde imports them from here)
STRATEGIES = ("replicated", "fsdp")
PRECISIONS = ("auto", "bf16", "fp32")
CHECKPOINTABLE_PARTS = ("vision", "language", "expert")  # pi0.model.modeling.CHECKPOINTABLE_PARTS


@dataclass
class AlgoConfig:
    loss: str = "ppo"  # ppo: clipped PPO on flow-SDE chunk log-probs | cfg: advantage-conditioned flow matching
    optimizer: Optional[str] = None  # the earlier name of algo.loss (AdamW is the optimizer): set, it stands for algo.loss
    rollouts_per_env: int = 8  # K: rollouts per context (task, init state), the RLOO group size
    num_contexts: int = 8  # contexts kept per iteration over all ranks (each rank keeps num_contexts / world_size)
    reward: str = "success"  # success: 1 if the episode succeeded else 0 | total_reward: the env's summed reward
    dynamic_sampling: bool = True  # drop contexts whose K rewards all agree (no signal) and draw replacements
    max_sampling_rounds: int = 3  # bound on draw rounds per iteration, so sampling ends even if all succeed/fail
    success_memory_size: int = 0  # remember this many recent all-success contexts and skip them (0: off)
    num_denoise_steps: int = 10  # Euler steps of the flow sampler at rollout and when scoring chains
    sampler: str = "ddpm"  # flow-SDE step: ddpm (marginal-preserving, noise_scale = eta in (0, 1]) | additive (Euler + noise)
    noise_scale: float = 1.0  # ddpm: eta, the fraction of the ancestral noise | additive: sigma per unit time (~0.3)
    learn_noise_scale: bool = False  # learn log(sigma) per action dim with the policy (pi_RL flow-noise) or keep fixed
    head_learning_rate: float = 1e-2  # AdamW lr of the RL heads (learned noise scale, CFG condition embeddings)
    logprob_action_dims: int = 7  # leading action dims sampled stochastically and scored (the env's action dims)
    clip_eps: float = 0.2  # PPO ratio clip epsilon
    ppo_ratio: str = "step"  # step: one ratio per denoising step, averaged (Flow-GRPO) | chain: one per chunk (product)
    update_epochs: int = 2  # passes over the iteration's samples
    num_minibatches: int = 4  # minibatches per epoch (per rank; every rank takes the same number of steps)
    grad_accum_steps: int = 1  # minibatches accumulated per optimizer step
    max_grad_norm: float = 1.0  # global gradient-norm clip (<= 0: off)
    kl_coef: float = 0.0  # weight of the KL penalty to the starting policy (> 0 keeps a frozen reference copy)
    normalize_advantages: bool = False  # divide advantages by their std over the iteration (RLOO needs no centring)
    cfg_condition_dropout: float = 0.1  # cfg: probability of training a sample with the null condition
    cfg_fit_negatives: bool = True  # cfg: also fit chunks that did worse than their group (negative condition)
    # cfg defaults: the setting measured to lift the CPU demo (docs/TRAINING.md, run CK); without the anchor, or with
    # noisy rollouts, refitting the policy's own samples drifted and success stayed flat or fell.
    cfg_guidance_weight: float = 1.0  # cfg: w in v_null + w (v_positive - v_base) when sampling rollouts and evals
    cfg_rollout_noise: bool = False  # cfg: also inject flow-SDE noise at rollout time (else the plain ODE sampler)
    cfg_guidance_base: str = "negative"  # cfg: v_base: negative (v_pos - v_neg) | unconditional (v_null, as CFGRL)
    cfg_null_anchor: str = "rollout"  # cfg: pull the null velocity towards a frozen policy: rollout | start | none
    cfg_anchor_coef: float = 1.0  # cfg: weight of that pull (squared velocity gap) next to the flow-matching loss

    @staticmethod
    def validate(cfg: Any) -> None:
        a, t = cfg.algo, cfg.train
        if a.optimizer is not None:  # the alias: folded into algo.loss, so the rest of the code reads one key
            default = AlgoConfig.loss
            _require(a.optimizer in LOSSES, f"algo.optimizer={a.optimizer!r}: use one of {', '.join(LOSSES)} (as algo.loss)")
            _require(a.loss in (default, a.optimizer), f"algo.optimizer={a.optimizer!r} and algo.loss={a.loss!r} disagree: set algo.loss only")
            a.loss, a.optimizer = a.optimizer, None
        _require(a.loss in LOSSES, f"algo.loss={a.loss!r}: use one of {', '.join(LOSSES)}")
        _require(a.reward in REWARDS, f"algo.reward={a.reward!r}: use one of {', '.join(REWARDS)}")
        _require(a.rollouts_per_env >= 2, f"algo.rollouts_per_env={a.rollouts_per_env} must be >= 2 (leave-one-out)")
        _require(a.num_contexts >= 1, f"algo.num_contexts={a.num_contexts} must be >= 1")
        _require(a.max_sampling_rounds >= 1, f"algo.max_sampling_rounds={a.max_sampling_rounds} must be >= 1")
        _require(a.success_memory_size >= 0, f"algo.success_memory_size={a.success_memory_size} must be >= 0")
        _require(a.num_denoise_steps >= 1, f"algo.num_denoise_steps={a.num_denoise_steps} must be >= 1")
        _require(a.sampler in SAMPLERS, f"algo.sampler={a.sampler!r}: use one of {', '.join(SAMPLERS)}")
        _require(a.noise_scale > 0, f"algo.noise_scale={a.noise_scale} must be > 0")
        _require(a.sampler != "ddpm" or a.noise_scale <= 1, f"algo.noise_scale={a.noise_scale}: ddpm's eta must be in (0, 1]")
        _require(a.logprob_action_dims >= 1, f"algo.logprob_action_dims={a.logprob_action_dims} must be >= 1")
        _require(a.ppo_ratio in ("chain", "step"), f"algo.ppo_ratio={a.ppo_ratio!r}: use chain or step")
        _require(0 < a.clip_eps < 1, f"algo.clip_eps={a.clip_eps} must be in (0, 1)")
        _require(a.update_epochs >= 1, f"algo.update_epochs={a.update_epochs} must be >= 1")
        _require(a.num_minibatches >= 1, f"algo.num_minibatches={a.num_minibatches} must be >= 1")
        _require(a.grad_accum_steps >= 1, f"algo.grad_accum_steps={a.grad_accum_steps} must be >= 1")
        _require(a.kl_coef >= 0, f"algo.kl_coef={a.kl_coef} must be >= 0")
        _require(0 <= a.cfg_condition_dropout < 1, f"algo.cfg_condition_dropout={a.cfg_condition_dropout} must be in [0, 1)")
        _require(a.head_learning_rate > 0, f"algo.head_learning_rate={a.head_learning_rate} must be > 0")
        _require(a.cfg_guidance_base in ("negative", "unconditional"), f"algo.cfg_guidance_base={a.cfg_guidance_base!r}: use negative or unconditional")
        _require(a.cfg_guidance_base != "negative" or a.cfg_fit_negatives, "algo.cfg_guidance_base=negative needs algo.cfg_fit_negatives=true (the negative condition must be trained)")
        _require(a.cfg_null_anchor in ("none", "start", "rollout"), f"algo.cfg_null_anchor={a.cfg_null_anchor!r}: use none, start or rollout")
        _require(a.cfg_anchor_coef >= 0, f"algo.cfg_anchor_coef={a.cfg_anchor_coef} must be >= 0")
        _require(a.cfg_guidance_weight >= 0, f"algo.cfg_guidance_weight={a.cfg_guidance_weight} must be >= 0")
        _require(t.num_iterations >= 0, f"train.num_iterations={t.num_iterations} must be >= 0")
        _require(t.learning_rate > 0, f"train.learning_rate={t.learning_rate} must be > 0")
        _require(t.warmup_steps >= 0, f"train.warmup_steps={t.warmup_steps} must be >= 0")
        _require(t.eval_every >= 0, f"train.eval_every={t.eval_every} must be >= 0 (0: no evaluation during training)")
        _require(t.eval_episodes_per_task >= 1, f"train.eval_episodes_per_task={t.eval_episodes_per_task} must be >= 1")
        _require(t.checkpoint_every >= 0, f"train.checkpoint_every={t.checkpoint_every} must be >= 0 (0: only at the end)")
        _require(t.policy_noise in ("stream", "per_episode"), f"train.policy_noise={t.policy_noise!r}: use stream or per_episode")
        _require(t.dist_backend in ("auto", "gloo", "nccl"), f"train.dist_backend={t.dist_backend!r}: use auto, gloo or nccl")
        _require(t.precision in PRECISIONS, f"train.precision={t.precision!r}: use one of {', '.join(PRECISIONS)}")
        _require(t.strategy in STRATEGIES, f"train.strategy={t.strategy!r}: use one of {', '.join(STRATEGIES)}")
        parts = checkpointed_parts(t.activation_checkpointing)
        _require(
            bool(parts) or str(t.activation_checkpointing).strip().lower() in ("none", "false", ""),
            f"train.activation_checkpointing={t.activation_checkpointing!r}: use none, all, or a comma list of "
            f"{', '.join(CHECKPOINTABLE_PARTS)}",
        )


@dataclass
class TrainConfig:
    num_iterations: int = 10  # RIPT iterations (rollouts -> advantages -> updates)
    learning_rate: float = 1e-5  # AdamW peak learning rate
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to learning_rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_eps: float = 1e-8  # AdamW epsilon
    expert_only: bool = False  # train only the action expert (+ RL heads); vision and language frozen, less memory
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32 (weights and AdamW stay fp32)
    activation_checkpointing: str = "none"  # recompute activations in backward: none | all | list of vision,language,expert
    strategy: str = "replicated"  # replicated: whole model per rank | fsdp: weights, grads, AdamW sharded (torchrun)
    eval_every: int = 0  # evaluate every N iterations through the runner (0: never during training)
    eval_at_start: bool = False  # also evaluate before the first update (the "before" number)
    eval_episodes_per_task: int = 10  # eval init states 0..N-1 of each task in task.task_ids
    eval_seed: int = 12345  # sampling seed for evaluation, so evals differ only by the weights
    eval_deterministic: bool = False  # evaluate with the plain ODE sampler instead of the noisy rollout sampler
    # stream: rollout and eval noise drawn from one generator per rank, in call order (train.seed; eval_seed for
    # evals), so the episodes depend on how the runner batched the calls. per_episode: each sample's starting and
    # step noise from a seed of (train.seed, iteration, sampling round, task, init state, rollout, chunk); evals from
    # (eval_seed, ...): the same rollouts whatever the worker count, schedule or worker restarts. stream is the
    # default because the learning tests' and docs' figures were measured with it.
    policy_noise: str = "stream"
    checkpoint_every: int = 1  # write the resumable checkpoint every N iterations (0: only at the end)
    save_checkpoints: bool = True  # false: write no checkpoint at all (benchmarks, throwaway runs)
    output_dir: str = "runs/ript"  # metrics.jsonl, TensorBoard events, checkpoint/ and success.png go here
    seed: int = 0  # seeds torch, numpy and the context sampler (each rank adds its rank)
    dist_backend: str = "auto"  # torch.distributed backend under torchrun: auto (nccl on GPUs, else gloo) | gloo | nccl
    progress: bool = True  # tqdm progress bars on the console (rank 0)


def checkpointed_parts(setting: Any) -> tuple[str, ...]:
    """`train.activation_checkpointing` (none | all | a comma list of vision, language, expert) -> the parts; () for
    none, and () for any unknown part too (validation turns that into the one-line error)."""
    value = str(setting).strip().lower()
    if value in ("none", "false", ""):
        return ()
    if value in ("all", "true"):
        return CHECKPOINTABLE_PARTS
    listed = tuple(p.strip() for p in value.split(",") if p.strip())
    return listed if set(listed) <= set(CHECKPOINTABLE_PARTS) else ()
