"""Dynamic sampling: keep only contexts whose K rollouts disagree, since a group of all-successes or all-failures has
zero leave-one-out advantage everywhere and carries no gradient. Dropped contexts are replaced by fresh draws, for
at most `max_rounds` rounds, so the loop ends even when every rollout succeeds or every one fails (the reference
implementation loops forever there).

A context is (task_id, init_state_index). Each rank samples from its own shard of the contexts, with its own
generator, so ranks never roll out the same context in one iteration.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

Context = tuple[int, int]  # (task_id, init_state_index)


def has_signal(rewards: torch.Tensor) -> torch.Tensor:
    """[C, K] rewards -> [C] bool: True where the K rewards of a context are not all equal."""
    return (rewards != rewards[:, :1]).any(dim=1)


class ContextSampler:
    """Draws contexts uniformly from this rank's shard, optionally skipping init states that recently had all K
    rollouts succeed (they are solved; rolling them out again is wasted time)."""

    def __init__(self, contexts: Sequence[Context], seed: int, success_memory_size: int = 0):
        if not contexts:
            raise ValueError("no contexts to sample: check task.task_ids and the env's init states")
        self.contexts = list(contexts)
        self.rng = np.random.default_rng(seed)
        self.solved: deque[Context] = deque(maxlen=success_memory_size if success_memory_size > 0 else 0)

    def draw(self, n: int) -> list[Context]:
        """n contexts without repetition when possible; solved ones are skipped unless nothing else is left."""
        solved = set(self.solved)
        pool = [c for c in self.contexts if c not in solved] or self.contexts
        picks = self.rng.choice(len(pool), size=n, replace=n > len(pool))
        return [pool[i] for i in picks]

    def remember_solved(self, context: Context) -> None:
        if self.solved.maxlen:
            if context in self.solved:
                self.solved.remove(context)
            self.solved.append(context)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "solved": [list(c) for c in self.solved]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.solved.clear()
        self.solved.extend(tuple(c) for c in state["solved"])


@dataclass
class SampledGroups:
    """The outcome of one iteration's sampling. `kept` holds (context, rollouts, rewards[K]) for contexts with signal;
    `all_rewards` every group rolled out (for the success rate of the whole iteration)."""

    kept: list[tuple[Context, list[Any], torch.Tensor]] = field(default_factory=list)
    all_rewards: list[torch.Tensor] = field(default_factory=list)
    dropped_all_success: int = 0
    dropped_all_failure: int = 0
    rounds: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_all_success + self.dropped_all_failure


def sample_groups(
    sampler: ContextSampler,
    rollout: Callable[[list[Context]], list[tuple[list[Any], torch.Tensor]]],
    num_contexts: int,
    enabled: bool,
    max_rounds: int,
) -> SampledGroups:
    """Roll out `num_contexts` contexts (K each, via `rollout`, which returns (rollouts, rewards[K]) per context) and,
    if `enabled`, replace contexts without signal for at most `max_rounds` rounds in total. Always ends."""
    if max_rounds < 1:
        raise ValueError(f"algo.max_sampling_rounds={max_rounds}: must be >= 1")
    result = SampledGroups()
    for round_index in range(max_rounds):
        needed = num_contexts - len(result.kept)
        if needed <= 0:
            break
        contexts = sampler.draw(needed)
        result.rounds = round_index + 1
        for context, (rollouts, rewards) in zip(contexts, rollout(contexts)):
            result.all_rewards.append(rewards)
            uniform = not bool(has_signal(rewards[None])[0])
            if uniform and rewards[0] > 0:
                sampler.remember_solved(context)
            if enabled and uniform:
                if rewards[0] > 0:
                    result.dropped_all_success += 1
                else:
                    result.dropped_all_failure += 1
                continue
            result.kept.append((context, rollouts, rewards))
        if not enabled:
            break
    return result
