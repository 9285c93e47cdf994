"""Searchers over merge weights, registered by name (``search.kind``).

A searcher proposes points ``u`` of a :class:`~ckptmerge.search.space.SearchSpace` box; for a pair the
one coordinate is λ ∈ [α, 1], the weight of the newest checkpoint. All searchers evaluate the initial
points first (λ=α and λ=1 for a pair, as in the paper; a warm start's baselines for other spaces; ``bo``
adds the midpoint of a one-coordinate box's widest unseen gap) and
never propose a point within ``min_distance`` (max-norm) of one already evaluated or failed.
``bo`` is scikit-optimize's Gaussian
process with ``acq_func="gp_hedge"`` (a hedge over EI, LCB and PI); ``grid`` and ``random`` exist for
comparison.

**Trials in flight** (parallel trials): ``ask(pending)`` proposes a point given the evaluated points and
the ``pending`` ones, whose results are not known yet. Pending points are excluded like evaluated ones
(``min_distance``; for ``bo`` also its ``EXCLUSION``). The initial design hands out its next point;
``grid`` and ``random`` hand out their next points, skipping pending ones. ``bo`` proposes from a
*fantasy*: a copy of itself told a lie at each pending point (``BayesSearcher.LIAR``: by default the
kriging believer, the GP's own posterior mean there; skopt's constant liars are the alternatives), so
its GP sees them as explored and looks elsewhere; the lies
never reach the searcher itself (GP, hedge gains, ``xs``/``ys``/``ses``, the stop rule's streak, the random
generators). Results may be told in any order. With ``pending=()`` every searcher does what it did
before parallel trials, bit for bit.

The convergence stop (``check_convergence``) is decided on the evaluated points only, once before each
proposal as in a serial search. When it says stop while trials are in flight, the trial loop proposes
nothing more, waits for the pending trials (they are paid for, and one of them may be the best), tells
them, and selects from every evaluated point.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckptmerge.config import SearchConfig
from ckptmerge.errors import ConfigError
from ckptmerge.search import SEARCHERS  # noqa: F401  - re-exported: plugins register here
from ckptmerge.search.space import PairSpace, SearchSpace

log = logging.getLogger(__name__)

Point = tuple[float, ...]


class SearchExhausted(ConfigError):
    """No point of the box is far enough from every evaluated one: the search ends with what it has."""


@dataclass(frozen=True)
class Proposal:
    """A point to evaluate and what proposed it (``initial``, ``warm:<baseline>``, ``grid``, ``random``,
    ``EI``/``LCB``/``PI``, ``gap``)."""

    x: Point
    source: str

    @property
    def lam(self) -> float:
        """For a pair, λ: the weight of the newest checkpoint."""
        return self.x[0]


@dataclass(frozen=True)
class Convergence:
    """The stop rule's check before a proposal (``search.stop=converged``, :meth:`Searcher.check_convergence`).

    ``criterion``: the largest expected improvement over the incumbent of any unevaluated point of the
    box, in the incumbent's paired standard errors; ``streak``: how many checks in a row it was below
    ``search.stop_margin``; ``converged``: the streak reached ``search.patience``. A check with nothing told
    since the last check that counted (parallel trials filling several free workers in a row) leaves the
    streak as it was; so does one after raced-out trials only (``eval.race``) until a point the model
    proposed (not an initial one) has been scored in full.
    """

    criterion: float
    streak: int
    converged: bool


@dataclass
class Posterior:
    """The GP posterior over a grid of λ (pairs only), in objective units (higher is better)."""

    grid: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    acquisitions: dict[str, np.ndarray] = field(default_factory=dict)


class Searcher:
    """Base: the shared bookkeeping of evaluated points and the no-duplicate rule."""

    name = "base"

    def __init__(
        self, cfg: SearchConfig, space: SearchSpace | None = None, initial: list[Proposal] | None = None
    ) -> None:
        self.space = space or PairSpace(2, float(cfg.alpha))
        self.alpha = float(cfg.alpha)
        self.bounds = self.space.bounds()
        self.budget = int(cfg.budget)
        self.min_distance = float(cfg.min_distance)
        self.seed = int(cfg.seed)
        self.xs: list[Point] = []
        self.ys: list[float] = []
        self.failed: list[Point] = []  # points whose evaluation failed: never proposed again, never told to a model
        self.ses: list[float | None] = []  # standard error of each ys (None: unknown)
        # indices of ys that may not be the result (a raced-out trial's estimate, eval.race): told to the
        # model like any observation, never returned by select nor taken as the incumbent
        self.ineligible: set[int] = set()
        # the points evaluated before any model proposes: the space's own, or a warm start's
        self._initial = list(initial) if initial else [Proposal(x, "initial") for x in self.space.initial()]
        self._rng = np.random.default_rng(self.seed)
        stop = str(getattr(cfg, "stop", "budget"))
        # the rule that applies: search.stop=auto is the converged stop where the space keeps its pick with it
        self.stop = stop if stop != "auto" else ("converged" if self.space.converged_stop else "budget")
        if stop == "auto" and self.stop == "budget" and cfg.kind == "bo":
            log.info(
                "search.stop=auto: a %s search spends its whole budget (its converged stop was measured to lose "
                "the pick; search.stop=converged asks for it anyway)",
                self.space.name or type(self.space).__name__,
            )
        self.stop_margin = float(getattr(cfg, "stop_margin", 0.0))
        self.patience = int(getattr(cfg, "patience", 1))
        self._streak = 0  # consecutive convergence checks below the margin
        # whether a fully scored (eligible) observation was told since the last check that counted: a check
        # after raced-out trials only is no evidence for the stop until a model proposal has been scored in
        # full (check_convergence)
        self._evidence = False
        self._raced_since = False  # a raced-out (ineligible) observation was told since the last counted check
        self._initial_given: list[Point] = []  # the initial points handed out by ask
        self._proposal_scored = False  # a point the model proposed (not an initial one) was scored in full
        self._pending: list[Point] = []  # points in flight during one ask(pending): excluded like evaluated ones

    def _seen(self) -> list[Point]:
        """Every point a proposal must keep away from: evaluated, failed and (during ``ask``) pending."""
        return self.xs + self.failed + self._pending

    def is_new(self, x: Point) -> bool:
        return all(max(abs(a - b) for a, b in zip(x, y)) >= self.min_distance for y in self._seen())

    def mark_failed(self, x: Point) -> None:
        """A trial at ``x`` produced no objective: remember it so it is not proposed again."""
        self.failed.append(tuple(float(v) for v in x))

    def _initial_proposal(self) -> Proposal | None:
        while self._initial:
            p = self._initial.pop(0)
            if self.is_new(p.x):
                self._initial_given.append(p.x)
                return p
        return None

    def newest_first(self) -> None:
        """Evaluate the newest checkpoint alone first among the initial points (under eval.race: it is
        never raced, so the initial points after it race against it instead of being scored in full for
        want of an incumbent). The points are the same; only their order changes."""
        newest = [p for p in self._initial if self.space.weights(p.x)[-1] == 1.0]
        self._initial = newest + [p for p in self._initial if p not in newest]

    @property
    def n_initial(self) -> int:
        """How many initial points remain to be evaluated."""
        return len(self._initial)

    def _clip(self, x: Any) -> Point:
        return tuple(float(min(max(v, lo), hi)) for v, (lo, hi) in zip(x, self.bounds))

    def largest_gap(self) -> Point:
        """The least explored point: the fallback when every proposal repeats an evaluated one.

        For a pair, the point of [α, 1] farthest from every evaluated (or failed) λ, among a grid of
        half ``min_distance`` steps; otherwise the random candidate (of 2000) farthest from every
        evaluated point. Never a point within ``min_distance`` of one already seen: when none is left,
        the search cannot go on (a budget larger than the box holds at that spacing).
        """
        seen = self._seen()
        lo, hi = np.array(self.bounds).T
        if self.space.dims == 1:
            step = self.min_distance / 2
            cands = np.append(np.arange(lo[0], hi[0], step), hi[0]).reshape(-1, 1)
        else:
            cands = self._rng.uniform(lo, hi, size=(2000, len(lo)))
        if not seen:
            return self._clip(cands[len(cands) // 2] if self.space.dims == 1 else cands[0])
        d = np.abs(cands[:, None, :] - np.array(seen)[None, :, :]).max(axis=2).min(axis=1)
        best = int(np.argmax(d))
        if d[best] < self.min_distance:
            raise SearchExhausted(
                f"no point is left at least search.min_distance={self.min_distance:g} from every evaluated one"
            )
        return self._clip(cands[best])

    def ask(self, pending: Sequence[Point] = ()) -> Proposal:
        """The next point to evaluate, given the evaluated points and the ``pending`` ones (proposed
        earlier, results not told yet): the next initial point, then the searcher's own proposal; never
        within ``min_distance`` of an evaluated, failed or pending point (module docstring)."""
        if not pending:
            return self._initial_proposal() or self._next()
        inflight = [tuple(float(v) for v in p) for p in pending]
        self._pending = inflight
        try:
            initial = self._initial_proposal()
        finally:
            self._pending = []
        return initial or self._next_with_pending(inflight)

    def _next(self) -> Proposal:
        raise NotImplementedError

    def _next_with_pending(self, pending: list[Point]) -> Proposal:
        """``_next`` with ``pending`` excluded: model-free searchers hand out their next points."""
        self._pending = pending
        try:
            return self._next()
        finally:
            self._pending = []

    def tell(self, x: Point, objective: float, se: float | None = None, eligible: bool = True) -> None:
        """Record an evaluation (objective oriented so that higher is better) and its standard error;
        ``eligible=False``: an estimate that may inform the model but never be the result."""
        if not eligible:
            self.ineligible.add(len(self.ys))
            self._raced_since = True
        else:
            self._evidence = True
            if not any(max(abs(a - b) for a, b in zip(x, y)) <= 1e-9 for y in self._initial_given):
                self._proposal_scored = True
        self.xs.append(tuple(float(v) for v in x))
        self.ys.append(float(objective))
        self.ses.append(float(se) if se is not None and np.isfinite(se) else None)

    def select(self, rule: str = "posterior_mean") -> tuple[int, str] | None:
        """The index (into ``xs``) of the result, and the rule that chose it.

        ``posterior_mean``: the evaluated point where the model's posterior mean is highest, which
        weighs each observation against its neighbours and its noise (the best single score, under
        noise, is partly the luckiest draw); searchers without a model fall back to ``observed``.
        """
        if not self.ys or len(self.ineligible) == len(self.ys):
            return None
        ys = self._eligible(np.asarray(self.ys, dtype=float))
        if rule == "posterior_mean":
            means = self.posterior_mean_at(self.xs)
            if means is not None:
                means = self._eligible(np.asarray(means, dtype=float))
                # A GP that explains every difference as noise has a flat mean: among (near) ties the
                # best observation decides, rather than the first point evaluated.
                top = np.flatnonzero(means >= means.max() - 1e-9 * max(1.0, abs(float(means.max()))))
                return int(top[np.argmax(ys[top])]), "posterior_mean"
        return int(np.argmax(ys)), "observed"

    def _eligible(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per observation) with the ineligible ones at -inf."""
        values = values.copy()
        values[list(self.ineligible)] = -np.inf
        return values

    def posterior_mean_at(self, points: list[Point]) -> np.ndarray | None:
        """The model's posterior mean (higher is better) at ``points``; None without a model."""
        return None

    def improvement_criterion(self) -> float | None:
        """The largest expected improvement over the incumbent, in its paired standard errors; None where
        the rule does not apply (no model, initial points pending, no standard error known)."""
        return None

    def check_convergence(self) -> Convergence | None:
        """The stop rule, checked before each proposal (replayed ones too, so a resumed search stops
        where the original did): None while it does not apply (``search.stop=budget``, a searcher
        without a model, the initial design not yet evaluated)."""
        if self.stop != "converged":
            return None
        value = self.improvement_criterion()
        if value is None:
            return None
        if not (self._evidence or (self._raced_since and self._proposal_scored)):
            # Nothing was told since the last check that counted (parallel trials filling several free
            # workers in a row), or only raced-out trials (eval.race) while no point the model proposed
            # has been scored in full yet: no evidence either way, so the streak neither grows nor
            # resets. A raced-out estimate is the incumbent's objective plus a difference on a
            # few documents, told with that difference's paired error, which for a point near the
            # incumbent is smaller than the fully scored trials' errors: before the GP has seen one of its
            # own proposals in full it grows sure of the neighbourhood from the initial design alone, and
            # counting the check ended decay's search at its earliest check in every run, 2 of 5 picks
            # more than one paired standard error from the full search's. Once a proposal has been scored
            # in full, a raced-out proposal is what the rule waits for: the model's next best point was
            # significantly worse than the incumbent. Holding those checks too kept ema's raced searches
            # going: 65% and 63% of the full budget's documents against 53% and 53% with this rule, the
            # same picks, every other family the same (docs/benchmarks.md, racing and the stop rule).
            return Convergence(value, self._streak, False)
        self._evidence = self._raced_since = False
        self._streak = self._streak + 1 if value < self.stop_margin else 0
        return Convergence(value, self._streak, self._streak >= self.patience)

    def state(self) -> dict[str, Any]:
        """Model state after the last ``tell`` (empty for model-free searchers)."""
        return {}

    def posterior(self, n: int = 200) -> Posterior | None:
        return None

    def next_point(self) -> Point | None:
        """The point the model would propose next (for plots), if it has one."""
        return None


