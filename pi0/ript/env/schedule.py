"""When overlapped policy calls go out: N envs in k groups whose calls alternate, k picked from measured times.

The model (issue 17): each env plays a chunk in S seconds (simulation), then waits for a call; a call for b envs
takes L(b) = a + c*b. With the envs in k groups of N/k, a group simulates while the model serves the others, so one
cycle (every env plays one chunk) takes about

    max(S + L(N/k), k * L(N/k))

the group's own round trip, or the model's time for all k calls, whichever is longer. k = 1 is lock-step: one big
call, during which nothing simulates. More groups hide calls behind simulation but pay the fixed cost a more often.
Which k wins depends on the numbers: lock-step when a dominates and simulation is cheap (a reach task, a big model
with a large fixed cost), a few groups when S is close to L (LIBERO on a GPU box). `GroupSchedule` measures S and
L(b) as the runner goes and picks the k this predicts fastest. Pure logic: no processes, no clock, no torch.
"""

from __future__ import annotations

import math


def predicted_cycle_seconds(groups: int, envs: int, sim_s: float, call_fixed_s: float, call_per_sample_s: float) -> float:
    """Seconds for every env to play one chunk with `envs` envs in `groups` alternating groups."""
    call_s = call_fixed_s + call_per_sample_s * envs / groups
    return max(sim_s + call_s, groups * call_s)


def model_load(groups: int, envs: int, sim_s: float, call_fixed_s: float, call_per_sample_s: float) -> float:
    """Fraction of a cycle the model computes (1.0: the model is the bottleneck)."""
    call_s = call_fixed_s + call_per_sample_s * envs / groups
    return groups * call_s / predicted_cycle_seconds(groups, envs, sim_s, call_fixed_s, call_per_sample_s)


def choose_groups(envs: int, sim_s: float, call_fixed_s: float, call_per_sample_s: float,
                  tolerance: float = 0.03, max_model_load: float = 0.8) -> int:
    """The k in 1..envs with the shortest predicted cycle.

    Among the ks predicted within `tolerance` of the best, the largest one whose model load stays at most
    `max_model_load`: when simulation bounds the cycle, smaller batches make each env wait less for batch-mates
    (the model is idle part of the cycle anyway; on a CPU box fewer envs also simulate at once), while a model busy
    ~100% of a predicted cycle turns every late reply or slow call into lost time for every group."""
    if envs <= 1:
        return 1
    cycles = {k: predicted_cycle_seconds(k, envs, sim_s, call_fixed_s, call_per_sample_s) for k in range(1, envs + 1)}
    best = min(cycles, key=lambda k: (cycles[k], k))
    near = [k for k, cycle in cycles.items() if cycle <= cycles[best] * (1 + tolerance)
            and model_load(k, envs, sim_s, call_fixed_s, call_per_sample_s) <= max_model_load]
    return max(near) if near else best


class CallTimeFit:
    """L(b) = a + c*b fitted to observed calls: a moving average of the call time per batch size, then a least-squares
    line through those (each size weighted by how often it was seen, up to `max_weight`), so one odd call or a
    batch size seen a thousand times does not dominate. a and c are kept >= 0."""

    def __init__(self, smoothing: float = 0.3, max_weight: int = 8):
        self.smoothing = smoothing
        self.max_weight = max_weight
        self.mean_seconds: dict[int, float] = {}
        self.count: dict[int, int] = {}

    def observe(self, batch: int, seconds: float) -> None:
        if batch < 1:
            raise ValueError(f"batch={batch}: a call has at least one observation")
        previous = self.mean_seconds.get(batch)
        self.mean_seconds[batch] = seconds if previous is None else previous + self.smoothing * (seconds - previous)
        self.count[batch] = self.count.get(batch, 0) + 1

    def fit(self) -> tuple[float, float] | None:
        """(a, c) in seconds, or None before two different batch sizes were seen (c cannot be told from a)."""
        if len(self.mean_seconds) < 2:
            return None
        weights = {b: min(self.count[b], self.max_weight) for b in self.mean_seconds}
        total = sum(weights.values())
        mean_b = sum(w * b for b, w in weights.items()) / total
        mean_t = sum(w * self.mean_seconds[b] for b, w in weights.items()) / total
        spread = sum(w * (b - mean_b) ** 2 for b, w in weights.items())
        slope = sum(w * (b - mean_b) * (self.mean_seconds[b] - mean_t) for b, w in weights.items()) / spread
        slope = max(slope, 0.0)
        fixed = mean_t - slope * mean_b
        if fixed < 0:  # a line through the origin instead: calls cost per sample only
            fixed = 0.0
            slope = sum(w * b * self.mean_seconds[b] for b, w in weights.items()) / sum(w * b * b for b, w in weights.items())
        return fixed, slope


class GroupSchedule:
    """What the runner knows about S and L, and the k it picks.

    `fixed_groups` > 0 forces k (runner.inference_groups). Otherwise k = 1 until a chunk's simulation time and a call
    were measured; while only one batch size was seen, the next calls use a batch of a different size (two groups,
    or lock-step if the one size seen was already small) so that a and c can be told apart."""

    def __init__(self, fixed_groups: int = 0, smoothing: float = 0.2, tolerance: float = 0.03):
        self.fixed_groups = fixed_groups
        self.smoothing = smoothing
        self.tolerance = tolerance  # predicted cycles this close count as equal
        self.calls = CallTimeFit()
        self.sim_seconds: float | None = None  # moving average of the time one env takes to play one chunk
        self.last_groups = 1

    def observe_call(self, batch: int, seconds: float) -> None:
        self.calls.observe(batch, seconds)

    def observe_chunk(self, seconds: float) -> None:
        previous = self.sim_seconds
        self.sim_seconds = seconds if previous is None else previous + self.smoothing * (seconds - previous)

    def groups(self, envs: int) -> int:
        """k for `envs` envs in an episode (at least 1, at most envs)."""
        envs = max(envs, 1)
        if self.fixed_groups:
            k = self.fixed_groups
        elif self.sim_seconds is None or not self.calls.mean_seconds:
            k = 1
        else:
            fit = self.calls.fit()
            if fit is None:
                (seen,) = self.calls.mean_seconds
                k = 2 if seen > math.ceil(envs / 2) else 1
            else:
                k = choose_groups(envs, self.sim_seconds, *fit, tolerance=self.tolerance)
                current = min(self.last_groups, envs)
                cycle = lambda g: predicted_cycle_seconds(g, envs, self.sim_seconds, *fit)  # noqa: E731
                if cycle(current) <= cycle(k) * (1 + self.tolerance):
                    k = current  # not worth re-forming the groups: the estimates wobble from call to call
        self.last_groups = min(k, envs)
        return self.last_groups

    def single_call_seconds(self) -> float:
        """L(1): waiting longer than this for a batch-mate costs more than giving it a call of its own."""
        fit = self.calls.fit()
        if fit is not None:
            return fit[0] + fit[1]
        return min(self.calls.mean_seconds.values(), default=0.0)

    def as_dict(self) -> dict:
        fit = self.calls.fit()
        return {
            "groups": self.last_groups,
            "sim_seconds_per_chunk": self.sim_seconds,
            "call_fixed_seconds": None if fit is None else fit[0],
            "call_per_sample_seconds": None if fit is None else fit[1],
        }
