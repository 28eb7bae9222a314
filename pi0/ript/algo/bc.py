"""Scripted demonstrations of the reach task and behaviour cloning of a tiny pi0 on them.

This is how the learning demo gets its starting policy: a real (tiny) `PI0Model` trained with pi0's own flow-matching
loss on demonstrations, stopped early so it succeeds sometimes but not always (~30-50%), which leaves room for RIPT
to show improvement. The demonstrator heads straight for the named target; its path is perturbed with Gaussian
noise (DART-style) so the data also shows how to recover from small errors, while every label is the clean
demonstrator's next `chunk_size` actions from the state actually visited.

    python -m pi0.ript.algo.bc --output checkpoints/reach_bc --steps 75
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


def norm_stats_for(demos: Demonstrations):
    """mean/std of the 8-dim pi0 LIBERO state (eef pos, axis-angle, gripper) and of the 7-dim actions."""
    from pi0.model.normalization import NormStats
    from pi0.ript.policy.libero_adapter import LiberoInputs

    states = np.stack([LiberoInputs()({"observation": o, "prompt": ""})["state"] for o in demos.observations])
    actions = demos.action_chunks.reshape(-1, demos.action_chunks.shape[-1])
    return {
        "state": NormStats(states.mean(0), states.std(0)),
        "actions": NormStats(actions.mean(0), actions.std(0)),
    }


def make_reach_policy(demos: Demonstrations, image_size: int, chunk_size: int, seed: int):
    """A random tiny pi0 sized for the reach task. Reach actions are velocities, so no dims are deltas to the state."""
    from pi0.ript.policy.pi0_policy import make_tiny_policy

    return make_tiny_policy(
        sorted(set(demos.instructions)),
        norm_stats=norm_stats_for(demos),
        seed=seed,
        image_size=image_size,
        chunk_size=chunk_size,
        delta_action_dims=(),
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
    parser = argparse.ArgumentParser(description="behaviour-clone a tiny pi0 on scripted reach demonstrations")
    parser.add_argument("--output", required=True, help="directory for the PI0Policy checkpoint")
    parser.add_argument("--steps", type=int, default=75, help="BC optimizer steps: 75 gives ~30-50%% success, 300 ~100%%")
    parser.add_argument("--image-size", type=int, default=56, help="env and model image size (multiple of 14)")
    parser.add_argument("--chunk-size", type=int, default=10)
    parser.add_argument("--demos-per-task", type=int, default=50, help="init states 0..N-1 of each task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    spec = ReachEnvSpec(image_size=args.image_size)
    demos = collect_demonstrations(spec, range(spec.num_tasks()), range(args.demos_per_task), args.chunk_size, 40, seed=args.seed)
    policy = make_reach_policy(demos, args.image_size, args.chunk_size, args.seed)
    losses = behaviour_clone(policy, demos, args.steps, seed=args.seed)
    log.info("BC on %d samples: loss %.4f -> %.4f", len(demos.observations), losses[0], losses[-1])
    policy.save_pretrained(Path(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
