"""Checkpoint I/O: references (path | repo@revision), lazy tensor reads, content checks, the writer."""

from __future__ import annotations

from ckptmerge.checkpoints.checkpoint_set import Checkpoint, CheckpointSet
from ckptmerge.checkpoints.reader import CheckpointReader, TensorMeta
from ckptmerge.checkpoints.refs import CheckpointRef, parse_ref, resolve

__all__ = ["Checkpoint", "CheckpointSet", "CheckpointReader", "TensorMeta", "CheckpointRef", "parse_ref", "resolve"]
