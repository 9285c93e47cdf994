"""ckptmerge: merge intermediate pretraining checkpoints with Bayesian optimisation."""

from __future__ import annotations

__version__ = "0.1.0"
