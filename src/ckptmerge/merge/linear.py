"""Weighted linear merge: pure tensor math, no I/O.

Arithmetic runs in fp32 (fp64 when an input is fp64) and is cast back to the output dtype. A
one-hot weight vector copies the chosen tensor, so λ=1 reproduces the newest checkpoint bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ckptmerge.merge.registry import merge_method


def _acc_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _one_hot(weights: Sequence[float]) -> int | None:
    nonzero = [i for i, w in enumerate(weights) if w != 0.0]
    if len(nonzero) == 1 and weights[nonzero[0]] == 1.0:
        return nonzero[0]
    return None


def _check(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    if not tensors:
        raise ValueError("nothing to merge")
    shape = tensors[0].shape
    for t in tensors[1:]:
        if t.shape != shape:
            raise ValueError(f"shape mismatch: {tuple(shape)} vs {tuple(t.shape)}")


def linear_merge(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``Σ wᵢ·tᵢ`` accumulated in fp32, returned in ``out_dtype`` (default: the first input's dtype).

    Non-floating tensors (integer or bool buffers) cannot be averaged: the last (newest) one is returned.
    """
    _check(tensors, weights)
    out_dtype = out_dtype or tensors[0].dtype
    if not tensors[0].is_floating_point():
        return tensors[-1].clone()
    hot = _one_hot(weights)
    if hot is not None:
        return tensors[hot].to(out_dtype, copy=True)
    acc_dtype = _acc_dtype(tensors)
    acc = tensors[0].to(acc_dtype) * float(weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        acc.add_(t.to(acc_dtype), alpha=float(w))
    return acc.to(out_dtype)


# Each output element depends only on the same element of the inputs: the streaming writer may feed
# this method matching flat chunks of a tensor instead of whole tensors (bounded memory, cache-sized).
linear_merge.elementwise = True  # type: ignore[attr-defined]


def linear_merge_into(
    dest: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], scratch: torch.Tensor | None = None
) -> None:
    """Overwrite ``dest`` in place with ``Σ wᵢ·tᵢ`` (fp32 arithmetic, cast to ``dest.dtype``).

    No allocation when ``dest`` has the accumulation dtype (it accumulates in place) or a flat
    ``scratch`` of that dtype with at least ``dest.numel()`` elements is given: a search's trials
    and the streaming writer's chunks reuse their memory instead of faulting fresh pages in.
    ``dest`` must not share memory with a source.
    """
    _check(tensors, weights)
    if tuple(dest.shape) != tuple(tensors[0].shape):
        raise ValueError(f"destination shape {tuple(dest.shape)} vs source {tuple(tensors[0].shape)}")
    if not dest.is_floating_point():
        dest.copy_(tensors[-1])
        return
    hot = _one_hot(weights)
    if hot is not None:
        dest.copy_(tensors[hot])
        return
    # Same operations in the same order as linear_merge (t₀ in fp32 times w₀, then += wᵢ·tᵢ with tᵢ
    # promoted to fp32 as it is read), so a trial, a streamed chunk and linear_merge agree bitwise.
    acc_dtype = _acc_dtype(tensors)
    if dest.dtype == acc_dtype and dest.is_contiguous():
        acc = dest
    elif (
        scratch is not None
        and scratch.dtype == acc_dtype
        and scratch.numel() >= dest.numel()
        and scratch.device == dest.device
    ):
        acc = scratch[: dest.numel()].view(dest.shape)
    else:
        acc = torch.empty(dest.shape, dtype=acc_dtype, device=dest.device)
    acc.copy_(tensors[0])
    acc.mul_(float(weights[0]))
    for t, w in zip(tensors[1:], weights[1:]):
        acc.add_(t.to(device=dest.device), alpha=float(w))
    if acc is not dest:
        dest.copy_(acc)


# The streaming writer merges straight into its reusable output buffers through this.
linear_merge.into = linear_merge_into  # type: ignore[attr-defined]

# The merge method ``linear`` (declared in merge/__init__.py), beside its function.
LINEAR = merge_method("linear", linear_merge, summary="weighted linear merge Σ wᵢ·θᵢ")
