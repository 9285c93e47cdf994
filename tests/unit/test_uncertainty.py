"""Bootstrap intervals over documents: coverage of a known truth, pairing, and what lm-eval aggregates."""

from __future__ import annotations

import numpy as np
import pytest

from ckptmerge.config import SearchConfig
from ckptmerge.evaluation.doc_scores import MetricScores, scores_from_json, scores_json
from ckptmerge.evaluation.objective import Objective, ObjectiveTerm
from ckptmerge.evaluation.uncertainty import Bootstrap, relative_standard_errors
from ckptmerge.search.searchers import make_searcher

ACC = Objective((ObjectiveTerm("t", "acc", 1.0, True),))
BPB = Objective((ObjectiveTerm("t", "bits_per_byte", 1.0, False),))


def _acc(values, n=None) -> MetricScores:
    v = np.asarray(values, dtype=float)
    return MetricScores("mean", np.arange(v.size), v, np.ones(v.size))


def _paired_accuracy(rng, n, p_a, p_b):
    """Two models on the same documents whose difficulty they share: correlated per-document scores."""
    difficulty = rng.normal(size=n)
    a = (rng.normal(size=n) * 0.3 + difficulty < _q(p_a)).astype(float)
    b = (rng.normal(size=n) * 0.3 + difficulty < _q(p_b)).astype(float)
    return a, b


def _q(p):
    from scipy.stats import norm

    return norm.ppf(p) * np.sqrt(1.09)  # P(N(0, 1.09) < q) = p


def test_paired_gain_intervals_cover_the_true_difference_about_95_percent_of_the_time():
    reps, hits = 300, 0
    for r in range(reps):
        rng = np.random.default_rng(r)
        a, b = _paired_accuracy(rng, 300, 0.62, 0.55)
        g = Bootstrap(1000, 0.95, seed=r).objective_gain(ACC, {"t/acc": _acc(a)}, {"t/acc": _acc(b)})
        hits += g.ci_low <= 0.07 <= g.ci_high
    se = np.sqrt(0.95 * 0.05 / reps)
    assert abs(hits / reps - 0.95) < 3 * se, hits / reps


def test_bits_per_byte_standard_error_matches_the_spread_across_samples():
    """Ratio of sums: the bootstrap s.e. of bits per byte agrees with its spread over fresh samples."""

    def sample(rng, n=400):
        nbytes = rng.integers(50, 2000, size=n).astype(float)
        ll = -nbytes * np.log(2) * (1.9 + 0.3 * rng.normal(size=n))
        return MetricScores("bits_per_byte", np.arange(n), ll, nbytes)

    values = [sample(np.random.default_rng(1000 + i)).value() for i in range(300)]
    boot = Bootstrap(1000, 0.95, seed=0)
    ses = [boot.standard_error(BPB, {"t/bits_per_byte": sample(np.random.default_rng(i))}) for i in range(10)]
    assert np.mean(values) == pytest.approx(1.9, abs=0.01)
    assert np.median(ses) == pytest.approx(np.std(values, ddof=1), rel=0.2)


def test_the_paired_interval_is_much_narrower_than_the_unpaired_one():
    rng = np.random.default_rng(7)
    a, b = _paired_accuracy(rng, 400, 0.60, 0.57)
    sa, sb = {"t/acc": _acc(a)}, {"t/acc": _acc(b)}
    paired = Bootstrap(2000, 0.95, seed=1).objective_gain(ACC, sa, sb)
    # unpaired: each model's documents resampled independently (different seeds)
    da = Bootstrap(2000, 0.95, seed=1).objective_draws(ACC, sa)
    db = Bootstrap(2000, 0.95, seed=2).objective_draws(ACC, sb)
    lo, hi = np.quantile(da - db, [0.025, 0.975])
    assert (paired.ci_high - paired.ci_low) < 0.6 * (hi - lo)


