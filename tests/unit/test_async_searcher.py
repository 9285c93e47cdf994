"""Searchers with trials in flight (``ask(pending)``): a pending point is never proposed again, ``bo``'s lies
about pending points never reach the searcher, four proposals in flight are spread over the box, results
may be told in any order, and ``pending=()`` is the serial search."""

from __future__ import annotations

import numpy as np
import pytest

from ckptmerge.config import SearchConfig
from ckptmerge.search.searchers import BayesSearcher, make_searcher
from ckptmerge.search.space import SimplexSpace

OPTIMUM = 0.62


def bumpy(lam: float) -> float:
    """Maximum near λ=0.62 (the unit tests' synthetic objective)."""
    return -3 * (lam - OPTIMUM) ** 2 + 0.01 * np.sin(20 * lam)


def searcher(kind: str, budget: int = 12, alpha: float = 0.0, seed: int = 0, space=None):
    return make_searcher(SearchConfig(kind=kind, budget=budget, alpha=alpha, seed=seed), space)


def serial(s, n: int, f=bumpy) -> list:
    props = []
    for _ in range(n):
        p = s.ask()
        props.append(p)
        s.tell(p.x, f(p.lam), 0.002)
    return props


def asynchronous(s, n: int, workers: int, f=bumpy) -> list[tuple]:
    """Keep ``workers`` trials in flight; the oldest one finishes first. Returns (proposal, pending at its
    proposal) per trial."""
    inflight, out = [], []
    while len(out) < n:
        while len(inflight) < workers and len(out) + len(inflight) < n:
            pending = [p.x for p in inflight]
            p = s.ask(pending)
            inflight.append(p)
            out.append((p, pending))
        done = inflight.pop(0)
        s.tell(done.x, f(done.lam), 0.002)
    for p in inflight:
        s.tell(p.x, f(p.lam), 0.002)
    return out


def distance(a, b) -> float:
    return max(abs(u - v) for u, v in zip(a, b))


def snapshot(s: BayesSearcher) -> dict:
    """Everything a lie could change: the bookkeeping, the stop rule, the GP and its hedge, the generators."""
    opt = s.opt
    grid = opt.space.transform(np.linspace(0, 1, 101).reshape(-1, 1).tolist())
    mean, std = opt.models[-1].predict(grid, return_std=True)
    return {
        "xs": list(s.xs),
        "ys": list(s.ys),
        "ses": list(s.ses),
        "failed": list(s.failed),
        "pending": list(s._pending),
        "streak": s._streak,
        "state": s.state(),
        "models": len(opt.models),
        "Xi": [list(x) for x in opt.Xi],
        "yi": list(opt.yi),
        "gains": opt.gains_.tolist(),
        "next_x": list(opt._next_x),
        "next_xs": [list(map(float, x)) for x in opt.next_xs_],
        "acq_kwargs": dict(opt.acq_func_kwargs),
        "alpha": np.asarray(opt.base_estimator_.alpha).tolist(),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "opt_rng": repr(opt.rng.get_state()),
        "rng": repr(s._rng.bit_generator.state),
        "n_initial": opt._n_initial_points,
        "criterion": s.improvement_criterion(),
    }


@pytest.mark.parametrize("kind", ["bo", "grid", "random"])
def test_no_pending_or_evaluated_point_is_proposed_again(kind):
    s = searcher(kind)
    runs = asynchronous(s, 12, workers=4)
    for i, (p, pending) in enumerate(runs):
        assert p.x not in pending
        earlier = [q.x for q, _ in runs[:i]]  # evaluated or pending when p was proposed
        assert min(distance(p.x, x) for x in earlier or [(9.0,)]) >= s.min_distance, (i, p, earlier)
    # with pending points the GP's proposals keep the same distance from them as from evaluated ones
    if kind == "bo":
        box = 1.0
        model_made = [(p, pend) for p, pend in runs if p.source in ("EI", "LCB", "PI")]
        assert model_made
        for p, pending in model_made:
            assert all(distance(p.x, x) >= BayesSearcher.EXCLUSION * box - 1e-12 for x in pending)


@pytest.mark.parametrize("liar", BayesSearcher.LIARS)
def test_lies_never_leak(liar, monkeypatch):
    monkeypatch.setattr(BayesSearcher, "LIAR", liar)
    s, twin = searcher("bo", seed=1), searcher("bo", seed=1)
    serial(s, 5)
    serial(twin, 5)
    s.stop = twin.stop = "converged"  # the streak is part of what must not move
    s.check_convergence(), twin.check_convergence()
    before = snapshot(s)
    pending: list = []
    for _ in range(3):
        pending.append(s.ask(pending).x)
    assert len(set(pending)) == 3
    assert snapshot(s) == before
    # and the search goes on exactly as one that was never asked with pending points
    assert [p.x for p in serial(s, 4)] == [p.x for p in serial(twin, 4)]
    assert snapshot(s) == snapshot(twin)


