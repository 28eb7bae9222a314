"""Scripted demonstrations of the reach task and behaviour cloning of a tiny pi0 on them.

This is how the learning demo gets its starting policy: a real (tiny) `PI0Model` trained with pi0's own flow-matching
loss on demonstrations, stopped early so it succeeds sometimes but not always (~30-50%), which leaves room for RIPT
to show improvement. The demonstrator heads straight for the named target; its path is perturbed with Gaussian
noise (DART-style) so the data also shows how to recover from small errors, while every label is the clean
demonstrator's next `chunk_size` actions from the state actually visited.

    python -m pi0.ript.algo.bc --output checkpoints/reach_bc --steps 75
    python -m pi0.ript.algo.bc --output checkpoints/reach_bc_pi05 --variant pi05

`--variant pi05` clones a tiny pi0.5 instead (`PI0Config.pi05`: adaRMS time conditioning, no state token), with
pi0.5's quantile normalisation (the statistics carry q01/q99 of the demonstrations) and openpi's `pi05_libero`
prompt: the task alone, without the state as text (`discrete_state_input=False`, prompt format "openpi"). The reach
images already show where the end effector is (the agent view draws it; the wrist view is centred on it), and with
the demo's word-level tokenizer the state bins would be 256 untrained words; docs/TRAINING.md gives the measurement.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pi0.ript.env.reach_sim import ReachEnvSpec, scripted_action

log = logging.getLogger("pi0.ript.bc")


@dataclass
class Demonstrations:
    observations: list[dict[str, np.ndarray]]
    instructions: list[str]
    action_chunks: np.ndarray  # [N, H, 7] env actions: the clean demonstrator's next H actions


def collect_demonstrations(
    spec: ReachEnvSpec,
    task_ids: Sequence[int],
    init_states: Sequence[int],
    chunk_size: int,
    max_steps: int,
    noise: float = 0.3,
    seed: int = 0,
) -> Demonstrations:
    """One perturbed demonstration per (task, init state); a sample at every step until success or `max_steps`."""
    rng = np.random.default_rng(seed)
    env = spec.make()
    observations, instructions, chunks = [], [], []
    for task_id in task_ids:
        for init_state in init_states:
            reset = env.reset(task_id, init_state)
            observation = reset.observation
            for _ in range(max_steps):
                observations.append(observation)
                instructions.append(reset.instruction)
                chunks.append(env.expert_chunk(chunk_size))
                result = env.step(scripted_action(env, rng, noise), want_observation=True)
                observation = result.observation
                if result.success:
                    break
    return Demonstrations(observations, instructions, np.stack(chunks))


VARIANTS = ("pi0", "pi05")
# BC steps that leave each variant's reach success intermediate (docs/TRAINING.md): the tiny pi0.5, without the state
# token, needs more steps to the same level (0.03 at 75 steps, 0.19 at 200, 0.38 at 300).
BC_STEPS = {"pi0": 75, "pi05": 300}
# The tiny pi0.5's prompt: openpi's pi05_libero format (task only), see the module docstring.
PI05_PROMPT_FORMAT = "openpi"
# Prompt token budget of the tiny pi0.5: pi0's 48, not pi0.5's 200. The reach prompts are 9 tokens; 200 slots
# would be padding that every prefix pass still pays for.
PI05_MAX_TOKEN_LEN = 48


def norm_stats_for(demos: Demonstrations):
    """mean/std and q01/q99 of the 8-dim pi0 LIBERO state (eef pos, axis-angle, gripper) and of the 7-dim actions:
    pi0 normalises with mean/std, pi0.5 with the quantiles."""
    from pi0.model.normalization import NormStats
    from pi0.ript.policy.libero_adapter import LiberoInputs

    def stats(x: np.ndarray) -> NormStats:
        return NormStats(x.mean(0), x.std(0), np.quantile(x, 0.01, axis=0), np.quantile(x, 0.99, axis=0))

    states = np.stack([LiberoInputs()({"observation": o, "prompt": ""})["state"] for o in demos.observations])
    actions = demos.action_chunks.reshape(-1, demos.action_chunks.shape[-1])
    return {"state": stats(states), "actions": stats(actions)}


def make_reach_policy(demos: Demonstrations, image_size: int, chunk_size: int, seed: int, variant: str = "pi0"):
    """A random tiny pi0 (or pi0.5: `variant="pi05"`) sized for the reach task. Reach actions are velocities, so no
    dims are deltas to the state."""
    from pi0.model.lerobot_layout import PROMPT_FORMAT_KEY
    from pi0.ript.policy.pi0_policy import make_tiny_policy

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is unknown: use one of {', '.join(VARIANTS)}")
    pi05 = {}
    if variant == "pi05":  # quantile normalisation stays pi0.5's default (PI05_DEFAULTS)
        pi05 = {"pi05": True, "max_token_len": PI05_MAX_TOKEN_LEN, "extra": {PROMPT_FORMAT_KEY: PI05_PROMPT_FORMAT}}
    return make_tiny_policy(
        sorted(set(demos.instructions)),
        norm_stats=norm_stats_for(demos),
        seed=seed,
        image_size=image_size,
        chunk_size=chunk_size,
        delta_action_dims=(),
        **pi05,
    )


def behaviour_clone(
    policy, demos: Demonstrations, steps: int, batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0
) -> list[float]:
    """`steps` AdamW steps of pi0's flow-matching loss on random demonstration batches. Returns the loss curve."""
    generator = torch.Generator().manual_seed(seed)
    model = policy.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    env_dim = demos.action_chunks.shape[-1]
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(demos.observations), (batch_size,), generator=generator).tolist()
        inputs = policy.prepare_batch([demos.observations[i] for i in idx], [demos.instructions[i] for i in idx])
        targets = policy.normalize_actions(demos.action_chunks[idx], inputs.raw_state)
        noise = model.sample_noise(batch_size, generator)
        time = model.sample_time(batch_size, generator)
        per_element = policy.flow_matching_loss(inputs, targets, noise=noise, time=time)
        loss = per_element[..., :env_dim].mean()  # padded action dims carry nothing
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="behaviour-clone a tiny pi0 or pi0.5 on scripted reach demonstrations")
    parser.add_argument("--output", required=True, help="directory for the PI0Policy checkpoint")
    parser.add_argument("--steps", type=int, default=None,
                        help="BC optimizer steps; default: 75 for pi0 (~44%% success; 300 ~100%%), 300 for pi05 (~38%%)")
    parser.add_argument("--image-size", type=int, default=56, help="env and model image size (multiple of 14)")
    parser.add_argument("--chunk-size", type=int, default=10)
    parser.add_argument("--demos-per-task", type=int, default=50, help="init states 0..N-1 of each task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, default="pi0", help="pi0, or pi05 for a tiny pi0.5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    spec = ReachEnvSpec(image_size=args.image_size)
    demos = collect_demonstrations(spec, range(spec.num_tasks()), range(args.demos_per_task), args.chunk_size, 40, seed=args.seed)
    policy = make_reach_policy(demos, args.image_size, args.chunk_size, args.seed, args.variant)
    steps = BC_STEPS[args.variant] if args.steps is None else args.steps
    losses = behaviour_clone(policy, demos, steps, seed=args.seed)
    log.info("BC of a tiny %s on %d samples: loss %.4f -> %.4f", args.variant, len(demos.observations), losses[0], losses[-1])
    policy.save_pretrained(Path(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
