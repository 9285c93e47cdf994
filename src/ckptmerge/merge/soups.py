"""Weightings of a trajectory's checkpoints (oldest first) for the cheap baselines: pure arithmetic.

* **uniform soup**: the mean of the chosen checkpoints;
* **LAWA** (latest weight averaging): the uniform average of the last ``k`` checkpoints;
* **EMA** along the trajectory: θ ← β·θ + (1−β)·θ_t over the checkpoints in order, which is the linear
  merge with weights ``β^(n-1)`` for the oldest and ``(1−β)·β^(n-1-t)`` for checkpoint ``t > 0``;
* **greedy soup**: checkpoints by dev objective, each added to the uniform soup only if it improves.

Each is registered as a merge method (a weighting rule, ``action=compare`` baseline); ``lawa`` and ``ema``
have settings (``conf/merge/lawa.yaml``, ``conf/merge/ema.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable

from ckptmerge.merge.registry import merge_method
from ckptmerge.merge.settings import EmaSettings, LawaSettings


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


# -- the soups as merge methods: weighting rules over the k compared checkpoints, merged linearly ------


def _onehot(k: int, i: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(k)]


def greedy_weights(k: int, evaluate: Callable[[list[float]], float]) -> list[float]:
    """Greedy soup (Wortsman et al., 2022): checkpoints by their own dev objective, best first, each
    added to the uniform soup only if ``evaluate`` (higher is better) improves."""
    singles = [evaluate(_onehot(k, i)) for i in range(k)]
    order = sorted(range(k), key=lambda i: singles[i], reverse=True)
    soup, best = [order[0]], singles[order[0]]

    def mean_of(members: list[int]) -> list[float]:
        return [1.0 / len(members) if j in members else 0.0 for j in range(k)]

    for i in order[1:]:
        obj = evaluate(mean_of(soup + [i]))
        if obj > best:
            soup, best = soup + [i], obj
    return mean_of(soup)


NEWEST = merge_method(
    "newest",
    weighting=lambda k, s, evaluate: _onehot(k, k - 1),
    baseline=True,
    summary="the newest checkpoint alone: the reference of every gain",
)
UNIFORM = merge_method(
    "uniform", weighting=lambda k, s, evaluate: uniform_weights(k), baseline=True, summary="uniform soup"
)
LAWA = merge_method(
    "lawa",
    weighting=lambda k, s, evaluate: lawa_weights(k, s.k),
    settings=LawaSettings,
    baseline=True,
    summary="latest weight averaging: uniform over the newest k",
)
EMA = merge_method(
    "ema",
    weighting=lambda k, s, evaluate: ema_weights(k, s.beta),
    settings=EmaSettings,
    baseline=True,
    summary="exponential moving average along the checkpoints",
)
GREEDY = merge_method(
    "greedy",
    weighting=lambda k, s, evaluate: greedy_weights(k, evaluate),
    baseline=True,
    summary="greedy soup by dev objective",
)
