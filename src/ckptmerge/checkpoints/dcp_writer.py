"""A merged checkpoint written back as a PyTorch Distributed Checkpoint, under the input's own tensor
names, so a training job can continue from it (``merge.output_format=dcp``).

The merge itself is the streaming writer's (bounded memory, verified, finite): it is written first as
safetensors into a staging folder beside the target; ``torch.distributed.checkpoint.save`` then writes
the DCP from memory maps of those files (clean file pages, not process memory), config and tokenizer
are copied beside it, the ``.metadata`` is read back and checked, and the folder is published
atomically (:mod:`ckptmerge.checkpoints.atomic`); the staging folder is removed either way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ckptmerge.checkpoints.atomic import atomic_folder
from ckptmerge.checkpoints.reader import CheckpointReader, TensorMeta
from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("hf", "dcp")


def save_dcp(
    folder: Path,
    target: Path,
    names: Mapping[str, str],
    overwrite: bool,
    side_files: list[Path],
    permutes: Mapping[str, int] | None = None,
) -> Path:
    """The transformers-folder merge in ``folder`` as a DCP at ``target``, tensor ``k`` saved as ``names[k]``
    (the rows of a tensor in ``permutes`` put back in the input's rotary order: a copy of that tensor)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from ckptmerge.checkpoints.names import rotary_rows

    reader = CheckpointReader(folder)
    meta = reader.meta()
    permutes = permutes or {}
    state = {
        names.get(k, k): rotary_rows(reader.get(k), permutes[k], inverse=True) if k in permutes else reader.get(k)
        for k in meta
    }
    expected = {names.get(k, k): m for k, m in meta.items()}
    with atomic_folder(target, overwrite=overwrite) as tmp:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(state, checkpoint_id=str(tmp), no_dist=True)
        del state
        for f in side_files:
            shutil.copy2(f, tmp / f.name)
        md = FileSystemReader(str(tmp)).read_metadata().state_dict_metadata
        got = {
            k: TensorMeta(tuple(v.size), v.properties.dtype)
            for k, v in md.items()
            if isinstance(v, TensorStorageMetadata)
        }
        if got != expected:
            wrong = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
            raise CheckpointError(f"the written Distributed Checkpoint does not hold tensor {wrong[0]} as merged")
    reader.close()
    return Path(target).resolve()


def write_merged_dcp(
    write_hf: Callable[..., Any],
    target: Path,
    names: Mapping[str, str],
    overwrite: bool,
    permutes: Mapping[str, int] | None = None,
) -> Path:
    """Run ``write_hf(staging_target)`` (the streaming merge into a transformers folder), then save that
    folder as a DCP at ``target`` under ``names``; nothing is left but the published target."""
    target = Path(target).resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        hf = staging / "merged"
        write_hf(hf)
        side = [f for f in sorted(hf.iterdir()) if f.is_file() and not f.name.startswith("model")]
        out = save_dcp(hf, target, names, overwrite, side, permutes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("Wrote merged Distributed Checkpoint %s (%d tensors, the input's own names)", out, len(names))
    return out
