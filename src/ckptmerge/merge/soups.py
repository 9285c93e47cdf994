"""Weightings of a trajectory's checkpoints (oldest first) for the cheap baselines: pure arithmetic.

* **uniform soup**: the mean of the chosen checkpoints;
* **LAWA** (latest weight averaging): the uniform average of the last ``k`` checkpoints;
* **EMA** along the trajectory: θ ← β·θ + (1−β)·θ_t over the checkpoints in order, which is the linear
  merge with weights ``β^(n-1)`` for the oldest and ``(1−β)·β^(n-1-t)`` for checkpoint ``t > 0``.
"""

from __future__ import annotations


def uniform_weights(n: int) -> list[float]:
    if n < 1:
        raise ValueError("need at least one checkpoint")
    return [1.0 / n] * n


def lawa_weights(n: int, k: int) -> list[float]:
    """Uniform over the last ``k`` of ``n`` checkpoints (all of them when ``k >= n``)."""
    if k < 1:
        raise ValueError("LAWA needs k >= 1")
    k = min(k, n)
    return [0.0] * (n - k) + [1.0 / k] * k


def ema_weights(n: int, beta: float) -> list[float]:
    """Weights of an exponential moving average run over ``n`` checkpoints in order."""
    if not 0.0 <= beta < 1.0:
        raise ValueError("EMA needs 0 <= beta < 1")
    if n == 1:
        return [1.0]
    w = [beta ** (n - 1)] + [(1.0 - beta) * beta ** (n - 1 - t) for t in range(1, n)]
    s = sum(w)
    return [x / s for x in w]  # sums to 1 already; this only removes rounding


def baseline_weightings(n: int, lawa_k: int, ema_beta: float) -> dict[str, list[float]]:
    """The cheap baselines' weightings of ``n`` checkpoints, newest alone first (the reference of every
    gain): what a warm-started search evaluates before its model proposes anything."""
    return {
        "newest": [0.0] * (n - 1) + [1.0],
        "uniform": uniform_weights(n),
        "lawa": lawa_weights(n, lawa_k),
        "ema": ema_weights(n, ema_beta),
    }
