"""One-parameter averaging families over the newest ``k`` checkpoints (``search/space=ema|window|decay``).

Recent pretraining reports average several checkpoints with weights that fall off with age (EMA in
DeepSeek-V3, PMA, the decay shapes of WSM); a family searches that one shape parameter, so a budget of
a few evaluations covers it densely where the ``k−1``-dimensional simplex cannot. Each family passes
through *newest alone* at one end of its box, so its gain over the newest checkpoint is always measured
on a point it evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from scipy.optimize import brentq

from ckptmerge.merge.soups import ema_weights
from ckptmerge.search.space import SearchSpace
from ckptmerge.search.space_settings import EmaSpaceSettings


class EmaSpace(SearchSpace):
    """θ ← β·θ + (1−β)·θ_t along the checkpoints: weights ``(1−β)·β^age``, the oldest ``β^(k−1)``.

    β=0 is the newest alone; larger β reaches further back.
    """

    Settings = EmaSpaceSettings

    @property
    def coordinates(self) -> tuple[str, ...]:
        return ("beta",)

    def bounds(self) -> list[tuple[float, float]]:
        return [(0.0, float(self.settings.beta_max))]

    def weights(self, u: Sequence[float]) -> list[float]:
        self.check(u)
        return ema_weights(self.k, min(max(float(u[0]), 0.0), 0.999999))

    def landmarks(self) -> list[float]:
        return [0.0, 0.5]


class WindowSpace(SearchSpace):
    """The uniform average of the last ``m`` checkpoints (LAWA), with ``m`` made continuous.

    ``window`` ∈ [1, k]: the newest ``⌊window⌋`` checkpoints get weight 1 each, the next older one the
    fraction ``window − ⌊window⌋``, normalised. Integer values are exactly LAWA with k=m (1: newest
    alone, k: the uniform soup), and the objective moves smoothly between them, which a GP needs.
    """

    # On the seed-7 trajectory the converged stop ended every window search after 5 of 10 evaluations at
    # a pick worse than the full search's by 7.3 paired standard errors on 350 held-out documents, and no
    # margin or patience (up to 4) kept the pick in 5 of 5 runs (docs/benchmarks.md), so by default a
    # window search spends its budget; search.stop=converged still asks for the stop.
    converged_stop: ClassVar[bool] = False

    @property
    def coordinates(self) -> tuple[str, ...]:
        return ("window",)

    def bounds(self) -> list[tuple[float, float]]:
        return [(1.0, float(self.k))]

    def weights(self, u: Sequence[float]) -> list[float]:
        self.check(u)
        m = min(max(float(u[0]), 1.0), float(self.k))
        full = int(m)
        raw = [0.0] * self.k
        for age in range(full):
            raw[self.k - 1 - age] = 1.0
        if full < self.k:
            raw[self.k - 1 - full] = m - full
        total = sum(raw)
        return [w / total for w in raw]

    def landmarks(self) -> list[float]:
        return [float(m) for m in range(1, self.k + 1)]


class DecaySpace(SearchSpace):
    """Weights falling off with age by a power: ``w(age) ∝ (1 − age/k)^s``, searched by the weight the
    newest checkpoint gets.

    The coordinate ``newest_weight`` ∈ [1/k, 1] fixes the power ``s``: 1/k is the uniform soup (s=0),
    2/(k+1) a linear decay (s=1, a WMA as in PMA), and 1 the newest alone (s → ∞). The newest's weight
    rather than a function of ``s`` because a GP's kernel assumes the same smoothness everywhere in
    the box. The earlier coordinate ``s/(1+s)`` squeezed everything from "three quarters on the
    newest" to "the newest alone" into its last fifth, where the objective fell from 87% of the best
    gain to 0% (seed 7): a cliff the GP spent evaluations finding. In the newest's weight, equal steps
    move the merge equally, as λ does for the pair. Measured in benchmarks/sample_efficiency.py
    (docs/search-spaces.md).
    """

    @property
    def coordinates(self) -> tuple[str, ...]:
        return ("newest_weight",)

    def bounds(self) -> list[tuple[float, float]]:
        return [(1.0 / self.k, 1.0)]

    def _newest_first(self, s: float) -> list[float]:
        """Unnormalised weights ``(1 − age/k)^s``, the newest (age 0, weight 1) first."""
        return [(1.0 - age / self.k) ** s for age in range(self.k)]

    def weights(self, u: Sequence[float]) -> list[float]:
        self.check(u)
        w = min(max(float(u[0]), 1.0 / self.k), 1.0)
        if w >= 1.0 - 1e-12:
            return [0.0] * (self.k - 1) + [1.0]
        if w <= 1.0 / self.k + 1e-12:
            return [1.0 / self.k] * self.k
        # the newest's share grows monotonically with s, from 1/k at s=0 towards 1: one root
        s = brentq(lambda p: 1.0 / sum(self._newest_first(p)) - w, 0.0, 1e4, xtol=1e-12)
        newest_first = self._newest_first(s)
        total = sum(newest_first)
        return [x / total for x in reversed(newest_first)]

    def landmarks(self) -> list[float]:
        return [1.0 / self.k, 2.0 / (self.k + 1), 1.0]
