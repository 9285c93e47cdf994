"""RegMean (Jin et al., 2023): closed-form merge of linear layers from the Gram matrices of their inputs.

For a linear layer ``y = x·Wᵀ`` seen by checkpoint i with inputs ``Xᵢ`` and Gram ``Gᵢ = XᵢᵀXᵢ``, the
merge minimising ``Σᵢ ‖Xᵢ·Wᵀ − Xᵢ·Wᵢᵀ‖²`` is ``Wᵀ = (Σᵢ G̃ᵢ)⁻¹ Σᵢ G̃ᵢ·Wᵢᵀ`` with
``G̃ᵢ = α·Gᵢ + (1−α)·diag(Gᵢ)``: ``alpha`` scales the off-diagonal entries (α=1 full RegMean, α=0 a
per-input-feature weighted average), which keeps the sum well conditioned. Everything that is not a
linear layer's weight is averaged uniformly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ckptmerge.merge.registry import Calibration, merge_method
from ckptmerge.merge.settings import RegMeanSettings


def scaled_gram(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``α·G + (1−α)·diag(G)``."""
    g = gram.double()
    return alpha * g + (1.0 - alpha) * torch.diag(torch.diagonal(g))


def regmean_merge(
    weights: Sequence[torch.Tensor],
    grams: Sequence[torch.Tensor],
    alpha: float = 0.9,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Merge linear weights ``(out, in)`` given each checkpoint's input Gram ``(in, in)``."""
    if len(weights) != len(grams) or not weights:
        raise ValueError(f"{len(weights)} weights but {len(grams)} Gram matrices")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("RegMean alpha must be in [0, 1]")
    out_dtype = out_dtype or weights[0].dtype
    n_in = weights[0].shape[1]
    lhs = torch.zeros(n_in, n_in, dtype=torch.float64)
    rhs = torch.zeros(n_in, weights[0].shape[0], dtype=torch.float64)
    for w, g in zip(weights, grams):
        if g.shape != (n_in, n_in):
            raise ValueError(f"Gram {tuple(g.shape)} does not match weight {tuple(w.shape)}")
        gs = scaled_gram(g, alpha)
        lhs += gs
        rhs += gs @ w.double().T
    # Input features no calibration token ever activated carry no information: keep them solvable with
    # a unit diagonal and give their weight columns the plain average instead.
    dead = torch.diagonal(lhs) == 0
    lhs[dead, dead] = 1.0
    merged = torch.linalg.solve(lhs, rhs).T
    if bool(dead.any()):
        mean = torch.stack([w.double() for w in weights]).mean(0)
        merged[:, dead] = mean[:, dead]
    return merged.to(out_dtype).contiguous()


def _grams(*args: Any) -> dict[str, torch.Tensor]:
    from ckptmerge.calibration import linear_input_grams  # forward hooks on the model: only when the method runs

    return linear_input_grams(*args)


def _merge(
    key: str, tensors: Sequence[torch.Tensor], grams: Sequence[Mapping[str, torch.Tensor]], s: RegMeanSettings
) -> torch.Tensor | None:
    module = key[: -len(".weight")] if key.endswith(".weight") else None
    if module is None or module not in grams[0] or tensors[0].dim() != 2:
        return None
    return regmean_merge(tensors, [g[module] for g in grams], s.alpha, out_dtype=tensors[0].dtype)


REGMEAN = merge_method(
    "regmean",
    needs="calibration",
    calibration=Calibration(_grams, _merge),
    settings=RegMeanSettings,
    baseline=True,
    summary="RegMean on every linear layer (Gram of its inputs on calibration text)",
)
