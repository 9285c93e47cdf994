"""The actions ``ckptmerge.cli`` dispatches to (search, merge, pilot, compare, promote, watch) and their
registry: entry points only; what they share is in ``ckptmerge.session``."""

from __future__ import annotations
