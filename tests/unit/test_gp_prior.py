"""bo's Gaussian process: skopt's own, plus a log-normal prior on the length scale (search/gp.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import check_grad
from skopt.utils import cook_estimator

from ckptmerge.search.gp import skopt_gp

# The EMA family's initial design on the seed-7 trajectory (β = 0.95, 0, 0.475, scaled to the unit box)
# and its real dev objectives (−bits per byte; skopt minimises, hence the sign): three points on which
# skopt's own fit puts the length scale at its lower bound, each point a bump of its own.
EMA_X = np.array([[1.0], [0.0], [0.5]])
EMA_Y = -np.array([-2.57305, -2.40441, -2.38259])


def _length_scale(gp) -> float:
    return float(gp.kernel_.k1.k2.length_scale)


def test_without_the_prior_it_is_skopts_gp():
    """A prior too wide to matter leaves skopt's fit: same kernel, bounds, noise, restarts, seed."""
    x = np.linspace(0, 1, 6).reshape(-1, 1)
    y = np.sin(6 * x[:, 0]) + 0.1 * x[:, 0]
    ours = skopt_gp(1, random_state=3, length_scale_sigma=1e9).fit(x, y)
    theirs = cook_estimator("GP", space=[(0.0, 1.0)], random_state=3).fit(x, y)
    grid = np.linspace(0, 1, 41).reshape(-1, 1)
    np.testing.assert_allclose(ours.predict(grid), theirs.predict(grid), rtol=1e-6, atol=1e-8)
    assert ours.log_marginal_likelihood_value_ == pytest.approx(theirs.log_marginal_likelihood_value_, rel=1e-6)


def test_the_prior_keeps_three_points_from_collapsing_the_length_scale():
    """On the EMA family's three initial points skopt's fit goes to its lower bound (0.01 of the box);
    the prior's stays within a few-fold of its median."""
    plain = cook_estimator("GP", space=[(0.0, 1.0)], random_state=0).fit(EMA_X, EMA_Y)
    prior = skopt_gp(1, random_state=0).fit(EMA_X, EMA_Y)
    assert _length_scale(plain) < 0.02
    assert 0.15 / 5 < _length_scale(prior) < 0.15 * 5


def test_enough_data_moves_the_length_scale_away_from_the_prior():
    """A prior, not a bound: a slow curve sampled densely fits a length scale several times the median."""
    x = np.linspace(0, 1, 25).reshape(-1, 1)
    y = x[:, 0] ** 2
    gp = skopt_gp(1, random_state=0).fit(x, y)
    assert _length_scale(gp) > 3 * 0.15


def test_the_objective_gradient_includes_the_prior():
    gp = skopt_gp(2, random_state=0)
    x = np.random.default_rng(0).uniform(size=(7, 2))
    gp.fit(x, np.sin(3 * x[:, 0]) + x[:, 1])

    def f(theta):
        return gp.log_marginal_likelihood(theta, clone_kernel=True)

    def g(theta):
        return gp.log_marginal_likelihood(theta, eval_gradient=True, clone_kernel=True)[1]

    theta = gp.kernel_.theta.copy()
    theta[-1] = np.log(1e-3)  # the white-noise level skopt zeroes after fitting; any finite value will do
    assert check_grad(f, g, theta, epsilon=1e-6) < 1e-3 * max(1.0, np.linalg.norm(g(theta)))
    # the prior's part alone: zero at the median, pulling towards it elsewhere
    idx = gp._length_scale_indices()
    assert len(idx) == 2
    at_median = theta.copy()
    at_median[idx] = np.log(0.15)
    assert gp.log_length_scale_prior(at_median) == 0.0
    wide = theta.copy()
    wide[idx] = np.log(1.5)
    value, grad = gp.log_length_scale_prior(wide, eval_gradient=True)
    assert value < 0 and (grad[idx] < 0).all()


def test_the_stored_likelihood_is_the_likelihood_alone():
    """``gp.log_marginal_likelihood`` (logged per trial) excludes the prior; the optimiser maximised both."""
    from skopt.learning import GaussianProcessRegressor

    gp = skopt_gp(1, random_state=0).fit(EMA_X, EMA_Y)
    theta = gp.kernel_.theta.copy()
    theta[-1] = np.log(gp.noise_)  # skopt zeroes the fitted white noise after fitting; put it back
    likelihood = GaussianProcessRegressor.log_marginal_likelihood(gp, theta)
    assert gp.log_marginal_likelihood_value_ == pytest.approx(likelihood, rel=1e-9)
    assert gp.log_length_scale_prior_value_ == pytest.approx(gp.log_length_scale_prior(theta), abs=1e-12)
    assert gp.log_marginal_likelihood(theta) == pytest.approx(likelihood + gp.log_length_scale_prior_value_)
    assert gp.log_length_scale_prior_value_ < 0.0  # the fit sits off the median: the data moved it


def test_on_one_coordinate_only_shorter_length_scales_pay():
    """One coordinate: the prior resists a collapse, not a smooth curve (a long length scale costs
    nothing, so a lucky draw between smooth neighbours is not believed). Several: both ways."""
    one = skopt_gp(1, random_state=0).fit(EMA_X, EMA_Y)
    theta = one.kernel_.theta.copy()
    idx = one._length_scale_indices()
    theta[idx] = np.log(1.5)  # ten times the median
    assert one.log_length_scale_prior(theta) == 0.0
    theta[idx] = np.log(0.015)
    assert one.log_length_scale_prior(theta) < 0.0
    x = np.random.default_rng(0).uniform(size=(5, 3))
    several = skopt_gp(3, random_state=0).fit(x, x.sum(axis=1))
    theta = several.kernel_.theta.copy()
    theta[several._length_scale_indices()] = np.log(1.5)
    assert several.log_length_scale_prior(theta) < 0.0
