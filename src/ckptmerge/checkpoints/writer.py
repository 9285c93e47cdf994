"""Writing merged checkpoints: streamed into an atomic folder (:mod:`ckptmerge.checkpoints.atomic`), verified,
then renamed into place.

A failed or interrupted merge leaves at most a hidden ``.NAME.partial-*`` folder, never a half-written
target; an existing target is never replaced unless ``overwrite`` is set or it is the same owner's.
(Like ``save_pretrained``
and ``cp``, nothing is fsync'ed unless asked: the guarantee is against errors and crashes of this
process, not against power loss, unless ``fsync=True``.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ckptmerge.checkpoints import pages
from ckptmerge.checkpoints.atomic import atomic_folder
from ckptmerge.checkpoints.layout import SAFE_INDEX, index_json, plan_shards
from ckptmerge.checkpoints.reader import CheckpointReader, TensorMeta, TensorReader
from ckptmerge.checkpoints.stream import (
    DEFAULT_CHUNK_ELEMS,
    DEFAULT_PREFETCH_BYTES,
    DEFAULT_WRITE_BYTES,
    MergeStream,
    StreamStats,
    all_finite,
)
from ckptmerge.errors import CheckpointError

if TYPE_CHECKING:
    from ckptmerge.checkpoints.inline_checks import InlineChecks

log = logging.getLogger(__name__)


def verify_layout(folder: Path, expected: Mapping[str, TensorMeta]) -> CheckpointReader:
    """Headers (and index) of a written folder: every expected tensor present, shape and dtype as expected.

    Reads only headers; the reader also checks each file is as long as its header promises.
    """
    reader = CheckpointReader(folder)
    meta = reader.meta()
    missing = sorted(set(expected) - set(meta))
    if missing:
        raise CheckpointError(f"written checkpoint lacks tensor {missing[0]} ({len(missing)} missing)")
    extra = sorted(set(meta) - set(expected))
    if extra:
        raise CheckpointError(f"written checkpoint has unexpected tensor {extra[0]}")
    for key, m in expected.items():
        got = meta[key]
        if got.shape != m.shape or got.dtype != m.dtype:
            raise CheckpointError(
                f"written tensor {key} is {list(got.shape)} {got.dtype}, expected {list(m.shape)} {m.dtype}"
            )
    return reader


def verify_folder(
    folder: Path,
    expected: Mapping[str, TensorMeta],
    allow_nonfinite: Collection[str] = (),
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> None:
    """Every expected tensor present with its shape and dtype, and no NaN or Inf anywhere.

    The data is read back through memory maps, a chunk at a time, dropping each chunk's pages after
    the check, so memory stays flat whatever the size. ``allow_nonfinite`` names tensors whose sources
    were already non-finite (see :class:`StreamStats`).
    """
    reader = verify_layout(folder, expected)
    for key, m in reader.meta().items():
        if not m.dtype.is_floating_point or key in allow_nonfinite:
            continue
        flat = reader.get(key).reshape(-1)
        for s in range(0, flat.numel(), chunk_elems):
            part = flat[s : s + chunk_elems]
            ok = all_finite(part)
            pages.release([part])
            if not ok:
                raise CheckpointError(f"written tensor {key} contains NaN or Inf")
    reader.close()


# Files of a source checkpoint that a merged folder needs besides the weights.
_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)


def _check_sources(sources: Sequence[TensorReader], weights: Sequence[float]) -> dict[str, TensorMeta]:
    """The newest source's tensors, which every other source must match (cheap: headers only)."""
    if len(sources) < 2 or len(sources) != len(weights):
        raise CheckpointError(f"need at least 2 sources and one weight each, got {len(sources)} and {len(weights)}")
    meta = sources[-1].meta()
    for r in sources[:-1]:
        other = r.meta()
        for key, m in meta.items():
            o = other.get(key)
            if o is None:
                raise CheckpointError(f"{r.folder} lacks tensor {key}")
            if o.shape != m.shape or o.dtype != m.dtype:
                raise CheckpointError(
                    f"{r.folder}: tensor {key} is {list(o.shape)} {o.dtype}, newest has {list(m.shape)} {m.dtype}"
                )
    return meta


def merged_size(meta: Mapping[str, TensorMeta], out_dtype: torch.dtype | None = None) -> int:
    """Bytes of tensor data a merge of checkpoints with these tensors writes (floating ones in ``out_dtype``)."""
    size = 0
    for m in meta.values():
        dt = out_dtype if (out_dtype is not None and m.dtype.is_floating_point) else m.dtype
        size += m.numel * torch.empty((), dtype=dt).element_size()
    return size


