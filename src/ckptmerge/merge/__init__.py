"""Pure merge math: tensors and weights in, tensor out; no I/O. Importing the package registers the
built-in merge methods: ``linear``, the soups (``newest``, ``uniform``, ``lawa``, ``ema``, ``greedy``),
``fisher`` and ``regmean``."""

from __future__ import annotations

# isort: off
# Registration order is the order of action=compare's default baselines: newest, the reference, first.
from ckptmerge.merge import soups  # noqa: F401
from ckptmerge.merge import fisher, regmean  # noqa: F401

# isort: on
from ckptmerge.merge.linear import linear_merge, linear_merge_into
from ckptmerge.merge.registry import (
    METHODS,
    Calibration,
    MergeMethod,
    NoSettings,
    baseline_names,
    get_method,
    method,
    method_names,
    register,
    searchable,
)

__all__ = [
    "METHODS",
    "Calibration",
    "MergeMethod",
    "NoSettings",
    "baseline_names",
    "linear_merge",
    "linear_merge_into",
    "get_method",
    "method",
    "method_names",
    "register",
    "searchable",
]
