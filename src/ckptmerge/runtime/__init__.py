"""Runtime: seeds, threads, devices."""

from __future__ import annotations

from ckptmerge.runtime.seeding import seed_everything

__all__ = ["seed_everything"]