def test_identical_models_gain_nothing_and_a_clear_gain_is_significant():
    boot = Bootstrap(1000, 0.95, seed=0)
    same = boot.objective_gain(ACC, {"t/acc": _acc([1, 0, 1, 1])}, {"t/acc": _acc([1, 0, 1, 1])})
    assert same.value == 0 and same.p_value == 1 and not same.significant
    rng = np.random.default_rng(3)
    a, b = _paired_accuracy(rng, 500, 0.8, 0.5)
    clear = boot.objective_gain(ACC, {"t/acc": _acc(a)}, {"t/acc": _acc(b)})
    assert clear.significant and clear.ci_low > 0 and clear.p_value < 0.01
    worse = boot.metric_gain(
        "t/bits_per_byte",
        False,
        MetricScores("bits_per_byte", np.arange(3), np.array([-10.0, -10, -10]), np.array([5.0, 5, 5])),
        MetricScores("bits_per_byte", np.arange(3), np.array([-5.0, -5, -5]), np.array([5.0, 5, 5])),
    )
    assert worse.value < 0  # higher bits per byte is worse: the gain is negative


def test_scores_on_different_documents_are_refused():
    boot = Bootstrap(100, 0.95, seed=0)
    with pytest.raises(ValueError, match="different documents"):
        boot.objective_gain(ACC, {"t/acc": _acc([1, 0, 1])}, {"t/acc": _acc([1, 0])})


def test_per_document_scores_round_trip_through_json():
    s = {
        "t/bits_per_byte": MetricScores(
            "bits_per_byte", np.array([3, 7]), np.array([-12.5, -3.25]), np.array([10.0, 4.0])
        )
    }
    back = scores_from_json(scores_json(s))
    assert back["t/bits_per_byte"].value() == s["t/bits_per_byte"].value()
    assert back["t/bits_per_byte"].doc_ids.tolist() == [3, 7]


def test_the_gp_told_the_noise_selects_by_posterior_mean_not_the_luckiest_draw():
    """A smooth objective peaking at λ=0.6, observed with s.e. 0.04; λ=0.4 got a lucky +2σ draw."""
    searcher = make_searcher(SearchConfig(kind="bo", budget=8, seed=0))
    lams = [0.0, 1.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.9]
    noise = dict(zip(lams, [0.01, -0.01, 0.0, 0.08, -0.005, 0.0, 0.005, -0.01]))
    for lam in lams:
        searcher.ask()
        searcher.tell((lam,), -((lam - 0.6) ** 2) + noise[lam], 0.04)
    observed, rule_o = searcher.select("observed")
    chosen, rule_p = searcher.select("posterior_mean")
    assert rule_o == "observed" and searcher.xs[observed] == (0.4,)
    assert rule_p == "posterior_mean" and searcher.xs[chosen][0] in (0.5, 0.6, 0.7)
    assert np.asarray(searcher.opt.base_estimator_.alpha).shape == (len(lams),)


def test_a_gp_that_sees_only_noise_falls_back_to_the_best_observation():
    searcher = make_searcher(SearchConfig(kind="bo", budget=5, seed=0))
    for lam, y in [(0.0, 0.001), (1.0, -0.001), (0.5, 0.003), (0.25, 0.0), (0.75, -0.002)]:
        searcher.ask()
        searcher.tell((lam,), y, 0.5)  # differences 100x below the noise: a flat posterior mean
    chosen, _ = searcher.select("posterior_mean")
    assert searcher.xs[chosen] == (0.5,)


def test_noise_shared_by_every_trial_is_not_noise_between_trials():
    """Scores on the same documents move together; only what differs between trials is told to the GP."""
    rng = np.random.default_rng(0)
    shared = rng.normal(scale=0.1, size=1000)  # how hard the resampled documents are
    draws = [shared + rng.normal(scale=0.002, size=1000) for _ in range(4)]
    total = [float(np.std(d, ddof=1)) for d in draws]
    relative = relative_standard_errors(draws + [None])
    assert all(t > 0.09 for t in total)
    assert all(0.001 < r < 0.003 for r in relative[:4]) and relative[4] is None
    assert relative_standard_errors([draws[0]]) == [0.0]
