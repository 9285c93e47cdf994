"""Atomic checkpoint folders: written beside the target, verified, then renamed into place.

A crash leaves at most a hidden ``.NAME.partial-*`` folder, never a half-written target; an existing
target is never replaced unless ``overwrite`` is set.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
import json
from typing import Callable, Iterator, Mapping, Sequence

import torch

from ckptmerge.checkpoints.reader import CheckpointReader, TensorMeta
from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)


def check_target(target: Path, overwrite: bool, key: str = "merge.output_dir") -> None:
    """Fail before any work when ``target`` exists and may not be replaced, or cannot be created."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{key}={target} already exists; choose another folder or set merge.overwrite=true")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{key}={target}: cannot create parent folder ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f"{key}={target}: parent folder is not writable")


@contextlib.contextmanager
def atomic_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, on error it is removed."""
    target = Path(target).resolve()
    check_target(target, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_folder(folder: Path, expected: Mapping[str, TensorMeta]) -> None:
    """Every expected tensor present with its shape and dtype, and no NaN or Inf anywhere."""
    reader = CheckpointReader(folder)
    meta = reader.meta()
    missing = sorted(set(expected) - set(meta))
    if missing:
        raise CheckpointError(f"written checkpoint lacks tensor {missing[0]} ({len(missing)} missing)")
    for key, m in expected.items():
        got = meta[key]
        if got.shape != m.shape or got.dtype != m.dtype:
            raise CheckpointError(f"written tensor {key} is {list(got.shape)} {got.dtype}, expected {list(m.shape)} {m.dtype}")
    for key in meta:
        t = reader.get(key)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"written tensor {key} contains NaN or Inf")
    reader.close()


# Files of a source checkpoint that a merged folder needs besides the weights.
_SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
)


def _shard_plan(meta: Mapping[str, TensorMeta], dtypes: Mapping[str, torch.dtype], shard_bytes: int) -> list[list[str]]:
    """Group tensors (in checkpoint order) into shards of at most ``shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, m in meta.items():
        n = TensorMeta(m.shape, dtypes[key]).nbytes
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def write_merged(
    sources: Sequence[CheckpointReader],
    side_folder: Path,
    weights: Sequence[float],
    target: Path,
    merge_fn: Callable[..., torch.Tensor],
    shard_bytes: int,
    out_dtype: torch.dtype | None = None,
    overwrite: bool = False,
    extra_files: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Path:
    """Stream ``merge_fn`` over every tensor of ``sources`` into sharded safetensors at ``target``.

    Tensors are read, merged and written shard by shard, so memory holds one shard of output at most.
    Config, tokenizer and remote-code files are copied from ``side_folder`` (the newest checkpoint).
    The folder is verified (every tensor, shape, dtype, finite) before it is renamed into place.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    meta = sources[-1].meta()
    dtypes = {k: (out_dtype if (out_dtype is not None and m.dtype.is_floating_point) else m.dtype) for k, m in meta.items()}
    plan = _shard_plan(meta, dtypes, shard_bytes)
    names = ["model.safetensors"] if len(plan) == 1 else [
        f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))
    ]
    total = sum(TensorMeta(m.shape, dtypes[k]).nbytes for k, m in meta.items())
    with atomic_folder(target, overwrite=overwrite) as tmp:
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="write merge", disable=not progress)
        weight_map = {}
        for name, keys in zip(names, plan):
            shard = {}
            for key in keys:
                shard[key] = merge_fn([r.get(key) for r in sources], weights, dtypes[key]).contiguous()
                weight_map[key] = name
                bar.update(shard[key].numel() * shard[key].element_size())
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            del shard
        bar.close()
        if len(names) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        for f in list(_SIDE_FILES) + [p.name for p in Path(side_folder).glob("*.py")]:
            src = Path(side_folder) / f
            if src.is_file():
                shutil.copy2(src, tmp / f)
        if out_dtype is not None and (tmp / "config.json").is_file():
            cfg = json.loads((tmp / "config.json").read_text())
            name = str(out_dtype).replace("torch.", "")
            cfg["dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"] = name
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        verify_folder(tmp, {k: TensorMeta(m.shape, dtypes[k]) for k, m in meta.items()})
    log.info("Wrote merged checkpoint %s (%d shard(s), %.1f MB)", target, len(names), total / 1e6)
    return Path(target).resolve()
