"""Searchers: α and 1 first, never the same λ twice, budget respected, deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest

from ckptmerge.config import SearchConfig
from ckptmerge.search.searchers import BayesSearcher, make_searcher


def bumpy(lam: float) -> float:
    return -3 * (lam - 0.62) ** 2 + 0.01 * np.sin(20 * lam)


def drive(kind: str, budget: int = 8, alpha: float = 0.1, seed: int = 0, f=bumpy):
    s = make_searcher(SearchConfig(kind=kind, budget=budget, alpha=alpha, seed=seed))
    props = []
    for _ in range(budget):
        p = s.ask()
        props.append(p)
        s.tell(p.x, f(p.lam))
    return s, props


@pytest.mark.parametrize("kind", ["bo", "grid", "random"])
def test_first_alpha_then_one_and_no_repeats(kind):
    s, props = drive(kind, budget=10, alpha=0.2)
    lams = [p.lam for p in props]
    assert lams[0] == pytest.approx(0.2) and lams[1] == 1.0
    assert props[0].source == props[1].source == "initial"
    assert all(0.2 <= x <= 1.0 for x in lams)
    d = np.abs(np.subtract.outer(lams, lams)) + np.eye(len(lams))
    assert d.min() >= s.min_distance


@pytest.mark.parametrize("kind", ["bo", "random"])
def test_same_seed_same_sequence(kind):
    a = [p.lam for p in drive(kind, seed=3)[1]]
    b = [p.lam for p in drive(kind, seed=3)[1]]
    c = [p.lam for p in drive(kind, seed=4)[1]]
    assert a == b
    assert a != c


def test_bo_finds_the_optimum_of_a_smooth_function_better_than_random():
    bo, _ = drive("bo", budget=8, alpha=0.0)
    best_bo = max(bo.ys)
    grid = np.linspace(0, 1, 2001)
    true_best = max(bumpy(x) for x in grid)
    gain_dense = true_best - bumpy(1.0)
    assert best_bo - bumpy(1.0) >= 0.95 * gain_dense


def test_bo_state_exposes_gp_and_hedge():
    s, props = drive("bo", budget=5)
    st = s.state()
    assert any(k.startswith("gp.kernel.") for k in st)
    assert {"gp.mean_at_lambda", "gp.std_at_lambda"} <= set(st)
    assert {"gp.hedge_gain.EI", "gp.hedge_gain.LCB", "gp.hedge_gain.PI"} <= set(st)
    assert st["gp.next_acquisition"] in ("EI", "LCB", "PI")
    # the GP interpolates the observation at the last λ closely
    assert st["gp.mean_at_lambda"] == pytest.approx(s.ys[-1], abs=0.05)
    # after λ=α and λ=1: the midpoint of the box (the widest gap), then the GP's proposals
    assert props[2].source == "initial:gap-midpoint" and props[2].lam == pytest.approx(0.5 * (s.alpha + 1))
    assert {p.source for p in props[3:]} <= {"EI", "LCB", "PI", "UCB-new", "gap"}
    post = s.posterior(50)
    assert post is not None and post.mean.shape == (50,) and set(post.acquisitions) == {"EI", "LCB", "PI"}
    assert (post.std >= 0).all()


def test_repeated_proposals_fall_back_to_the_widest_gap():
    # A flat objective makes every acquisition propose the same corner again and again.
    s, props = drive("bo", budget=12, alpha=0.0, f=lambda lam: 0.0)
    lams = sorted(p.lam for p in props)
    assert len(set(np.round(lams, 6))) == 12
    assert all(b - a >= s.min_distance for a, b in zip(lams, lams[1:]))


def test_failed_points_are_not_proposed_again():
    s = BayesSearcher(SearchConfig(budget=6, alpha=0.0))
    p = s.ask()
    s.mark_failed(p.x)
    assert not s.is_new(p.x)
    assert s.ask().lam == 1.0


def test_simplex_space_maps_onto_weights():
    from ckptmerge.search.space import WeightSpace

    sp = WeightSpace(4, alpha=0.2)
    shared, alone = sp.initial()
    assert sp.weights(alone) == pytest.approx([0, 0, 0, 1])
    assert sp.weights(shared) == pytest.approx([0.8 / 3, 0.8 / 3, 0.8 / 3, 0.2])
    rng = np.random.default_rng(0)
    for _ in range(100):
        u = [rng.uniform(0.2, 1)] + list(rng.uniform(0, 1, 2))
        w = sp.weights(u)
        assert sum(w) == pytest.approx(1) and min(w) >= 0 and w[-1] >= 0.2
    assert WeightSpace(2, 0.3).weights([0.7]) == pytest.approx([0.3, 0.7])  # a pair: u is λ


def test_bo_on_the_simplex_improves_on_the_initial_points():
    from ckptmerge.search.space import WeightSpace

    target = np.array([0.1, 0.3, 0.6])
    sp = WeightSpace(3, alpha=0.0)
    s = make_searcher(SearchConfig(kind="bo", budget=10, seed=0), sp)
    for _ in range(10):
        p = s.ask()
        s.tell(p.x, -float(np.abs(np.array(sp.weights(p.x)) - target).sum()))
    assert max(s.ys) > max(s.ys[:2]) + 0.3
    assert "gp.mean_at_point" in s.state()


def test_the_gap_fallback_never_proposes_a_point_closer_than_min_distance():
    """Bisection used to propose midpoints of gaps narrower than 2·min_distance; the budget allows a full
    grid at min_distance, which the fallback must be able to fill."""
    from ckptmerge.search.searchers import SearchExhausted

    cfg = SearchConfig(kind="grid", budget=6, alpha=0.0, min_distance=0.2)  # 6 points fit: 0, .2, ..., 1
    s = make_searcher(cfg)
    for lam in (0.0, 1.0, 0.5):  # a midpoint taken: bisection would now give 0.25/0.75 and then 0.125...
        s.tell((lam,), 0.0)
    got = []
    for _ in range(2):
        x = s.largest_gap()
        assert all(abs(x[0] - y[0]) >= 0.2 - 1e-12 for y in s.xs), (x, s.xs)
        s.tell(x, 0.0)
        got.append(x[0])
    assert got[0] < 0.5 < got[1] or got[1] < 0.5 < got[0]  # one on each side of 0.5
    with pytest.raises(SearchExhausted, match="no point is left"):
        s.largest_gap()  # five points 0.2 apart or more in [0, 1]: no sixth fits between them


@pytest.mark.parametrize(
    ("space", "initial", "expected"),
    [
        ("pair", None, 0.5),  # λ=0, λ=1: the middle of the box
        ("decay", [(1.0,), (0.25,)], 0.625),  # newest alone, uniform: the newest at 5/8
        ("window", [(1.0,), (4.0,), (3.0,)], 2.0),  # newest, uniform, LAWA(3): the widest gap is [1, 3]
        ("decay", [(0.25,), (0.45,), (0.65,), (0.85,)], None),  # no gap wider than a third of the box
    ],
)
def test_a_one_coordinate_bo_adds_the_midpoint_of_its_widest_unseen_gap(space, initial, expected):
    from ckptmerge.search.searchers import Proposal
    from ckptmerge.search.space import make_space

    sp = make_space(space, 2 if space == "pair" else 4, 0.0)
    given = None if initial is None else [Proposal(x, "warm") for x in initial]
    s = make_searcher(SearchConfig(kind="bo", budget=8, alpha=0.0), sp, given)
    n_given = 2 if initial is None else len(initial)
    asked = [s.ask() for _ in range(s.n_initial)]
    if expected is None:
        assert len(asked) == n_given and all(p.source != "initial:gap-midpoint" for p in asked)
    else:
        assert len(asked) == n_given + 1
        assert asked[-1].source == "initial:gap-midpoint" and asked[-1].x[0] == pytest.approx(expected)


def test_a_simplex_gets_no_midpoint():
    from ckptmerge.search.space import make_space

    s = make_searcher(SearchConfig(kind="bo", budget=8), make_space("simplex", 4, 0.0))
    assert all(p.source != "initial:gap-midpoint" for p in s._initial)


def test_the_gp_never_spends_an_evaluation_within_five_percent_of_the_box_of_an_evaluated_point():
    """Acquisitions often re-propose a point a hair away from the best one; under noise that tells the
    GP nothing, so a point at least 5% of the box away is evaluated instead (while the box has room)."""
    s, props = drive("bo", budget=8, alpha=0.1)
    seen: list[float] = []
    for p in props:
        if p.source in ("EI", "LCB", "PI", "UCB-new"):
            assert min(abs(p.lam - x) for x in seen) >= 0.05 * (1 - 0.1) - 1e-12, (p, seen)
        seen.append(p.lam)
    assert any(p.source in ("EI", "LCB", "PI") for p in props)


def test_ei_means_the_same_whatever_the_units_of_the_objective():
    """EI's and PI's least improvement (skopt's xi) is in units of the observations' spread: the same
    objective in bits per byte, in hundredths of them or in hundreds gets the same proposals. With skopt's
    absolute xi=0.01 the hundredths version explored the far end of the box instead."""

    def proposals(scale: float) -> list[float]:
        s = make_searcher(SearchConfig(kind="bo", budget=8, alpha=0.1, seed=0, acq_func="EI"))
        out = []
        for _ in range(8):
            p = s.ask()
            out.append(p.lam)
            s.tell(p.x, scale * bumpy(p.lam))
        assert s.state()["gp.acq_xi"] == pytest.approx(BayesSearcher.XI * float(np.std(s.ys)))
        return out

    reference = proposals(1.0)
    for scale in (0.01, 100.0):
        np.testing.assert_allclose(proposals(scale), reference, atol=1e-3)


def test_lcb_weighs_the_gp_std_by_the_searchers_kappa():
    """LCB proposes the minimum over the box of (GP mean − KAPPA·σ) of the negated objective: the
    searcher's kappa reaches skopt (whose default, 1.96, would explore a short budget away), and the
    trial logs it."""
    s = make_searcher(SearchConfig(kind="bo", budget=8, alpha=0.1, seed=0, acq_func="LCB"))
    for _ in range(4):  # after four points the two weights disagree (after three or five they agree)
        p = s.ask()
        s.tell(p.x, bumpy(p.lam))
    assert s.state()["gp.acq_kappa"] == BayesSearcher.KAPPA != 1.96
    gp = s.opt.models[-1]
    grid = np.linspace(0.1, 1.0, 2001)
    mean, std = gp.predict(s.opt.space.transform(grid.reshape(-1, 1)), return_std=True)
    by_kappa = {k: float(grid[np.argmin(mean - k * std)]) for k in (BayesSearcher.KAPPA, 1.96)}
    assert abs(by_kappa[BayesSearcher.KAPPA] - by_kappa[1.96]) > 0.03
    assert s.next_point()[0] == pytest.approx(by_kappa[BayesSearcher.KAPPA], abs=0.01)


@pytest.mark.parametrize("kind", ["bo", "grid", "random"])
def test_points_in_flight_are_not_proposed_again(kind):
    """Parallel trials (runtime=ray): two workers, each asks with the other's point pending; no proposal
    lands within min_distance of a point evaluated or in flight, and the pending ones are not kept."""
    s = make_searcher(SearchConfig(kind=kind, budget=10, alpha=0.1, seed=0))
    in_flight = [s.ask()]
    seen = []
    for _ in range(8):
        p = s.ask(pending=[q.x for q in in_flight])
        assert all(abs(p.lam - q.lam) >= s.min_distance for q in in_flight + seen), (p, in_flight)
        in_flight.append(p)
        done = in_flight.pop(0)  # the older one finishes first
        s.tell(done.x, bumpy(done.lam))
        seen.append(done)
    assert s.failed == []  # the pending points counted as seen only while each proposal was made
