"""Search spaces: a point ``u`` of a small box, mapped to merge weights over the newest ``k`` checkpoints.

Each space is a registered class (config group ``search/space``, one YAML per space) with its own
coordinates, which every trial logs next to the resulting ``weight.<checkpoint>``:

* ``pair`` — the paper's λ ∈ [α, 1], the weight of the newest of two checkpoints (the default);
* ``simplex`` — any weighting of ``k`` checkpoints, by stick-breaking (``u1 … u{k-1}``);
* ``ema``, ``window``, ``decay`` — one-parameter averaging families (:mod:`ckptmerge.search.families`).

Weights are always oldest first, non-negative and sum to 1.

**Initial points.** The pair starts as in the paper, at λ=α and λ=1 (``bo`` adds their midpoint:
:meth:`~ckptmerge.search.searchers.BayesSearcher._gap_midpoint`). Every other space is
*warm-started*: it begins with the weightings the cheap baselines use (newest alone, uniform, LAWA,
EMA), each expressed as the nearest point of the space, newest first; so at equal budget a search never
ends below a baseline its space can express, and the GP starts from informative points, not corners.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ckptmerge.errors import ConfigError
from ckptmerge.search import SPACES
from ckptmerge.search.space_settings import NoSettings, make_space_settings

Point = tuple[float, ...]

# Weights closer than this (max-abs) to a baseline's count as expressing it exactly.
EXACT = 1e-9


class SearchSpace:
    """Base of every space: ``k`` checkpoints (oldest first), a box of ``dims`` coordinates, a map to weights.

    Subclasses set ``coordinates`` (the names trials log) and implement :meth:`bounds` and
    :meth:`weights`; ``Settings`` (a frozen dataclass with defaults) holds what their YAML may set
    beyond ``name`` and ``last``. :meth:`point_of` (the nearest point to a weighting) has a generic
    form for one coordinate; the simplex overrides it with its exact inverse.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    # what ``search.stop=auto`` does in this space: the converged stop, unless measurements showed it
    # ending searches of this space before their pick (then the whole budget)
    converged_stop: ClassVar[bool] = True

    def __init__(self, k: int, alpha: float = 0.0, settings: Any = None) -> None:
        if k < 2:
            raise ConfigError(f"search space {self.name} needs at least 2 checkpoints, got {k}")
        self.k = int(k)
        self.alpha = float(alpha)
        self.settings = settings if settings is not None else self.Settings()

    # -- what a subclass defines ---------------------------------------------------------------
    @property
    def coordinates(self) -> tuple[str, ...]:
        raise NotImplementedError

    def bounds(self) -> list[tuple[float, float]]:
        raise NotImplementedError

    def weights(self, u: Sequence[float]) -> list[float]:
        """Weights for the ``k`` checkpoints, oldest first, from a point of the box."""
        raise NotImplementedError

    def landmarks(self) -> list[float]:
        """Coordinate values where the family passes through a named weighting exactly (1-D spaces)."""
        return []

    # -- shared ----------------------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return len(self.coordinates)

    @property
    def is_pair(self) -> bool:
        """The paper's λ over two checkpoints (one coordinate that *is* the newest checkpoint's weight)."""
        return False

    def check(self, u: Sequence[float]) -> None:
        if len(u) != self.dims:
            raise ValueError(f"point has {len(u)} coordinates, space {self.name} has {self.dims}")

    def initial(self) -> list[Point]:
        """Points evaluated before any model proposes (when no warm start is given)."""
        return [tuple(hi for _, hi in self.bounds()), tuple(lo for lo, _ in self.bounds())]

    def point_of(self, weights: Sequence[float]) -> tuple[Point, float]:
        """The point whose weights are nearest (max-abs) to ``weights``, and that distance.

        Generic for one coordinate: a dense grid plus the family's landmarks, then a bounded scalar
        refinement around the best grid point.
        """
        if self.dims != 1:
            raise NotImplementedError(f"space {self.name} has no point_of for {self.dims} coordinates")
        from scipy.optimize import minimize_scalar

        target = np.asarray(weights, dtype=float)
        ((lo, hi),) = self.bounds()
        dist = lambda x: float(np.max(np.abs(np.asarray(self.weights([x])) - target)))  # noqa: E731
        grid = np.unique(np.concatenate([np.linspace(lo, hi, 401), [v for v in self.landmarks() if lo <= v <= hi]]))
        d = np.array([dist(x) for x in grid])
        i = int(np.argmin(d))
        best, best_d = float(grid[i]), float(d[i])
        if best_d > EXACT:
            a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
            res = minimize_scalar(dist, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
            if res.success and float(res.fun) < best_d:
                best, best_d = float(res.x), float(res.fun)
        return (best,), best_d

    def warm_start(self, baselines: Mapping[str, Sequence[float]], min_distance: float) -> list[tuple[Point, str]]:
        """The baselines' weightings this space expresses exactly, as points, in the order given, without
        near-duplicates; each labelled ``warm:<baseline>``.

        A baseline the space can only come close to (uniform weights in the EMA family) is left to the
        model: its nearest point is not that baseline, so evaluating it guarantees nothing, and in a
        one-coordinate family it costs an evaluation the GP spends better (measured in
        benchmarks/sample_efficiency.py). The first baseline (the newest alone, the reference of every
        gain) is always evaluated, marked ``~`` if the space only comes close to it.
        """
        out: list[tuple[Point, str]] = []
        for i, (label, w) in enumerate(baselines.items()):
            if len(w) != self.k:
                raise ValueError(f"baseline {label} has {len(w)} weights for {self.k} checkpoints")
            point, d = self.point_of(w)
            if d > EXACT and i > 0:
                continue
            if all(max(abs(a - b) for a, b in zip(point, p)) >= min_distance for p, _ in out):
                out.append((point, f"warm:{label}" + ("" if d <= EXACT else "~")))
        return out

    def describe(self, u: Sequence[float]) -> str:
        return ", ".join(f"{n}={v:.4g}" for n, v in zip(self.coordinates, u))


class PairSpace(SearchSpace):
    """λ ∈ [α, 1], the weight of the newer of two checkpoints: λ·Θ_t + (1−λ)·Θ_{t−1} (the paper)."""

    def __init__(self, k: int = 2, alpha: float = 0.0, settings: Any = None) -> None:
        super().__init__(k, alpha, settings)
        if self.k != 2:
            raise ConfigError(
                f"search/space=pair merges 2 checkpoints, {self.k} are given: give two, or use "
                f"search/space=simplex (or ema, window, decay) for more"
            )

    @property
    def coordinates(self) -> tuple[str, ...]:
        return ("lambda",)

    @property
    def is_pair(self) -> bool:
        return True

    def bounds(self) -> list[tuple[float, float]]:
        return [(self.alpha, 1.0)]

    def weights(self, u: Sequence[float]) -> list[float]:
        self.check(u)
        lam = float(u[0])
        return [1.0 - lam, lam]

    def initial(self) -> list[Point]:
        """λ=α, then λ=1 (the newest alone): the paper's two initial points."""
        return [(self.alpha,), (1.0,)]

    def point_of(self, weights: Sequence[float]) -> tuple[Point, float]:
        lam = min(max(float(weights[-1]), self.alpha), 1.0)
        return (lam,), float(np.max(np.abs(np.asarray(self.weights([lam])) - np.asarray(weights, dtype=float))))


class SimplexSpace(SearchSpace):
    """Any weighting of ``k`` checkpoints, by stick-breaking from the newest backwards.

        w_newest = u₁ ∈ [α, 1],  w_{k-1} = (1 − u₁)·u₂,  …,  w_oldest = (1 − u₁)···(1 − u_{k−1})

    Every weighting with ``w_newest ≥ α`` has a point; the most important weight is the first
    coordinate. For k=2 the one coordinate is λ.
    """

    @property
    def coordinates(self) -> tuple[str, ...]:
        return ("lambda",) if self.k == 2 else tuple(f"u{i + 1}" for i in range(self.k - 1))

    @property
    def is_pair(self) -> bool:
        return self.k == 2  # then u₁ is λ, and the space is the paper's

    def bounds(self) -> list[tuple[float, float]]:
        return [(self.alpha, 1.0)] + [(0.0, 1.0)] * (self.k - 2)

    def weights(self, u: Sequence[float]) -> list[float]:
        self.check(u)
        newest_first, rest = [], 1.0
        for x in u:
            newest_first.append(rest * float(x))
            rest *= 1.0 - float(x)
        newest_first.append(rest)
        return list(reversed(newest_first))

    def initial(self) -> list[Point]:
        """``u₁ = α`` with the rest shared equally by the older checkpoints, then the newest alone."""
        shared = tuple([self.alpha] + [1.0 / (self.k - j) for j in range(1, self.k - 1)])
        alone = tuple([1.0] + [0.5] * (self.k - 2))
        return [shared, alone]

    def point_of(self, weights: Sequence[float]) -> tuple[Point, float]:
        """The exact inverse of stick-breaking (a coordinate with nothing left to break is 0.5)."""
        newest_first = [float(w) for w in reversed(list(weights))]
        u, rest = [], 1.0
        for i, w in enumerate(newest_first[:-1]):
            x = w / rest if rest > 1e-15 else 0.5
            lo = self.alpha if i == 0 else 0.0
            x = min(max(x, lo), 1.0)
            u.append(x)
            rest *= 1.0 - x
        point = tuple(u)
        return point, float(np.max(np.abs(np.asarray(self.weights(point)) - np.asarray(weights, dtype=float))))


def space_settings(cls: type[SearchSpace], options: Mapping[str, Any], prefix: str = "search.space") -> Any:
    """The space's settings dataclass from its YAML's extra keys; unknown keys and bad values name the key."""
    return make_space_settings(cls.Settings, cls.name, options, prefix)


def make_space(name: str, k: int, alpha: float = 0.0, options: Mapping[str, Any] | None = None) -> SearchSpace:
    """The space ``name`` over ``k`` checkpoints (its module is imported on first use, by the registry)."""
    cls = SPACES.get(name)
    return cls(k, alpha, space_settings(cls, options or {}))


# Kept for code and tests written before spaces were a config group: the stick-breaking space.
WeightSpace = SimplexSpace
