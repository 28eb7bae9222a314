"""A success rate's Wilson score 95% interval: what the eval tables, results.json and the training curve show
next to every rate measured on a finite number of episodes."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def success_interval(successes: int, episodes: int) -> list[float] | None:
    """The Wilson score 95% interval [low, high] of a success rate (None without episodes).

    How far a rate measured on few episodes may be from the policy's true rate: 45/50 is 90% but anything in
    [78.6%, 95.7%] fits it: two evals 3 points apart on 50 episodes cannot be told apart. Wilson's interval rather
    than the normal approximation's p +- z sqrt(p(1-p)/n), which collapses to a single point at 0/n and n/n.
    A few lines of arithmetic, so no statistics package is added for it."""
    if episodes <= 0:
        return None
    p, n, z2 = successes / episodes, episodes, Z_95 * Z_95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, where rounding would miss
    high = 1.0 if successes == episodes else min(1.0, centre + half)
    return [low, high]
