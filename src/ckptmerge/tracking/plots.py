"""Plots for MLflow: the GP posterior over a one-coordinate space (λ for a pair, β, window, shape for the
families) with observations and acquisitions."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ckptmerge.search.searchers import Posterior  # noqa: E402

LAMBDA = "λ (weight of the newest checkpoint)"


def posterior_figure(
    post: Posterior,
    xs: Sequence[float],
    ys: Sequence[float],
    bounds: tuple[float, float],
    next_x: float | None = None,
    title: str = "",
    coordinate: str = LAMBDA,
) -> plt.Figure:
    """GP posterior mean ± 2σ over the space's box ([α, 1] for λ), the observations, and each acquisition
    (scaled to [0, 1])."""
    short = coordinate.split(" ")[0]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot(post.grid, post.mean, color="C0", label="GP mean")
    ax.fill_between(post.grid, post.mean - 2 * post.std, post.mean + 2 * post.std, color="C0", alpha=0.2, label="±2σ")
    ax.scatter(xs, ys, color="k", zorder=3, label="evaluated")
    if len(xs):
        best = int(np.argmax(ys))
        ax.scatter([xs[best]], [ys[best]], color="C3", s=80, marker="*", zorder=4, label=f"best {short}={xs[best]:.3f}")
    if next_x is not None:
        for a in (ax, ax2):
            a.axvline(next_x, color="C2", ls="--", lw=1)
    ax.set_ylabel("objective (higher is better)")
    ax.set_title(title or f"GP posterior over {short}")
    ax.legend(loc="best", fontsize=8)
    for i, (name, values) in enumerate(post.acquisitions.items()):
        v = np.asarray(values, dtype=float)
        span = float(v.max() - v.min())
        ax2.plot(post.grid, (v - v.min()) / span if span > 0 else np.zeros_like(v), color=f"C{i + 4}", label=name)
    ax2.set_xlabel(coordinate)
    ax2.set_ylabel("acquisition\n(scaled)")
    ax2.set_xlim(*bounds)
    if post.acquisitions:
        ax2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def trials_figure(
    xs: Sequence[float], ys: Sequence[float], bounds: tuple[float, float], title: str = "", coordinate: str = LAMBDA
) -> plt.Figure:
    """Objective against the space's one coordinate for model-free searchers (grid, random)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    order = np.argsort(xs)
    ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], "o-", color="C0")
    ax.set_xlim(*bounds)
    ax.set_xlabel(coordinate)
    ax.set_ylabel("objective (higher is better)")
    ax.set_title(title or f"objective over {coordinate.split(' ')[0]}")
    fig.tight_layout()
    return fig