def check_space(folder: Path, need: int) -> None:
    """Fail when the file system of ``folder`` (or, if it does not exist yet, its parent) lacks ``need``
    bytes plus a margin."""
    folder = Path(folder)
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    if free < need + (64 << 20):
        raise CheckpointError(
            f"not enough disk space in {folder.parent}: the merge needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
        )


def _copy_side_files(side_folder: Path, tmp: Path, out_dtype: torch.dtype | None) -> None:
    for f in list(_SIDE_FILES) + [p.name for p in Path(side_folder).glob("*.py")]:
        src = Path(side_folder) / f
        if src.is_file():
            shutil.copy2(src, tmp / f)
    if out_dtype is not None and (tmp / "config.json").is_file():
        cfg = json.loads((tmp / "config.json").read_text())
        name = str(out_dtype).replace("torch.", "")
        cfg["dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"] = name
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))


def write_merged(
    sources: Sequence[TensorReader],
    side_folder: Path,
    weights: Sequence[float],
    target: Path,
    merge_fn: Callable[..., torch.Tensor],
    shard_bytes: int,
    out_dtype: torch.dtype | None = None,
    overwrite: bool = False,
    extra_files: Mapping[str, str] | None = None,
    progress: bool = False,
    *,
    owner: str | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    write_bytes: int = DEFAULT_WRITE_BYTES,
    threads: int | None = None,
    reread: bool = False,
    fsync: bool = False,
    stats: StreamStats | None = None,
    checks: InlineChecks | None = None,
) -> Path:
    """Stream ``merge_fn`` over every tensor of ``sources`` into sharded safetensors at ``target``.

    The output is laid out first (shards of at most ``shard_bytes``, headers final), then each merged
    tensor, chunk by chunk for an elementwise method, is written straight to its offset by a pipeline
    whose memory is bounded by ``prefetch_bytes + write_bytes`` plus one chunk (see
    :mod:`ckptmerge.checkpoints.stream`). Floating tensors are written in ``out_dtype`` (default: the
    inputs'). Config, tokenizer and remote-code files are copied from ``side_folder`` (the newest
    checkpoint). Before the folder is renamed into place it is verified: every tensor present with its
    shape and dtype (headers re-read from disk), every byte written, no NaN or Inf (checked on each
    merged chunk as it is written, or, with ``reread``, by reading the files back). ``stats``, when
    given, receives what the merge did. ``checks``, when given, are the inputs' content checks, fed by
    the stream's reads and finished before the folder is published (a refusal leaves nothing).
    ``owner``, when given, is recorded in ``ckptmerge.json`` and
    lets the same owner replace its own earlier output (see :mod:`ckptmerge.checkpoints.atomic`).
    """
    from tqdm.auto import tqdm

    from ckptmerge.progress import interactive

    meta = _check_sources(sources, weights)
    dtypes = {
        k: (out_dtype if (out_dtype is not None and m.dtype.is_floating_point) else m.dtype) for k, m in meta.items()
    }
    expected = {k: TensorMeta(m.shape, dtypes[k]) for k, m in meta.items()}
    shards = plan_shards(meta, dtypes, shard_bytes)
    total = sum(p.nbytes for s in shards for p in s.tensors)
    with atomic_folder(target, overwrite=overwrite, owner=owner) as tmp:
        check_space(tmp, sum(s.size for s in shards))
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="merge",
            disable=not progress or not interactive(),
        )
        try:
            result = MergeStream(
                sources,
                weights,
                merge_fn,
                shards,
                tmp,
                chunk_elems=chunk_elems,
                prefetch_bytes=prefetch_bytes,
                write_bytes=write_bytes,
                progress=bar,
                checks=checks,
            ).run(threads)
        finally:
            bar.close()
        if checks is not None:
            checks.finish()
        index = index_json(shards)
        if index is not None:
            (tmp / SAFE_INDEX).write_text(index)
        _copy_side_files(Path(side_folder), tmp, out_dtype)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        if reread:
            verify_folder(tmp, expected, allow_nonfinite=result.inherited_nonfinite)
        else:
            verify_layout(tmp, expected).close()
        if result.inherited_nonfinite:
            log.warning(
                "%d tensors carry NaN/Inf from the sources themselves (kept as they are): %s",
                len(result.inherited_nonfinite),
                result.inherited_nonfinite[:3],
            )
        if fsync:
            _fsync_folder(tmp)
    if stats is not None:
        stats.__dict__.update(result.__dict__)
    log.info(
        "Wrote merged checkpoint %s (%d shard(s), %.2f GB in %.1f s)", target, len(shards), total / 1e9, result.seconds
    )
    return Path(target).resolve()


def _fsync_folder(folder: Path) -> None:
    for f in folder.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
