"""Searchers over the merging weight λ ∈ [α, 1], registered by name.

All searchers evaluate λ=α and λ=1 first (as in the paper) and never propose a λ within
``min_distance`` of one already evaluated. ``bo`` is scikit-optimize's Gaussian process with
``acq_func="gp_hedge"`` (a hedge over EI, LCB and PI); ``grid`` and ``random`` exist for comparison.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ckptmerge.config import SearchConfig, did_you_mean
from ckptmerge.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proposal:
    """A λ to evaluate and what proposed it (``initial``, ``grid``, ``random``, ``EI``/``LCB``/``PI``, ``gap``)."""

    lam: float
    source: str


@dataclass
class Posterior:
    """The GP posterior over a grid of λ, in objective units (higher is better)."""

    grid: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    acquisitions: dict[str, np.ndarray] = field(default_factory=dict)


class Searcher:
    """Base: the shared bookkeeping of evaluated points and the no-duplicate rule."""

    name = "base"

    def __init__(self, cfg: SearchConfig) -> None:
        self.alpha = float(cfg.alpha)
        self.budget = int(cfg.budget)
        self.min_distance = float(cfg.min_distance)
        self.seed = int(cfg.seed)
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.failed: list[float] = []  # λ whose evaluation failed: never proposed again, never told to a model
        self._initial = [self.alpha, 1.0]

    def is_new(self, lam: float) -> bool:
        return all(abs(lam - x) >= self.min_distance for x in self.xs + self.failed)

    def mark_failed(self, lam: float) -> None:
        """A trial at ``lam`` produced no objective: remember it so it is not proposed again."""
        self.failed.append(float(lam))

    def _initial_proposal(self) -> Proposal | None:
        while self._initial:
            lam = self._initial.pop(0)
            if self.is_new(lam):
                return Proposal(lam, "initial")
        return None

    def largest_gap(self) -> float:
        """Midpoint of the widest unexplored interval of [α, 1]: the fallback when a proposal repeats."""
        pts = sorted(set(self.xs) | set(self.failed) | {self.alpha, 1.0})
        gaps = [(b - a, (a + b) / 2) for a, b in zip(pts, pts[1:])]
        width, mid = max(gaps) if gaps else (1.0 - self.alpha, (1.0 + self.alpha) / 2)
        return float(mid)

    def ask(self) -> Proposal:
        return self._initial_proposal() or self._next()

    def _next(self) -> Proposal:
        raise NotImplementedError

    def tell(self, lam: float, objective: float) -> None:
        """Record an evaluation (objective oriented so that higher is better)."""
        self.xs.append(float(lam))
        self.ys.append(float(objective))

    def state(self) -> dict[str, Any]:
        """Model state after the last ``tell`` (empty for model-free searchers)."""
        return {}

    def posterior(self, n: int = 200) -> Posterior | None:
        return None


class GridSearcher(Searcher):
    """``budget`` evenly spaced λ over [α, 1], ends first."""

    name = "grid"

    def __init__(self, cfg: SearchConfig) -> None:
        super().__init__(cfg)
        grid = np.linspace(self.alpha, 1.0, self.budget)
        self._queue = [float(x) for x in grid[1:-1]]

    def _next(self) -> Proposal:
        while self._queue:
            lam = self._queue.pop(0)
            if self.is_new(lam):
                return Proposal(lam, "grid")
        return Proposal(self.largest_gap(), "gap")


class RandomSearcher(Searcher):
    """Uniform random λ (seeded), ends first."""

    name = "random"

    def __init__(self, cfg: SearchConfig) -> None:
        super().__init__(cfg)
        self._rng = np.random.default_rng(self.seed)

    def _next(self) -> Proposal:
        for _ in range(1000):
            lam = float(self._rng.uniform(self.alpha, 1.0))
            if self.is_new(lam):
                return Proposal(lam, "random")
        return Proposal(self.largest_gap(), "gap")


class BayesSearcher(Searcher):
    """scikit-optimize ``Optimizer`` (GP base estimator, ``gp_hedge`` acquisition) on [α, 1]."""

    name = "bo"

    def __init__(self, cfg: SearchConfig) -> None:
        super().__init__(cfg)
        from skopt import Optimizer
        from skopt.space import Real

        self.acq_func = cfg.acq_func
        # The two initial points are told by hand (λ=α, λ=1), so the GP takes over from the third trial.
        self.opt = Optimizer(
            dimensions=[Real(self.alpha, 1.0, name="lambda")],
            base_estimator="GP",
            acq_func=cfg.acq_func,
            n_initial_points=2,
            random_state=self.seed,
        )

    def tell(self, lam: float, objective: float) -> None:
        super().tell(lam, objective)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's convergence chatter on 2-3 points
            self.opt.tell([float(lam)], -float(objective))  # skopt minimises

    def _candidates(self) -> list[Proposal]:
        """The hedge's chosen point first, then the other acquisitions' proposals."""
        opt = self.opt
        chosen = float(opt._next_x[0]) if hasattr(opt, "_next_x") else None
        names = list(getattr(opt, "cand_acq_funcs_", [self.acq_func]))
        props = []
        for name, x in zip(names, getattr(opt, "next_xs_", [])):
            lam = float(opt.space.inverse_transform(np.asarray(x).reshape(1, -1))[0][0])
            props.append(Proposal(lam, name))
        if chosen is not None:
            first = next((p for p in props if abs(p.lam - chosen) < 1e-12), Proposal(chosen, self.acq_func))
            props = [first] + [p for p in props if p is not first]
        return props

    def _next(self) -> Proposal:
        if not self.opt.models:
            return Proposal(self.largest_gap(), "gap")
        for p in self._candidates():
            lam = min(max(p.lam, self.alpha), 1.0)
            if self.is_new(lam):
                return Proposal(lam, p.source)
        log.info("Every acquisition proposed an evaluated λ; exploring the widest gap instead")
        return Proposal(self.largest_gap(), "gap")

    def chosen_acquisition(self) -> str | None:
        """Which acquisition the hedge picked for the next point (after the last tell)."""
        c = self._candidates() if self.opt.models else []
        return c[0].source if c else None

    def state(self) -> dict[str, Any]:
        if not self.opt.models:
            return {}
        gp = self.opt.models[-1]
        out: dict[str, Any] = {}
        for k, v in gp.kernel_.get_params().items():
            if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and "bounds" not in k:
                out[f"gp.kernel.{k}"] = float(v)
        out["gp.log_marginal_likelihood"] = float(gp.log_marginal_likelihood_value_)
        lam = self.xs[-1]
        mean, std = gp.predict(self.opt.space.transform([[lam]]), return_std=True)
        out["gp.mean_at_lambda"] = float(-mean[0])
        out["gp.std_at_lambda"] = float(std[0])
        gains = getattr(self.opt, "gains_", None)
        if gains is not None:
            for name, g in zip(self.opt.cand_acq_funcs_, gains):
                out[f"gp.hedge_gain.{name}"] = float(g)
        nxt = self.chosen_acquisition()
        if nxt:
            out["gp.next_acquisition"] = nxt
        return out

    def posterior(self, n: int = 200) -> Posterior | None:
        if not self.opt.models:
            return None
        from skopt.acquisition import _gaussian_acquisition

        gp = self.opt.models[-1]
        grid = np.linspace(self.alpha, 1.0, n)
        X = self.opt.space.transform(grid.reshape(-1, 1))
        mean, std = gp.predict(X, return_std=True)
        acqs = {}
        y_opt = float(np.min(self.opt.yi))
        for name in getattr(self.opt, "cand_acq_funcs_", [self.acq_func]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # skopt returns acquisitions negated for minimisation; flip so larger means "more wanted".
                acqs[name] = -np.asarray(_gaussian_acquisition(X=X, model=gp, y_opt=y_opt, acq_func=name), dtype=float)
        return Posterior(grid=grid, mean=-mean, std=std, acquisitions=acqs)


SEARCHERS: dict[str, Callable[[SearchConfig], Searcher]] = {
    "bo": BayesSearcher,
    "grid": GridSearcher,
    "random": RandomSearcher,
}


def make_searcher(cfg: SearchConfig) -> Searcher:
    """The searcher ``cfg.kind`` names."""
    try:
        return SEARCHERS[cfg.kind](cfg)
    except KeyError:
        raise ConfigError(f"search.kind={cfg.kind!r} is not a known searcher{did_you_mean(cfg.kind, SEARCHERS)}") from None
