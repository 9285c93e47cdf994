"""Lazy, zero-copy, tensor-by-tensor reads of a transformers checkpoint folder.

Safetensors (single file or sharded with an index) are parsed from their headers alone; a tensor is a
view of a memory map of its file (``torch.frombuffer`` at the header's offsets), so asking for it
reads nothing until its bytes are used, and then straight from the page cache, without a copy. The
maps are private (copy-on-write): writing into a view can never change the file. ``.bin`` checkpoints
are loaded with ``weights_only=True`` and ``mmap=True``: no pickle code runs and no tensor data is
copied into memory. Metadata (names, shapes, dtypes) never touches tensor data.
"""

from __future__ import annotations

import json
import logging
import mmap
import pickle
import struct
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ckptmerge.checkpoints import pages
from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}
# torch dtype -> safetensors name, for the writer's headers.
ST_NAMES = {v: k for k, v in _ST_DTYPES.items() if v is not None}


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class TensorReader(Protocol):
    """What the merge stream, the resident model, the content checks and the fingerprints ask of a
    checkpoint: a transformers folder (:class:`CheckpointReader`) or a training-native one
    (:class:`~ckptmerge.checkpoints.native.NativeReader`)."""

    folder: Path
    format: str

    def keys(self) -> list[str]: ...
    def meta(self) -> dict[str, TensorMeta]: ...
    def get(self, key: str) -> torch.Tensor: ...
    def byte_range(self, key: str) -> tuple[Path, int, int] | None: ...
    def data_files(self) -> list[Path]: ...
    def nbytes(self) -> int: ...
    def close(self) -> None: ...


def _read_safetensors_layout(path: Path) -> tuple[dict, int]:
    """Header of a safetensors file and where its data starts, checked against the file size."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than its header")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    size = path.stat().st_size
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        raise CheckpointError(f"{path} is not a readable safetensors file (malformed tensor entry)") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: header promises {8 + n + end} bytes, file has {size}")
    return header, 8 + n


def _read_safetensors_header(path: Path) -> dict:
    """Header of a safetensors file, checked against the file size so truncation is caught early."""
    return _read_safetensors_layout(path)[0]


@dataclass(frozen=True)
class _Loc:
    """Where a safetensors tensor's bytes are: its file and absolute [start, end)."""

    file: Path
    start: int
    end: int


