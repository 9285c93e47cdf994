"""The settings of the built-in merge methods, declared without their math (no torch here).

Config validation checks ``merge.<setting>`` and ``compare.settings.<method>.<setting>`` against
these classes, so a bad value fails before torch is imported; each method's module uses the same
class. The defaults here are the only ones: ``conf/merge/<method>.yaml`` reads them from this schema.
"""

from __future__ import annotations

from ckptmerge.schema import Number, key, section


@section()
class NoSettings:
    """The settings of a method that has none."""


@section()
class LawaSettings:
    """``merge=lawa``: latest weight averaging."""

    k: int = key(3, "a positive integer (how many of the newest checkpoints are averaged)", ge=1)


@section()
class EmaSettings:
    """``merge=ema``: θ ← β·θ + (1−β)·θ_t along the checkpoints."""

    beta: Number = key(0.5, "in [0, 1)", ge=0.0, lt=1.0)


@section()
class FisherSettings:
    """``merge=fisher``: Fisher-weighted averaging."""

    # added to every Fisher entry: a parameter no Fisher sees falls back to the plain average
    floor: Number = key(1e-8, "> 0", gt=0.0)
    tokens: int = key(8192, "a positive integer (calibration tokens per checkpoint)", ge=1)


@section()
class RegMeanSettings:
    """``merge=regmean``: RegMean on every linear layer."""

    # scale of the Gram matrices' off-diagonal entries (1: full RegMean, 0: per-feature average)
    alpha: Number = key(0.9, "in [0, 1]", ge=0.0, le=1.0)
    tokens: int = key(8192, "a positive integer (calibration tokens per checkpoint)", ge=1)