class GridSearcher(Searcher):
    """``budget`` evenly spaced points of a one-coordinate space (λ over [α, 1] for a pair), ends first."""

    def __init__(
        self, cfg: SearchConfig, space: SearchSpace | None = None, initial: list[Proposal] | None = None
    ) -> None:
        super().__init__(cfg, space, initial)
        if self.space.dims != 1:
            raise ConfigError(
                f"search.kind=grid needs a space with one coordinate; search/space={self.space.name} over "
                f"{self.space.k} checkpoints has {self.space.dims}: use bo or random"
            )
        ((lo, hi),) = self.bounds
        grid = np.linspace(lo, hi, self.budget)
        self._queue = [(float(x),) for x in grid[1:-1]]

    def _next(self) -> Proposal:
        while self._queue:
            x = self._queue.pop(0)
            if self.is_new(x):
                return Proposal(x, "grid")
        return Proposal(self.largest_gap(), "gap")


class RandomSearcher(Searcher):
    """Uniform random points of the box (seeded), initial points first."""

    def _next(self) -> Proposal:
        lo, hi = np.array(self.bounds).T
        for _ in range(1000):
            x = tuple(float(v) for v in self._rng.uniform(lo, hi))
            if self.is_new(x):
                return Proposal(x, "random")
        return Proposal(self.largest_gap(), "gap")


