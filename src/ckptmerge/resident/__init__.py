"""The resident model: one model in memory whose parameters every trial overwrites with a merge, in place.

``base.ResidentModel`` holds the shared set-up and the merge in place; ``single.SingleResidentModel``
keeps the model whole in one process, ``zero.ZeroResidentModel`` partitioned over DeepSpeed ranks (ZeRO-3).
"""

from __future__ import annotations

from ckptmerge.resident.base import ResidentModel, resolve_device, resolve_dtype
from ckptmerge.resident.single import SingleResidentModel

__all__ = ["ResidentModel", "SingleResidentModel", "resolve_device", "resolve_dtype"]
