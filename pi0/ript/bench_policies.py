"""Policies used only by `pi0-ript bench`.

`LatencyPolicy` stands in for a large model on a GPU: it runs a real policy (so the runner gets real, deterministic
chunks) and then sleeps `latency_s` per batch. Sleeping costs no CPU, exactly like waiting on a GPU, so the simulation
workers keep the CPU cores while "the model computes": this is what makes overlapping inference with simulation
worth anything on a CPU-only machine, and what the bench measures.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from pi0.ript.policy.protocol import PolicyOutput


class LatencyPolicy:
    def __init__(self, policy, latency_s: float):
        self.policy = policy
        self.latency_s = float(latency_s)
        self.action_dim = policy.action_dim
        self.chunk_size = policy.chunk_size

    def predict_chunks(self, observations: Sequence[dict[str, np.ndarray]], instructions: Sequence[str]) -> PolicyOutput:
        started = time.perf_counter()
        output = self.policy.predict_chunks(observations, instructions)
        # Sleep the rest of the latency budget: one call costs max(latency, real compute), batch size independent,
        # as a GPU forward pass of a small batch roughly does.
        remaining = self.latency_s - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        return output
