"""Fisher-weighted averaging (Matena & Raffel, 2022): Σᵢ Fᵢ·θᵢ / Σᵢ Fᵢ, elementwise.

``Fᵢ`` is a diagonal Fisher estimate of checkpoint i (computed by :mod:`ckptmerge.calibration`);
``floor`` is added to every Fisher entry so a parameter no checkpoint's Fisher sees falls back to
the plain average instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ckptmerge.merge.registry import Calibration, merge_method
from ckptmerge.merge.settings import FisherSettings


def fisher_merge(
    tensors: Sequence[torch.Tensor],
    fishers: Sequence[torch.Tensor],
    floor: float = 1e-8,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Elementwise Fisher-weighted mean of ``tensors`` (fp32 arithmetic, cast to ``out_dtype``)."""
    if len(tensors) != len(fishers) or not tensors:
        raise ValueError(f"{len(tensors)} tensors but {len(fishers)} Fisher estimates")
    out_dtype = out_dtype or tensors[0].dtype
    if not tensors[0].is_floating_point():
        return tensors[-1].clone()
    num = torch.zeros(tensors[0].shape, dtype=torch.float32)
    den = torch.zeros(tensors[0].shape, dtype=torch.float32)
    for t, f in zip(tensors, fishers):
        if f.shape != t.shape:
            raise ValueError(f"Fisher shape {tuple(f.shape)} vs tensor {tuple(t.shape)}")
        fw = f.float() + floor
        num.add_(fw * t.float())
        den.add_(fw)
    return (num / den).to(out_dtype)


def _fisher(*args: Any) -> dict[str, torch.Tensor]:
    from ckptmerge.calibration import diagonal_fisher  # the model's gradients: only when the method runs

    return diagonal_fisher(*args)


def _merge(
    key: str, tensors: Sequence[torch.Tensor], fishers: Sequence[Mapping[str, torch.Tensor]], s: FisherSettings
) -> torch.Tensor | None:
    if key not in fishers[0]:
        return None
    return fisher_merge(tensors, [f[key] for f in fishers], s.floor, out_dtype=tensors[0].dtype)


FISHER = merge_method(
    "fisher",
    needs="calibration",
    calibration=Calibration(_fisher, _merge),
    settings=FisherSettings,
    baseline=True,
    summary="Fisher-weighted averaging (empirical diagonal Fisher on calibration text)",
)
