"""Where every merged tensor goes: shards, safetensors headers and byte offsets, decided before any data.

Shapes and dtypes are known from the inputs' metadata, so the whole output can be laid out up front:
each shard's header is final before its first byte of data is written, and every tensor (or chunk of
one) is written straight to its offset. Nothing ever has to hold a shard in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ckptmerge.checkpoints.reader import ST_NAMES, TensorMeta
from ckptmerge.errors import CheckpointError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Placement:
    """One output tensor: its name, shape, dtype, shard and absolute offset in that shard's file."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    shard: int
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return TensorMeta(self.shape, self.dtype).numel


@dataclass(frozen=True)
class Shard:
    """One output file: its name, complete header bytes (length prefix included), size and tensors."""

    name: str
    header: bytes
    size: int
    tensors: tuple[Placement, ...]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _group(meta: Mapping[str, TensorMeta], dtypes: Mapping[str, torch.dtype], shard_bytes: int) -> list[list[str]]:
    """Tensors in checkpoint order, cut into groups of at most ``shard_bytes`` (a bigger tensor stands alone)."""
    groups: list[list[str]] = [[]]
    size = 0
    for key, m in meta.items():
        n = TensorMeta(m.shape, dtypes[key]).nbytes
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += n
    return groups


def plan_shards(
    meta: Mapping[str, TensorMeta],
    dtypes: Mapping[str, torch.dtype],
    shard_bytes: int,
    metadata: Mapping[str, str] | None = None,
) -> list[Shard]:
    """Lay out the output: shard files of at most ``shard_bytes`` of data each, with final headers.

    Within a shard, tensors are ordered by element size, largest first (as safetensors itself does),
    then by name: every tensor then starts at an offset aligned to its element size, so the output can
    be memory-mapped as zero-copy views like any other safetensors file.
    """
    if shard_bytes <= 0:
        raise CheckpointError(f"shard size must be positive, got {shard_bytes}")
    for key, dtype in dtypes.items():
        if dtype not in ST_NAMES:
            raise CheckpointError(f"tensor {key} has dtype {dtype}, which safetensors cannot store")
    groups = _group(meta, dtypes, shard_bytes)
    names = (
        [SAFE_SINGLE]
        if len(groups) == 1
        else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    )
    shards = []
    for i, (name, keys) in enumerate(zip(names, groups)):
        ordered = sorted(keys, key=lambda k: (-_itemsize(dtypes[k]), k))
        entries: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        pos = 0
        spans = []
        for key in ordered:
            n = TensorMeta(meta[key].shape, dtypes[key]).nbytes
            entries[key] = {
                "dtype": ST_NAMES[dtypes[key]],
                "shape": list(meta[key].shape),
                "data_offsets": [pos, pos + n],
            }
            spans.append((key, pos, n))
            pos += n
        text = json.dumps(entries, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as safetensors pads it
        header = struct.pack("<Q", len(text)) + text
        base = len(header)
        placed = tuple(Placement(k, tuple(meta[k].shape), dtypes[k], i, base + p, n) for k, p, n in spans)
        shards.append(Shard(name, header, base + pos, placed))
    return shards


def index_json(shards: list[Shard]) -> str | None:
    """The ``model.safetensors.index.json`` text for a sharded output (None for a single file)."""
    if len(shards) < 2:
        return None
    weight_map = {p.key: s.name for s in shards for p in s.tensors}
    total = sum(p.nbytes for s in shards for p in s.tensors)
    return json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
