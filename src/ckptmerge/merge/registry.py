"""Merge methods registered by name; an unknown name gets "did you mean ...".

A method here is pure math over the tensors of one parameter: ``fn(tensors, weights, out_dtype)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ckptmerge.config import did_you_mean
from ckptmerge.errors import ConfigError
from ckptmerge.merge.linear import linear_merge

MergeFn = Callable[[Sequence[torch.Tensor], Sequence[float], "torch.dtype | None"], torch.Tensor]

_METHODS: dict[str, MergeFn] = {}


def register(name: str, fn: MergeFn) -> MergeFn:
    """Add a merge method under ``name``."""
    if name in _METHODS:
        raise ValueError(f"merge method {name!r} registered twice")
    _METHODS[name] = fn
    return fn


def get_method(name: str) -> MergeFn:
    """The merge method called ``name`` or a ConfigError naming ``merge.method``."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"merge.method={name!r} is not a known merge method{did_you_mean(name, _METHODS)}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)


register("linear", linear_merge)
