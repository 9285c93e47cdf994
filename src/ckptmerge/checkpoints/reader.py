"""Lazy, tensor-by-tensor reads of a transformers checkpoint folder.

Safetensors (single file or sharded with an index) are opened with ``safe_open`` and read one
tensor at a time; ``.bin`` checkpoints are loaded with ``weights_only=True`` and ``mmap=True``, so no
pickle code runs and no shard is copied into memory before a tensor is asked for.
"""
from __future__ import annotations

import json
import logging
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def _read_safetensors_header(path: Path) -> dict:
    """Header of a safetensors file, checked against the file size so truncation is caught early."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than its header")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    size = path.stat().st_size
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: header promises {8 + n + end} bytes, file has {size}")
    return header


class CheckpointReader:
    """Names, shapes and dtypes of a checkpoint's tensors, and the tensors themselves on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.format, self._key_to_file = self._discover()
        self._meta: dict[str, TensorMeta] = {}
        self._open: dict[Path, object] = {}
        if self.format == "safetensors":
            for file in self._files():
                header = _read_safetensors_header(file)
                for key, info in header.items():
                    if key == "__metadata__":
                        continue
                    dtype = _ST_DTYPES.get(info["dtype"])
                    if dtype is None:
                        raise CheckpointError(f"{file}: tensor {key} has unsupported dtype {info['dtype']}")
                    self._meta[key] = TensorMeta(tuple(info["shape"]), dtype)
                    self._key_to_file.setdefault(key, file)
            missing = [k for k in self._key_to_file if k not in self._meta]
            if missing:
                raise CheckpointError(f"{self.folder}: index names tensor {missing[0]} that no shard holds")

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
        raise CheckpointError(
            f"no weights in {f}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}"
        )

    def _from_index(self, index: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
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
            self._open[file] = state
        return state  # type: ignore[return-value]

    def _ensure_bin_meta(self) -> None:
        if self.format != "bin" or self._meta:
            return
        for file in self._files():
            for key, t in self._bin_state(file).items():
                self._meta[key] = TensorMeta(tuple(t.shape), t.dtype)
                self._key_to_file.setdefault(key, file)

    # -- public --------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        self._ensure_bin_meta()
        return list(self._meta)

    def meta(self) -> dict[str, TensorMeta]:
        self._ensure_bin_meta()
        return dict(self._meta)

    def get(self, key: str) -> torch.Tensor:
        """One tensor (CPU). Safetensors reads only that tensor's bytes; ``.bin`` is memory-mapped."""
        self._ensure_bin_meta()
        file = self._key_to_file.get(key) or (self._files()[0] if len(self._files()) == 1 else None)
        if key not in self._meta or file is None:
            raise CheckpointError(f"{self.folder} has no tensor named {key}")
        if self.format == "bin":
            return self._bin_state(file)[key]
        handle = self._open.get(file)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None
            self._open[file] = handle
        try:
            return handle.get_tensor(key)  # type: ignore[attr-defined]
        except Exception as e:
            raise CheckpointError(f"{file}: tensor {key} cannot be read ({e})") from None

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.get(key)

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.meta().values())

    def close(self) -> None:
        self._open.clear()