class CheckpointReader:
    """Names, shapes and dtypes of a checkpoint's tensors, and zero-copy views of the tensors on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.format, self._key_to_file = self._discover()
        self._meta: dict[str, TensorMeta] = {}
        self._loc: dict[str, _Loc] = {}
        self._open: dict[Path, object] = {}
        # Maps this reader holds open, registered with ``pages`` for as long as it holds them (so pages
        # are only ever dropped from live file mappings); a forgotten reader unregisters when collected.
        self._ranges: list[int] = []
        self._finalizer = weakref.finalize(self, pages.unregister_file_ranges, self._ranges)
        if self.format == "safetensors":
            for file in self._files():
                header, data_start = _read_safetensors_layout(file)
                for key, info in header.items():
                    if key == "__metadata__":
                        continue
                    if self._key_to_file.get(key, file) != file:
                        continue  # the index assigns this name to another shard
                    self._add_safetensors_entry(file, key, info, data_start)
            missing = [k for k in self._key_to_file if k not in self._meta]
            if missing:
                raise CheckpointError(f"{self.folder}: index names tensor {missing[0]} that no shard holds")

    def _add_safetensors_entry(self, file: Path, key: str, info: dict, data_start: int) -> None:
        dtype = _ST_DTYPES.get(str(info.get("dtype")))
        if dtype is None:
            raise CheckpointError(f"{file}: tensor {key} has unsupported dtype {info.get('dtype')}")
        meta = TensorMeta(tuple(int(d) for d in info["shape"]), dtype)
        start, end = (int(x) for x in info["data_offsets"])
        if end - start != meta.nbytes:
            raise CheckpointError(
                f"{file}: tensor {key} spans {end - start} bytes, its shape and dtype need {meta.nbytes}"
            )
        self._meta[key] = meta
        self._loc[key] = _Loc(file, data_start + start, data_start + end)
        self._key_to_file.setdefault(key, file)

    # -- discovery -----------------------------------------------------------------------------
    def _discover(self) -> tuple[str, dict[str, Path]]:
        f = self.folder
        if (f / SAFE_INDEX).is_file():
            return "safetensors", self._from_index(f / SAFE_INDEX)
        if (f / SAFE_SINGLE).is_file():
            return "safetensors", {}
        singles = sorted(f.glob("*.safetensors"))
        if singles:
            return "safetensors", {}
        if (f / BIN_INDEX).is_file():
            return "bin", self._from_index(f / BIN_INDEX)
        if (f / BIN_SINGLE).is_file():
            return "bin", {}
        raise CheckpointError(f"no weights in {f}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}")

    def _from_index(self, index: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid weight index ({e})") from None
        out = {}
        for key, name in weight_map.items():
            p = self.folder / name
            if not p.is_file():
                raise CheckpointError(f"{index} names shard {name}, which is missing")
            out[key] = p
        return out

    def _files(self) -> list[Path]:
        if self._key_to_file:
            return sorted(set(self._key_to_file.values()))
        if self.format == "safetensors":
            single = self.folder / SAFE_SINGLE
            return [single] if single.is_file() else sorted(self.folder.glob("*.safetensors"))
        return [self.folder / BIN_SINGLE]

    # -- .bin ----------------------------------------------------------------------------------
    def _bin_state(self, file: Path) -> dict[str, torch.Tensor]:
        state = self._open.get(file)
        if state is None:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(
                    f"{file} needs unsafe unpickling (it holds more than tensors); refusing to load it: "
                    f"{str(e).splitlines()[0]}"
                ) from None
            except (RuntimeError, OSError, EOFError) as e:
                raise CheckpointError(f"{file} is not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{file} does not hold a flat dict of tensors")
            spans = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in state.values()]
            if spans:  # every storage is a slice of torch's one private map of the file
                lo, hi = min(a for a, _ in spans), max(a + n for a, n in spans)
                pages.register_file_range(lo, hi - lo)
                self._ranges.append(lo)
            self._open[file] = state
        return state  # type: ignore[return-value]

    def _ensure_bin_meta(self) -> None:
        if self.format != "bin" or self._meta:
            return
        for file in self._files():
            for key, t in self._bin_state(file).items():
                self._meta[key] = TensorMeta(tuple(t.shape), t.dtype)
                self._key_to_file.setdefault(key, file)

    # -- safetensors maps ----------------------------------------------------------------------
    def _map(self, file: Path) -> mmap.mmap:
        mm = self._open.get(file)
        if mm is None:
            try:
                with open(file, "rb") as f:
                    # ACCESS_COPY: a private map, writable in memory (torch.frombuffer wants that) but
                    # never written back; reading costs no copy.
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{file} cannot be memory-mapped ({e})") from None
            start = torch.frombuffer(mm, dtype=torch.uint8).data_ptr()
            pages.register_file_range(start, len(mm))
            self._ranges.append(start)
            self._open[file] = mm
        return mm  # type: ignore[return-value]

    # -- public --------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        self._ensure_bin_meta()
        return list(self._meta)

    def meta(self) -> dict[str, TensorMeta]:
        self._ensure_bin_meta()
        return dict(self._meta)

    def get(self, key: str) -> torch.Tensor:
        """One tensor (CPU), a zero-copy view of the memory-mapped file; nothing is read until it is used."""
        self._ensure_bin_meta()
        if key not in self._meta:
            raise CheckpointError(f"{self.folder} has no tensor named {key}")
        if self.format == "bin":
            return self._bin_state(self._key_to_file[key])[key]
        loc, m = self._loc[key], self._meta[key]
        if m.numel == 0:
            return torch.empty(m.shape, dtype=m.dtype)
        try:
            flat = torch.frombuffer(self._map(loc.file), dtype=m.dtype, count=m.numel, offset=loc.start)
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(f"{loc.file}: tensor {key} cannot be read ({e})") from None
        return flat.view(m.shape)

    def byte_range(self, key: str) -> tuple[Path, int, int] | None:
        """``(file, start, end)`` of a safetensors tensor's bytes; None for ``.bin``."""
        loc = self._loc.get(key)
        return (loc.file, loc.start, loc.end) if loc else None

    def data_files(self) -> list[Path]:
        """The files holding the tensors (what a fingerprint of the checkpoint covers)."""
        return sorted(self.folder.glob("*.safetensors")) + sorted(self.folder.glob("*.bin"))

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.get(key)

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.meta().values())

    def close(self) -> None:
        """Forget the maps; each is unmapped when the last tensor viewing it is gone."""
        pages.unregister_file_ranges(self._ranges)
        self._open.clear()


def reads_into_memory(reader: TensorReader) -> bool:
    """Whether ``reader.get`` reads a tensor into process memory (ZeRO, DCP readers) rather than giving a
    zero-copy view of a transformers folder's memory-mapped file: such tensors cost process memory until
    freed, and a part of one kept alone must be a copy, not a view of the whole."""
    return not isinstance(reader, CheckpointReader)
