"""PyTorch Distributed Checkpoints (torchtitan, FSDP2 through accelerate, OLMo-core, recent Megatron), read
without a process group, one tensor at a time.

A DCP folder holds ``__R_W.distcp`` data files and a ``.metadata`` file that the writer saves last: it
lists every entry's global shape and dtype and where each of its shards' bytes are. Only that file is
read to list the tensors; a tensor is read when asked for (``dcp.load`` of that one name into a tensor
of its full shape, assembled from however many ranks wrote it), so optimizer state is never loaded and
memory holds one tensor (plus, for a tensor sharded over ranks, one shard) at a time: each record is
loaded from its byte range, not through ``dcp.load``, which would hold a second copy of the tensor.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import IO, Any, cast

import torch

from ckptmerge.checkpoints.reader import TensorMeta
from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

METADATA = ".metadata"


def is_dcp(folder: Path) -> bool:
    """A DCP folder, finished or not: it has ``.metadata`` or ``*.distcp`` files."""
    return (folder / METADATA).is_file() or any(folder.glob("*.distcp"))


class DcpReader:
    """Names (as saved), shapes and dtypes of a DCP's tensors, and each tensor on demand."""

    format = "dcp"

    def __init__(self, folder: Path, label: str) -> None:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

        self.folder, self.label = Path(folder), label
        if not (self.folder / METADATA).is_file():
            raise CheckpointError(
                f"checkpoint {label} has no {METADATA}: a Distributed Checkpoint writes it last, so this one "
                "is incomplete (still being written, or its save failed)"
            )
        try:
            md = FileSystemReader(str(self.folder)).read_metadata()
        except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError, AttributeError) as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"checkpoint {label}: {METADATA} cannot be read ({msg})") from None
        self._meta: dict[str, TensorMeta] = {
            k: TensorMeta(tuple(int(d) for d in v.size), v.properties.dtype)
            for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)
        }
        self._files = self._check_storage(md)
        # tensor name -> its records: (offsets, sizes) of each saved shard and where its bytes are
        self._records: dict[str, list[tuple[tuple[int, ...], tuple[int, ...], Any]]] = {}
        for k, v in md.state_dict_metadata.items():
            if isinstance(v, TensorStorageMetadata):
                recs = []
                for chunk in v.chunks:
                    info = (md.storage_data or {}).get(MetadataIndex(k, chunk.offsets))
                    if info is None:
                        break
                    recs.append((tuple(int(o) for o in chunk.offsets), tuple(int(n) for n in chunk.sizes), info))
                else:
                    self._records[k] = recs

    def _check_storage(self, md) -> list[Path]:
        """Every data file the metadata names exists and is long enough: a missing or truncated rank file
        is one line now, never a failure halfway through a merge."""
        need: dict[str, int] = {}
        for info in (md.storage_data or {}).values():
            rel = str(info.relative_path)
            need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
        files = []
        for rel, size in sorted(need.items()):
            path = self.folder / rel
            if not path.is_file():
                raise CheckpointError(f"checkpoint {self.label}: data file {rel} named by {METADATA} is missing")
            have = path.stat().st_size
            if have < size:
                raise CheckpointError(
                    f"checkpoint {self.label}: data file {rel} is truncated ({have} bytes, {METADATA} needs {size})"
                )
            files.append(path)
        return files

    def raw_meta(self) -> dict[str, TensorMeta]:
        return dict(self._meta)

    def data_files(self) -> list[Path]:
        return list(self._files)

    def load(self, key: str) -> torch.Tensor:
        """Tensor ``key``: its saved records read straight into it, else (transformed records) ``dcp.load``."""
        try:
            direct = self._load_records(key)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"checkpoint {self.label}: tensor {key} cannot be read ({msg})") from None
        return direct if direct is not None else self._dcp_load(key)

    def _load_records(self, key: str) -> torch.Tensor | None:
        """Each record (one per saving rank's shard) of ``key`` as ``torch.save`` wrote it, loaded from its
        byte range of the data file (``weights_only``): one saved whole is returned as loaded, shards
        are copied into the full tensor one at a time. ``dcp.load`` would load each record and then
        copy it into a preallocated tensor, holding the tensor twice. None when a record is stored
        with a transform (compression) or not as a plain tensor: ``dcp.load`` reads those."""
        from torch.distributed.checkpoint.filesystem import _create_file_view

        m, records = self._meta[key], self._records.get(key, [])
        if not records or any(info.transform_descriptors for _, _, info in records):
            return None
        out: torch.Tensor | None = None
        for offsets, sizes, info in records:
            with open(self.folder / str(info.relative_path), "rb") as f:
                record = cast(IO[bytes], _create_file_view(f, info.offset, info.length))
                t = torch.load(record, map_location="cpu", weights_only=True)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != sizes or t.dtype != m.dtype:
                return None
            if len(records) == 1 and sizes == m.shape and t.is_contiguous():
                return t
            if out is None:
                out = torch.empty(m.shape, dtype=m.dtype)
            view = out
            for dim, (o, n) in enumerate(zip(offsets, sizes)):
                view = view.narrow(dim, o, n)
            view.copy_(t)
            del t
        return out

    def _dcp_load(self, key: str) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp

        m = self._meta[key]
        out = {key: torch.empty(m.shape, dtype=m.dtype)}
        try:
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.simplefilter("ignore", UserWarning)
                dcp.load(out, checkpoint_id=str(self.folder), no_dist=True)
        except Exception as e:  # DCP wraps reader errors in CheckpointException; the first line says what
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"checkpoint {self.label}: tensor {key} cannot be read ({msg})") from None
        return out[key]