class BayesSearcher(Searcher):
    """scikit-optimize ``Optimizer`` (GP base estimator, ``gp_hedge`` acquisition) on the box."""

    EXCLUSION = 0.05  # a fallback point keeps this fraction of the box from every evaluated one

    def __init__(
        self, cfg: SearchConfig, space: SearchSpace | None = None, initial: list[Proposal] | None = None
    ) -> None:
        super().__init__(cfg, space, initial)
        from skopt import Optimizer
        from skopt.space import Real

        from ckptmerge.search.gp import skopt_gp

        midpoint = self._gap_midpoint()
        if midpoint is not None:
            self._initial.append(midpoint)
        self.acq_func = cfg.acq_func
        # The initial points are told by hand (λ=α, λ=1; or a warm start), so the GP takes over after them.
        # skopt's own GP but for the length-scale prior (search/gp.py). The seed is drawn from the
        # optimiser's generator exactly as skopt does for base_estimator="GP", so every later draw (the
        # acquisition's candidate points) is the one skopt would make.
        rng = np.random.RandomState(self.seed)
        gp = skopt_gp(self.space.dims, random_state=int(rng.randint(0, np.iinfo(np.int32).max)))
        self.opt = Optimizer(
            dimensions=[Real(lo, hi, name=n) for (lo, hi), n in zip(self.bounds, self.space.coordinates)],
            base_estimator=gp,
            acq_func=cfg.acq_func,
            n_initial_points=max(1, self.n_initial),
            random_state=rng,
        )

    GAP = 1 / 3  # a one-coordinate initial design leaving more than this fraction of the box unseen gets its midpoint

    def _gap_midpoint(self) -> Proposal | None:
        """The midpoint of the widest stretch of a one-coordinate box between initial points (or a box
        end), when that stretch is over ``GAP`` of the box.

        A GP told two points (the pair's λ=α and λ=1, or a family's newest-alone and uniform ends) fits
        a line between them and spends the next evaluations finding out that the objective bends; a
        third point inside the widest gap shows the bend at once. Measured with
        ``benchmarks/sample_efficiency.py`` (docs/search-spaces.md): the pair reaches 90% of its best
        gain in 3 evaluations instead of 5.
        """
        if self.space.dims != 1 or not self._initial:
            return None
        ((lo, hi),) = self.bounds
        edges = sorted({lo, hi, *(float(p.x[0]) for p in self._initial)})
        width, left = max((b - a, a) for a, b in zip(edges, edges[1:]))
        if width <= self.GAP * (hi - lo):
            return None
        return Proposal((left + width / 2,), "initial:gap-midpoint")

    def tell(self, x: Point, objective: float, se: float | None = None, eligible: bool = True) -> None:
        super().tell(x, objective, se, eligible)
        self._prepare_model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's convergence chatter on 2-3 points
            self.opt.tell([float(v) for v in x], -float(objective))  # skopt minimises

    def _prepare_model(self) -> None:
        """The GP's per-point noise and the acquisitions' settings for the observations in ``ys``."""
        self._set_noise()
        kappa = self.KAPPA if self.space.dims == 1 else self.SKOPT_KAPPA  # where there is more to explore
        self.opt.acq_func_kwargs = {"xi": self.XI * float(np.std(self.ys)), "kappa": kappa}

    # What a pending point is told in the fantasy that proposes around it (``ask(pending)``), in skopt's
    # minimised values as its ``Optimizer.ask(strategy=...)``: ``cl_min`` the best observation so far,
    # ``cl_mean`` their mean, ``cl_max`` the worst, ``kb`` (kriging believer) the GP's posterior mean there.
    # Measured with benchmarks/parallel_efficiency.py (docs/benchmarks.md, "Parallel trials"): with 4
    # workers on the embedded trajectory's pair, ``kb`` reached 99% of the best gain in 7 evaluations
    # (median of 5 seeds; no seed later than with ``cl_max``), ``cl_max`` in 8; 90% the same. The
    # believer keeps the model's shape (its mean is unchanged, only its uncertainty at the pending point
    # collapses), so the next points still go where the model expects the best, a step away; a
    # pessimistic constant lie puts a false dip there and pushes them further out.
    LIARS = ("cl_min", "cl_mean", "cl_max", "kb")
    LIAR = "kb"

    def _next_with_pending(self, pending: list[Point]) -> Proposal:
        """The proposal of a copy of this searcher told a lie at each pending point (``LIAR``).

        The lie makes the GP treat the pending point as explored (its uncertainty there collapses), so the
        acquisitions look elsewhere; the copy takes the GP, the hedge's gains and every random generator
        with it, so nothing of the lies reaches this searcher. Before the GP has a model (the initial
        design still in flight) there is nothing to lie with: the widest gap away from every pending point.
        """
        fantasy = copy.deepcopy(self)
        fantasy._pending = list(pending)
        if self.opt.models:
            fantasy._believe(pending, self.LIAR)
        return fantasy._next()

    def _believe(self, pending: list[Point], liar: str) -> None:
        """Tell ``pending`` with lies, all at once (one GP fit). A lie's standard error is unknown: the GP
        gives it the median noise of the real observations."""
        if liar == "kb":
            means = self.posterior_mean_at(pending)
            assert means is not None  # a model exists: _next_with_pending checked
            lies = [float(m) for m in means]
        else:
            # skopt's names are for the minimised -objective; ys are oriented so that higher is better
            lie = {"cl_min": max(self.ys), "cl_max": min(self.ys), "cl_mean": float(np.mean(self.ys))}[liar]
            lies = [float(lie)] * len(pending)
        for x, lie in zip(pending, lies):
            Searcher.tell(self, x, lie, None)
        self._prepare_model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.opt.tell([[float(v) for v in x] for x in pending], [-lie for lie in lies])

    # EI's and PI's least improvement worth having (skopt's ``xi``), in standard deviations of the
    # observed objectives. skopt's default is 0.01 in the objective's own units; our objectives move by
    # hundredths (bits per byte: a merge's whole gain is ~0.03), so EI and PI asked for a third of the
    # gain beyond the best point and, near the optimum, explored instead (decay on the embedded
    # trajectory: 99% of the best gain in 8 evaluations). In units of the observations' spread the rule
    # means the same for any metric. Measured with benchmarks/sample_efficiency.py
    # (docs/search-spaces.md, with the length-scale prior): 0.1 reached 99% sooner than 0, 0.01, 0.3 or
    # skopt's default, and later in no space.
    XI = 0.1

    # LCB's weight on the GP's standard deviation (skopt's ``kappa``, default 1.96) in a one-coordinate
    # box. A search of 8 evaluations has about four after its initial points there, too few to pay for
    # exploring at 1.96σ: on the embedded trajectory's decay family the hedge's LCB point went to the far
    # side of a flat top (newest weight 0.51, 96% of the gain) where EI and PI went to its middle (0.57).
    # Measured with benchmarks/sample_efficiency.py (docs/search-spaces.md): 1.0 and 1.25 reach 99% there
    # in 5 evaluations on every seed (1.96 and 1.5: 6), and no other one-coordinate median moved. The
    # simplex keeps 1.96: its three coordinates are barely covered by the warm start, and with 1.0 its
    # median gain at 8 fell from +0.0312 / +0.0321 to +0.0310 / +0.0318 (seed 7 / seed 0).
    KAPPA = 1.0
    SKOPT_KAPPA = 1.96  # skopt's own LCB weight, kept for boxes of several coordinates

    def _set_noise(self) -> None:
        """Tell the GP each observation's noise variance (from the bootstrap standard errors).

        skopt's GP normalises y by its standard deviation, so the per-point noise (sklearn's ``alpha``,
        added to the kernel's diagonal) is given in those units. A point of unknown error gets the
        median of the known ones; with none known the GP fits a noise level alone, as before.
        """
        known = [se for se in self.ses if se is not None]
        est = self.opt.base_estimator_
        if not known:
            est.set_params(alpha=1e-10)
            return
        fill = float(np.median(known))
        var = np.array([(se if se is not None else fill) ** 2 for se in self.ses])
        scale = float(np.std(self.ys)) ** 2
        est.set_params(alpha=np.maximum(var / (scale if scale > 0 else 1.0), 1e-10))

    def posterior_mean_at(self, points: list[Point]) -> np.ndarray | None:
        if not self.opt.models:
            return None
        mean = self.opt.models[-1].predict(self.opt.space.transform([list(p) for p in points]))
        return -np.asarray(mean, dtype=float)

    def improvement_criterion(self) -> float | None:
        """max over unevaluated points x of E[max(f(x) − f*, 0)] / s.e.(incumbent).

        f* is the incumbent: the highest posterior mean at an evaluated point (what ``select`` would
        return now). f(x) is the GP's latent objective at x (mean and standard deviation in objective
        units). The incumbent's paired standard error is the relative one told to the GP (the noise that
        can change which point is best, TrialLoop._tell). Unevaluated: at least ``min_distance`` from
        every evaluated or failed point, on a 1001-point grid of a one-coordinate box or 4000 seeded
        random points of a larger one (a generator of its own, so the search's proposals are the same
        with the rule on or off).
        """
        if self._initial or not self.opt.models or not self.xs:
            return None
        known = [se for se in self.ses if se is not None and se > 0]
        if not known:
            return None
        from scipy.stats import norm

        means = self.posterior_mean_at(self.xs)
        assert means is not None
        incumbent = int(np.argmax(self._eligible(np.asarray(means, dtype=float))))
        se = self.ses[incumbent] if self.ses[incumbent] else float(np.median(known))
        lo, hi = np.array(self.bounds).T
        if self.space.dims == 1:
            cands = np.linspace(lo[0], hi[0], 1001).reshape(-1, 1)
        else:
            cands = np.random.default_rng([self.seed, len(self.xs)]).uniform(lo, hi, size=(4000, len(lo)))
        seen = np.array(self.xs + self.failed)  # evaluated points only: the stop rule ignores pending ones
        far = np.abs(cands[:, None, :] - seen[None, :, :]).max(axis=2).min(axis=1) >= self.min_distance
        if not far.any():
            return 0.0  # nothing left to evaluate: nothing can improve
        mean, std = self.opt.models[-1].predict(self.opt.space.transform(cands[far].tolist()), return_std=True)
        mu, sd = -np.asarray(mean, dtype=float), np.maximum(np.asarray(std, dtype=float), 1e-12)
        z = (mu - float(means[incumbent])) / sd
        ei = (mu - float(means[incumbent])) * norm.cdf(z) + sd * norm.pdf(z)
        return float(np.max(ei) / se)

    def _candidates(self) -> list[Proposal]:
        """The hedge's chosen point first, then the other acquisitions' proposals."""
        opt = self.opt
        chosen = tuple(float(v) for v in opt._next_x) if hasattr(opt, "_next_x") else None
        names = list(getattr(opt, "cand_acq_funcs_", [self.acq_func]))
        props = []
        for name, x in zip(names, getattr(opt, "next_xs_", [])):
            point = tuple(float(v) for v in opt.space.inverse_transform(np.asarray(x).reshape(1, -1))[0])
            props.append(Proposal(point, name))
        if chosen is not None:
            first = next((p for p in props if np.allclose(p.x, chosen, atol=1e-12)), Proposal(chosen, self.acq_func))
            props = [first] + [p for p in props if p is not first]
        return props

    def _next(self) -> Proposal:
        if not self.opt.models:
            return Proposal(self.largest_gap(), "gap")
        candidates = [Proposal(self._clip(p.x), p.source) for p in self._candidates()]
        if candidates and self._is_far(candidates[0].x):  # the hedge's choice
            return candidates[0]
        # the hedge wants to look again next to an evaluated point: the model's most promising point a
        # step away serves that intent better than another acquisition's point elsewhere in the box
        nearby = self._best_new_by_model()
        if nearby is not None:
            log.info("Every acquisition proposed an evaluated point; taking the model's most promising new one")
            return nearby
        # the box is covered at EXCLUSION spacing: refining next to an evaluated point is all that is left
        for p in candidates:
            if self.is_new(p.x):
                return p
        log.info("Every acquisition proposed an evaluated point; exploring the least explored one instead")
        return Proposal(self.largest_gap(), "gap")

    def _exclusion(self) -> np.ndarray:
        lo, hi = np.array(self.bounds).T
        return np.maximum(self.min_distance, self.EXCLUSION * (hi - lo))

    def _is_far(self, x: Point) -> bool:
        """At least ``EXCLUSION`` of the box (per coordinate, max-norm) from every evaluated or failed point.

        An acquisition's point closer than that to an evaluated one (EI's first step after the initial
        design usually lands ~1% of the box from the best point) differs from it by less than one
        evaluation's standard error, so it tells the GP almost nothing; the model's most promising point
        farther away is evaluated instead. Measured with ``benchmarks/sample_efficiency.py``
        (docs/search-spaces.md, seed 7), with the midpoint above: 99% of the best gain in 4 evaluations
        for the pair (was 5) and 5 for window (was 7); decay, then searched by a squashed power, got
        slower (>8, was 6), and reaches it in 3 since it is searched by the newest's weight.
        """
        return bool(self._far_from_seen(np.array([x], dtype=float))[0])

    def _far_from_seen(self, points: np.ndarray) -> np.ndarray:
        """For each row of ``points``: is it at least ``EXCLUSION`` of the box from every evaluated, failed or
        pending point."""
        seen = self._seen()
        if not seen:
            return np.ones(len(points), dtype=bool)
        d = np.abs(points[:, None, :] - np.array(seen)[None, :, :]) / self._exclusion()
        return d.max(axis=2).min(axis=1) >= 1.0

    def _best_new_by_model(self) -> Proposal | None:
        """The highest upper confidence bound (mean + 1.96σ) among points away from every evaluated one.

        When the optimum sits on an evaluated point (often a corner: the newest checkpoint alone), every
        acquisition proposes it again. The least explored point instead would spend the budget at the far
        end of the box, where the model already expects the worst; the most promising point at least
        ``EXCLUSION`` of the box away from what was seen refines where the model expects the best.
        """
        lo, hi = np.array(self.bounds).T
        if self.space.dims == 1:
            cands = np.linspace(lo[0], hi[0], 1001).reshape(-1, 1)
        else:
            cands = self._rng.uniform(lo, hi, size=(4000, len(lo)))
        far = self._far_from_seen(cands)
        if not far.any():
            return None
        cands = cands[far]
        mean, std = self.opt.models[-1].predict(self.opt.space.transform(cands.tolist()), return_std=True)
        upper = -np.asarray(mean) + 1.96 * np.asarray(std)  # skopt minimises: the objective is -mean
        return Proposal(self._clip(cands[int(np.argmax(upper))]), "UCB-new")

    def next_point(self) -> Point | None:
        c = self._candidates() if self.opt.models else []
        return c[0].x if c else None

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
            elif isinstance(v, np.ndarray) and v.ndim == 1 and "bounds" not in k:  # anisotropic length scales
                for i, e in enumerate(v):
                    out[f"gp.kernel.{k}.{i}"] = float(e)
        out["gp.log_marginal_likelihood"] = float(gp.log_marginal_likelihood_value_)
        out["gp.log_length_scale_prior"] = float(gp.log_length_scale_prior_value_)
        out["gp.acq_xi"] = float((self.opt.acq_func_kwargs or {}).get("xi", 0.01))
        out["gp.acq_kappa"] = float((self.opt.acq_func_kwargs or {}).get("kappa", self.SKOPT_KAPPA))
        mean, std = gp.predict(self.opt.space.transform([list(self.xs[-1])]), return_std=True)
        at = self.space.coordinates[0] if self.space.dims == 1 else "point"
        out[f"gp.mean_at_{at}"] = float(-mean[0])
        out[f"gp.std_at_{at}"] = float(std[0])
        gains = getattr(self.opt, "gains_", None)
        if gains is not None:
            for name, g in zip(self.opt.cand_acq_funcs_, gains):
                out[f"gp.hedge_gain.{name}"] = float(g)
        nxt = self.chosen_acquisition()
        if nxt:
            out["gp.next_acquisition"] = nxt
        return out

    def posterior(self, n: int = 200) -> Posterior | None:
        if not self.opt.models or self.space.dims != 1:
            return None
        from skopt.acquisition import _gaussian_acquisition

        gp = self.opt.models[-1]
        ((lo, hi),) = self.bounds
        grid = np.linspace(lo, hi, n)
        X = self.opt.space.transform(grid.reshape(-1, 1))
        mean, std = gp.predict(X, return_std=True)
        acqs = {}
        y_opt = float(np.min(self.opt.yi))
        for name in getattr(self.opt, "cand_acq_funcs_", [self.acq_func]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # skopt returns acquisitions negated for minimisation; flip so larger means "more wanted".
                acqs[name] = -np.asarray(
                    _gaussian_acquisition(
                        X=X, model=gp, y_opt=y_opt, acq_func=name, acq_func_kwargs=self.opt.acq_func_kwargs
                    ),
                    dtype=float,
                )
        return Posterior(grid=grid, mean=-mean, std=std, acquisitions=acqs)


def warm_start(space: SearchSpace, baselines: dict[str, list[float]], min_distance: float) -> list[Proposal]:
    """The baselines' weightings as the first proposals of a search over ``space`` (see SearchSpace.warm_start)."""
    return [Proposal(x, label) for x, label in space.warm_start(baselines, min_distance)]


def warm_start_left_out(initial: list[Proposal] | None, budget: int) -> list[str]:
    """The warm start's baselines a budget of ``budget`` evaluations never reaches (initial proposals are
    evaluated first, in order), by name: ``["ema"]``."""
    return [
        p.source.removeprefix("warm:").rstrip("~") for p in (initial or [])[budget:] if p.source.startswith("warm:")
    ]


def make_searcher(
    cfg: SearchConfig, space: SearchSpace | None = None, initial: list[Proposal] | None = None
) -> Searcher:
    """The searcher ``cfg.kind`` names, over ``space`` (default: a pair with λ ∈ [α, 1]), starting from
    ``initial`` (default: the space's own initial points)."""
    return SEARCHERS.get(cfg.kind)(cfg, space, initial)
