"""Policies used only by `pi0-ript bench`.

`LatencyPolicy` stands in for a large model on a GPU: it runs a real policy (so the runner gets real, deterministic
chunks) and then sleeps until the call has taken L(b) = fixed_s + per_sample_s * b for a batch of b. Sleeping costs
no CPU, exactly like waiting on a GPU, so the simulation workers keep the CPU cores while "the model computes": this
is what makes overlapping inference with simulation worth anything on a CPU-only machine, and what the bench
measures. pi0 on an H200 in bf16 fits a = 140 ms, c = 8 ms per sample over batches 1-16 (issue 17).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from pi0.ript.policy.protocol import PolicyOutput


class LatencyPolicy:
    def __init__(self, policy, latency_s: float, per_sample_s: float = 0.0):
        if latency_s < 0 or per_sample_s < 0:
            raise ValueError(f"latency_s={latency_s}, per_sample_s={per_sample_s}: must be >= 0")
        self.policy = policy
        self.latency_s = float(latency_s)
        self.per_sample_s = float(per_sample_s)
        self.action_dim = policy.action_dim
        self.chunk_size = policy.chunk_size

    def call_seconds(self, batch: int) -> float:
        """The modelled duration of one call for `batch` observations."""
        return self.latency_s + self.per_sample_s * batch

    def predict_chunks(self, observations: Sequence[dict[str, np.ndarray]], instructions: Sequence[str]) -> PolicyOutput:
        started = time.perf_counter()
        output = self.policy.predict_chunks(observations, instructions)
        # Sleep the rest of the modelled time: one call costs max(L(b), real compute).
        remaining = self.call_seconds(len(observations)) - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        return output