def test_four_pending_proposals_are_distinct_and_spread():
    s = searcher("bo", seed=0)
    serial(s, 4)  # the initial design (λ=0, 1, ½) and the GP's first point
    alone = s.ask()
    assert s.ask() == alone  # without pending points a searcher proposes the same point again
    pending: list = []
    for _ in range(4):
        pending.append(s.ask(pending).x)
    assert pending[0] == alone.x  # the first of them is the serial proposal
    seen = s.xs + pending
    gaps = [distance(a, b) for i, a in enumerate(seen) for b in seen[i + 1 :]]
    assert min(gaps) >= BayesSearcher.EXCLUSION - 1e-12  # none closer than the GP's exclusion to another
    # spread: between them, the four cover more of the box than any four within a fifth of it would
    assert max(pending)[0] - min(pending)[0] > 0.2


def test_four_workers_find_the_optimum_with_few_more_evaluations():
    """The synthetic optimum within 0.05 on every seed, asynchronous with 4 workers at a budget of 10."""
    for seed in range(2):
        s = searcher("bo", seed=seed)
        asynchronous(s, 10, workers=4)
        assert min(abs(x[0] - OPTIMUM) for x in s.xs) < 0.05, (seed, sorted(s.xs))


def test_initial_design_is_handed_out_with_pending_points():
    s = searcher("bo", alpha=0.2)
    a = s.ask()
    b = s.ask([a.x])
    c = s.ask([a.x, b.x])
    assert [a.x, b.x] == [(0.2,), (1.0,)] and c.source == "initial:gap-midpoint" and c.x == pytest.approx((0.6,))
    d = s.ask([a.x, b.x, c.x])  # no model yet: the widest gap between the pending points
    assert d.source == "gap" and min(distance(d.x, x) for x in (a.x, b.x, c.x)) >= 0.19
    assert s.xs == [] and s.improvement_criterion() is None


def test_results_may_be_told_out_of_order():
    s, twin = searcher("bo", seed=2), searcher("bo", seed=2)
    serial(s, 4)
    serial(twin, 4)
    pending: list = []
    for _ in range(3):
        pending.append(s.ask(pending).x)
    for x in reversed(pending):  # the last proposed finishes first
        s.tell(x, bumpy(x[0]), 0.002)
    for x in pending:
        twin.tell(x, bumpy(x[0]), 0.002)
    assert sorted(s.xs) == sorted(twin.xs) and len(s.xs) == 7
    grid = s.opt.space.transform(np.linspace(0, 1, 51).reshape(-1, 1).tolist())
    # the same observations, so the same GP up to the hyper-parameter fit's tolerance
    assert np.allclose(s.opt.models[-1].predict(grid), twin.opt.models[-1].predict(grid), atol=0.02)
    nxt = s.ask()
    assert min(distance(nxt.x, x) for x in s.xs) >= s.min_distance
    assert s.select() is not None


@pytest.mark.parametrize("kind", ["bo", "grid", "random"])
def test_no_pending_is_the_serial_search(kind):
    a, b = searcher(kind, seed=3), searcher(kind, seed=3)
    for _ in range(8):
        p, q = a.ask(), b.ask(())
        assert p == q
        a.tell(p.x, bumpy(p.lam), 0.002)
        b.tell(q.x, bumpy(q.lam), 0.002)
    assert a.xs == b.xs and a.state() == b.state()


def test_grid_hands_out_its_next_points_skipping_pending_ones():
    s, twin = searcher("grid", budget=6), searcher("grid", budget=6)
    order = [p.x for p in serial(twin, 6)]  # 0, 1, then 0.2, 0.4, 0.6, 0.8
    got: list = []
    for _ in range(6):
        got.append(s.ask(got).x)
    assert got == order
    s2 = searcher("grid", budget=6)
    s2.ask(), s2.ask()
    assert s2.ask([(0.2,)]).x == pytest.approx((0.4,))  # 0.2 is in flight: the next grid point


def test_random_hands_out_its_next_points_skipping_pending_ones():
    twin = searcher("random", seed=5)
    order = [twin.ask().x for _ in range(6)]  # nothing told: the seeded stream of points
    s = searcher("random", seed=5)
    got: list = []
    for _ in range(6):
        got.append(s.ask(got).x)
    assert got == order
    # a pending point that the stream would hand out next is skipped
    s3, s4 = searcher("random", seed=5), searcher("random", seed=5)
    for _ in range(2):
        s3.ask(), s4.ask()
    nxt = s4.ask().x
    assert s3.ask([nxt]).x != nxt


def test_several_coordinates():
    space = SimplexSpace(4, 0.0)
    s = searcher("bo", space=space, seed=0)
    f = lambda x: -sum((v - 0.4) ** 2 for v in x)  # noqa: E731
    for _ in range(4):
        p = s.ask()
        s.tell(p.x, f(p.x), 0.002)
    pending = [s.ask().x]  # a serial proposal: it draws its candidates from the searcher's generator, as always
    before = snapshot_multi(s)
    for _ in range(3):
        pending.append(s.ask(pending).x)
    seen = s.xs + pending
    assert min(distance(a, b) for i, a in enumerate(seen) for b in seen[i + 1 :]) >= s.min_distance
    assert snapshot_multi(s) == before


def snapshot_multi(s: BayesSearcher) -> tuple:
    return (
        list(s.xs),
        list(s.ys),
        s.opt.gains_.tolist(),
        repr(s.opt.rng.get_state()),
        repr(s._rng.bit_generator.state),
        s.state(),
    )
