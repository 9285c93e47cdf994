"""Pure merge math: tensors and weights in, tensor out; no I/O."""
from __future__ import annotations

from ckptmerge.merge.linear import linear_merge, linear_merge_into
from ckptmerge.merge.registry import get_method, method_names, register

__all__ = ["linear_merge", "linear_merge_into", "get_method", "method_names", "register"]
