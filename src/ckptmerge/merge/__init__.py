"""Pure merge math: tensors and weights in, tensor out; no I/O.

The built-in merge methods are declared here, by name → ``module:object``, with the settings config
validation checks (from :mod:`ckptmerge.merge.settings`, torch-free) and whether ``action=compare``
lists them as a baseline. Their modules (and torch) are imported when a method is first used.
"""

from __future__ import annotations

from typing import Any

from ckptmerge.merge.registry import (
    METHODS,
    Calibration,
    MergeMethod,
    NoSettings,
    baseline_names,
    get_method,
    merge_method,
    method,
    method_names,
    register,
    searchable,
    settings_of,
)
from ckptmerge.merge.settings import EmaSettings, FisherSettings, LawaSettings, RegMeanSettings

# Declaration order is the order of action=compare's default baselines: newest, the reference, first.
METHODS.declare("linear", "ckptmerge.merge.linear:LINEAR")
METHODS.declare("newest", "ckptmerge.merge.soups:NEWEST", baseline=True)
METHODS.declare("uniform", "ckptmerge.merge.soups:UNIFORM", baseline=True)
METHODS.declare("lawa", "ckptmerge.merge.soups:LAWA", baseline=True, settings=LawaSettings)
METHODS.declare("ema", "ckptmerge.merge.soups:EMA", baseline=True, settings=EmaSettings)
METHODS.declare("greedy", "ckptmerge.merge.soups:GREEDY", baseline=True)
METHODS.declare("fisher", "ckptmerge.merge.fisher:FISHER", baseline=True, settings=FisherSettings)
METHODS.declare("regmean", "ckptmerge.merge.regmean:REGMEAN", baseline=True, settings=RegMeanSettings)

_MATH = {"linear_merge": "ckptmerge.merge.linear", "linear_merge_into": "ckptmerge.merge.linear"}


def __getattr__(name: str) -> Any:
    """``from ckptmerge.merge import linear_merge``: the math (and torch) on first use, not on import."""
    if name in _MATH:
        import importlib

        return getattr(importlib.import_module(_MATH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "Calibration",
    "MergeMethod",
    "NoSettings",
    "baseline_names",
    "get_method",
    "linear_merge",
    "linear_merge_into",
    "merge_method",
    "method",
    "method_names",
    "register",
    "searchable",
    "settings_of",
]
