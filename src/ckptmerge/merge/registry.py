"""Merge methods registered by name (``merge.method``); an unknown name gets "did you mean ...".

A method here is pure math over the tensors of one parameter, ``fn(tensors, weights, out_dtype)``,
declared with what it needs and whether trials can run it in place:

* ``needs="weights"``: the weights and the tensors are all it reads (linear, and any per-tensor rule);
* ``in_place``: a search's trials merge the resident model with this same function, so the merge a
  search evaluates is the merge it writes. ``linear`` has a faster in-place form of its own
  (``ResidentModel.apply``); any other weight-only method runs through ``ResidentModel.apply_fn``.

Methods that need calibration statistics (Fisher averaging, RegMean) are not functions of the weights
and tensors alone; they are ``action=compare`` baselines (see ``actions/compare.py``), not searched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ckptmerge.errors import ConfigError
from ckptmerge.merge.linear import linear_merge
from ckptmerge.registry import Registry

MergeFn = Callable[[Sequence[torch.Tensor], Sequence[float], "torch.dtype | None"], torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn
    needs: str = "weights"
    in_place: bool = True


METHODS: Registry[MergeMethod] = Registry("merge method", "merge.method")


def register(name: str, fn: MergeFn, needs: str = "weights", in_place: bool = True) -> MergeFn:
    """Add a merge method under ``name`` (from inside the package or from a user's module)."""
    if needs != "weights":
        raise ValueError(f"merge method {name!r}: only weight-only methods are registered here, got needs={needs!r}")
    METHODS.register(name)(MergeMethod(name, fn, needs, in_place))
    return fn


def method(name: str) -> MergeMethod:
    return METHODS.get(name)


def get_method(name: str) -> MergeFn:
    """The merge function called ``name`` or a ConfigError naming ``merge.method``."""
    return METHODS.get(name).fn


def searchable(name: str) -> MergeMethod:
    """The method a search evaluates and writes with, refused when trials cannot run it in place."""
    m = METHODS.get(name)
    if not m.in_place:
        raise ConfigError(
            f"merge.method={name} has no in-place form, so a search cannot evaluate what it would write; "
            f"use action=merge for it, or a method with an in-place form ({', '.join(in_place_names())})"
        )
    return m


def in_place_names() -> list[str]:
    return sorted(n for n in METHODS if METHODS.get(n).in_place)


def method_names() -> list[str]:
    return sorted(METHODS)


register("linear", linear_merge)
