"""The policy protocol the runners call: a batch of observations in, a batch of action chunks out.

The runner knows nothing else about a policy. pi0 (`pi0.ript.policy.pi0_policy.PI0Policy`), the small built-in policy
(`pi0.ript.policy.small_policy.SmallPolicy`) and test wrappers all implement it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

ACTION_DIM = 7  # LIBERO's OSC_POSE action: 6 delta pose dims + 1 gripper (-1 open, +1 close); reach uses the same


@dataclass
class PolicyOutput:
    """`actions[b]` is the chunk for sample b, `[B, H, action_dim]` float, ready for the env (unnormalised, absolute).
    `extras[b]` is anything per-sample the training loop needs later (sampling noise, log-probabilities); the runner
    stores it untouched in the episode record."""

    actions: np.ndarray
    extras: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.extras:
            self.extras = [{} for _ in range(len(self.actions))]


@runtime_checkable
class RolloutPolicy(Protocol):
    action_dim: int
    chunk_size: int

    def predict_chunks(
        self, observations: Sequence[dict[str, np.ndarray]], instructions: Sequence[str]
    ) -> PolicyOutput:
        """One chunk per observation. Observations use the keys of `pi0.ript.env.sim.OBS_KEYS`.

        A policy that samples (pi0's flow-matching noise) may also take a keyword `sample_seeds: Sequence[int]`, one
        seed per observation, and draw sample b's noise from seed b alone: the runner then passes the seeds of
        episodes that carry one (`EpisodeRequest.noise_seed`), so an evaluation's episodes do not depend on how the
        runner batched them. Policies without it are called as above."""


def takes_sample_seeds(policy: Any) -> bool:
    """Whether `policy.predict_chunks` accepts the optional `sample_seeds` keyword (the runner asks before every call:
    the answer is read once per function)."""
    method = policy.predict_chunks
    function = getattr(method, "__func__", method)
    try:
        return _accepts_sample_seeds(function)
    except TypeError:  # an unhashable callable object: read it each time
        return _accepts_sample_seeds.__wrapped__(function)


@functools.lru_cache(maxsize=64)
def _accepts_sample_seeds(function: Any) -> bool:
    try:
        return "sample_seeds" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a callable without a signature (a C extension): not assumed
        return False
