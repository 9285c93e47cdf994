"""The Gaussian process behind ``bo``: scikit-optimize's, with a prior on how wiggly the objective may be.

skopt's default GP (a constant times a Matern 5/2 kernel, plus fitted white noise, on the box scaled to
[0, 1]) chooses its length scale by maximising the marginal likelihood alone, within bounds
[0.01, 100]. On the three or four points a search has after its initial design, that likelihood is
often highest at a bound. On the EMA family's initial design (β = 0.95, 0, 0.475) it fits a length scale
of 0.011 of the box: each observation a bump of its own, the mean between them back at the average,
the acquisitions' next points arbitrary (the next EI step explored β ≈ 0.95 again, the worst end).

A log-normal prior on each length scale (median ``length_scale_median`` of the box, ``length_scale_sigma``
in log space) is added to the log marginal likelihood, so the fitted length scale is a maximum a
posteriori: three points can no longer push it to a bound, while enough points that agree still move it
several-fold (tests/unit/test_gp_prior.py). On one coordinate the prior only resists length scales
shorter than its median: pulling a smooth curve's long length scale down to 0.15 made the GP believe a
lucky +2σ draw between its neighbours (the pair then chose it by posterior mean) and spend an
evaluation at the far end of a monotone objective (tests/unit/test_uncertainty.py, test_spaces.py).
On the simplex's several coordinates, where a budget of 8 leaves each one a few points, the two-sided
prior is kept: without it, or one-sided, the simplex's gain at 8 evaluations fell from +0.0312 / +0.0321
to +0.0293 / +0.0300 and +0.0245 / +0.0283 (seed 7 / seed 0). Measured with ``benchmarks/sample_efficiency.py`` on two
trajectories (docs/search-spaces.md): the EMA family reaches 99% of its best gain in 4 evaluations
instead of 6, the pair and decay are unchanged, and the window family's 99% (a one-standard-error
distinction) comes later. A median of 0.3 slowed the pair to 7.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skopt.learning import GaussianProcessRegressor
from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern


class LengthScalePriorGP(GaussianProcessRegressor):
    """skopt's GP regressor whose hyperparameters maximise the marginal likelihood times a log-normal
    prior on every length scale (``shorter_only``: flat above the median, so only its lower half pays).
    ``log_marginal_likelihood_value_`` stays the likelihood alone; the prior's term at the fit is
    ``log_length_scale_prior_value_``.
    """

    log_marginal_likelihood_value_: float  # set by fit
    log_length_scale_prior_value_: float  # set by fit

    def __init__(
        self,
        kernel: Any = None,
        alpha: Any = 1e-10,
        optimizer: Any = "fmin_l_bfgs_b",
        n_restarts_optimizer: int = 0,
        normalize_y: bool = False,
        copy_X_train: bool = True,
        random_state: Any = None,
        noise: Any = None,
        length_scale_median: float = 0.15,
        length_scale_sigma: float = 0.75,
        shorter_only: bool = False,
    ) -> None:
        super().__init__(
            kernel=kernel,
            alpha=alpha,
            optimizer=optimizer,
            n_restarts_optimizer=n_restarts_optimizer,
            normalize_y=normalize_y,
            copy_X_train=copy_X_train,
            random_state=random_state,
            noise=noise,
        )
        self.length_scale_median = length_scale_median
        self.length_scale_sigma = length_scale_sigma
        self.shorter_only = shorter_only

    def _length_scale_indices(self) -> list[int]:
        """Positions of the length scales in the kernel's (log-transformed, free) hyperparameter vector."""
        kernel = self.kernel_ if hasattr(self, "kernel_") else self.kernel  # kernel_: set by fit before optimising
        names: list[str] = []
        for h in kernel.hyperparameters:
            if not h.fixed:
                names.extend([h.name] * h.n_elements)
        return [i for i, n in enumerate(names) if n.endswith("length_scale")]

    def log_length_scale_prior(self, theta: np.ndarray, eval_gradient: bool = False) -> Any:
        """The log prior density of ``theta`` (log hyperparameters) up to a constant, and its gradient."""
        idx = self._length_scale_indices()
        value, scale_grad = self._log_prior(np.asarray(theta)[idx])
        if not eval_gradient:
            return value
        grad = np.zeros(len(theta))
        grad[idx] = scale_grad
        return value, grad

    def _log_prior(self, log_scales: np.ndarray) -> tuple[float, np.ndarray]:
        """The prior's log density (up to a constant) at these log length scales, and its gradient in them:
        a standard normal in ``z``, with ``z`` clipped at 0 above the median when ``shorter_only``."""
        z = (log_scales - np.log(self.length_scale_median)) / self.length_scale_sigma
        if self.shorter_only:
            z = np.minimum(z, 0.0)
        return float(-0.5 * np.sum(z**2)), -z / self.length_scale_sigma

    def log_marginal_likelihood(self, theta: Any = None, eval_gradient: bool = False, clone_kernel: bool = True) -> Any:
        """With ``theta`` given (as sklearn's optimiser calls it): likelihood plus the length-scale prior."""
        out = super().log_marginal_likelihood(theta, eval_gradient=eval_gradient, clone_kernel=clone_kernel)
        if theta is None:  # the fitted model's own value, already stored by fit
            return out
        if eval_gradient:
            value, grad = out
            p, pgrad = self.log_length_scale_prior(theta, eval_gradient=True)
            return value + p, grad + pgrad
        return out + self.log_length_scale_prior(theta)

    def fit(self, X: Any, y: Any) -> LengthScalePriorGP:
        super().fit(X, y)
        # sklearn stored the objective it maximised (likelihood + prior); keep the two apart, so that the
        # logged ``gp.log_marginal_likelihood`` means what its name says
        scales = [
            np.atleast_1d(np.asarray(v, dtype=float))
            for k, v in self.kernel_.get_params().items()
            if k.endswith("length_scale")
        ]
        self.log_length_scale_prior_value_, _ = self._log_prior(np.log(np.concatenate(scales)))
        self.log_marginal_likelihood_value_ -= self.log_length_scale_prior_value_
        return self


def skopt_gp(
    n_dims: int, random_state: int, length_scale_median: float = 0.15, length_scale_sigma: float = 0.75
) -> LengthScalePriorGP:
    """skopt's default GP for a box of ``n_dims`` real coordinates (``skopt.utils.cook_estimator("GP")``:
    same kernel, bounds, noise and restarts), with the length-scale prior: on one coordinate only against
    length scales shorter than the median, on more coordinates both ways (see the module docstring)."""
    kernel = ConstantKernel(1.0, (0.01, 1000.0)) * Matern(
        length_scale=np.ones(n_dims), length_scale_bounds=[(0.01, 100)] * n_dims, nu=2.5
    )
    return LengthScalePriorGP(
        kernel=kernel,
        normalize_y=True,
        noise="gaussian",
        n_restarts_optimizer=2,
        random_state=random_state,
        length_scale_median=length_scale_median,
        length_scale_sigma=length_scale_sigma,
        shorter_only=n_dims == 1,
    )
