"""Fisher-weighted averaging (Matena & Raffel, 2022): Σᵢ Fᵢ·θᵢ / Σᵢ Fᵢ, elementwise.

``Fᵢ`` is a diagonal Fisher estimate of checkpoint i (computed by :mod:`ckptmerge.calibration`);
``floor`` is added to every Fisher entry so a parameter no checkpoint's Fisher sees falls back to
the plain average instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ckptmerge.merge.registry import Calibration, register


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


@dataclass(frozen=True)
class FisherSettings:
    """``conf/merge/fisher.yaml``."""

    floor: float = 1e-8  # added to every Fisher entry
    tokens: int = 8192  # calibration tokens per checkpoint for its Fisher estimate

    def __post_init__(self) -> None:
        if not _is_number(self.floor) or not self.floor > 0:
            raise ValueError(f"floor must be > 0, got {self.floor!r}")
        if not isinstance(self.tokens, int) or isinstance(self.tokens, bool) or self.tokens < 1:
            raise ValueError(f"tokens must be a positive integer, got {self.tokens!r}")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fisher(*args: Any) -> dict[str, torch.Tensor]:
    from ckptmerge.calibration import diagonal_fisher  # the model's gradients: only when the method runs

    return diagonal_fisher(*args)


def _merge(
    key: str, tensors: Sequence[torch.Tensor], fishers: Sequence[Mapping[str, torch.Tensor]], s: FisherSettings
) -> torch.Tensor | None:
    if key not in fishers[0]:
        return None
    return fisher_merge(tensors, [f[key] for f in fishers], s.floor, out_dtype=tensors[0].dtype)


register(
    "fisher",
    needs="calibration",
    calibration=Calibration(_fisher, _merge),
    settings=FisherSettings,
    baseline=True,
    summary="Fisher-weighted averaging (empirical diagonal Fisher on calibration text)",
)
