"""Pure merge math: tensors and weights in, tensor out; no I/O."""

from __future__ import annotations

from ckptmerge.merge.linear import linear_merge, linear_merge_into
from ckptmerge.merge.registry import METHODS, MergeMethod, get_method, method, method_names, register, searchable

__all__ = [
    "METHODS",
    "MergeMethod",
    "linear_merge",
    "linear_merge_into",
    "get_method",
    "method",
    "method_names",
    "register",
    "searchable",
]
