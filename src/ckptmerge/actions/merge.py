"""``action=merge``: merge k >= 2 checkpoints with given weights into a transformers folder, or a
Distributed Checkpoint under the input's own names (``merge.output_format=dcp``)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ckptmerge.checkpoints import pages
from ckptmerge.checkpoints.atomic import check_target, refuse_inputs
from ckptmerge.checkpoints.dcp_writer import write_merged_dcp
from ckptmerge.checkpoints.reader import reads_into_memory
from ckptmerge.checkpoints.stream import StreamStats
from ckptmerge.checkpoints.writer import write_merged
from ckptmerge.config import Config
from ckptmerge.errors import ConfigError
from ckptmerge.interop import folder_files
from ckptmerge.interop.facts import MergeFacts, checkpoint_entries, floating_dtype
from ckptmerge.merge import get_method
from ckptmerge.session.setup import Purpose, local_checkpoint_folders, resolve_sources

log = logging.getLogger(__name__)


def from_mergekit(cfg: Config) -> Config:
    """``cfg`` with the checkpoints, weights and dtype of ``merge.mergekit_config`` (a linear mergekit YAML).

    The YAML says everything a merge needs, so a second source for the same facts is refused rather than
    silently overridden.
    """
    from ckptmerge.interop.mergekit import KEY, read_linear

    if cfg.merge.weights is not None:
        raise ConfigError(f"{KEY} gives the weights; leave out merge.weights")
    if cfg.model.source != "embedded":
        raise ConfigError(f"{KEY} names the checkpoints; leave out model={cfg.model.name} and model.checkpoints")
    if cfg.merge.method != "linear":
        raise ConfigError(f"{KEY} is a linear merge; merge.method={cfg.merge.method} cannot apply it")
    recipe = read_linear(cfg.merge.mergekit_config)  # type: ignore[arg-type]
    if cfg.merge.dtype != "auto" and recipe.dtype != "auto" and cfg.merge.dtype != recipe.dtype:
        raise ConfigError(f"merge.dtype={cfg.merge.dtype} contradicts {KEY}'s output dtype {recipe.dtype}")
    model = replace(cfg.model, name="local", source="local", checkpoints=recipe.models, pair=None)
    dtype: Any = recipe.dtype if recipe.dtype != "auto" else cfg.merge.dtype  # the schema checks it again
    merge = replace(cfg.merge, weights=recipe.weights, dtype=dtype)
    return replace(cfg, model=model, merge=merge)


DCP_CARD = """
## Format

A PyTorch Distributed Checkpoint (`merge.output_format=dcp`): {n} tensors under the newest input's own
names (e.g. `{first}`), weights only, no optimizer state. Load it as the training job saved them:
`torch.distributed.checkpoint.load(state_dict, checkpoint_id=THIS_FOLDER)`.
"""


def output_names(cset: Any) -> dict[str, str]:
    """Model tensor name → the newest input's own name for it (a ZeRO or DCP checkpoint's, else the same)."""
    reader = cset.newest.reader
    raw = getattr(reader, "raw_name", None)
    return {k: raw(k) if raw else k for k in reader.keys()}


def merge_facts(cfg: Config, cset: Any, weights: list[float]) -> MergeFacts:
    """What the merged folder's model card and mergekit config say about a plain merge (no evaluation)."""
    return MergeFacts(
        checkpoints=checkpoint_entries(cset),
        weights=dict(zip(cset.names, weights)),
        method=cfg.merge.method,
        out_dtype=None if cfg.merge.dtype == "auto" else cfg.merge.dtype,
        in_dtype=floating_dtype(cset),
    )


def run_merge(cfg: Config) -> dict[str, Any]:
    """Stream the weighted merge of the configured checkpoints into ``merge.output_dir`` (atomic).

    Tensor by tensor (chunk by chunk for an elementwise method), fp32 arithmetic, output in
    ``merge.dtype`` as sharded safetensors of ``merge.shard_size``; memory stays flat whatever the size
    (see :mod:`ckptmerge.checkpoints.stream`). ``merge.mergekit_config`` gives checkpoints, weights and
    dtype as a mergekit YAML instead. The folder also carries a model card and a mergekit config.
    """
    if cfg.merge.mergekit_config:
        cfg = from_mergekit(cfg)
    fn = get_method(cfg.merge.method, cfg.merge.settings)
    target = Path(cfg.merge.output_dir).expanduser().resolve()  # type: ignore[arg-type]
    refuse_inputs(target, local_checkpoint_folders(cfg.model))  # before "exists": no overwrite may replace an input
    check_target(target, cfg.merge.overwrite)
    shard_bytes = cfg.merge.shard_bytes
    sources = resolve_sources(cfg.model, cfg.eval, Purpose(merge=True, allow_nonfinite=cfg.merge.allow_nonfinite))
    cset = sources.cset
    refuse_inputs(target, [c.folder for c in cset.checkpoints])
    if any(reads_into_memory(c.reader) for c in cset.checkpoints):
        # ZeRO and DCP tensors are read into memory, one after another: each freed one goes back to the OS
        pages.return_freed_tensors_at_once()
    weights = list(cfg.merge.weights or ())
    if len(weights) != len(cset):
        raise ConfigError(
            f"merge.weights has {len(weights)} weights for {len(cset)} checkpoints ({', '.join(cset.names)})"
        )
    out_dtype = None if cfg.merge.dtype == "auto" else getattr(torch, cfg.merge.dtype)
    named = dict(zip(cset.names, weights))
    stats = StreamStats()
    fmt = cfg.merge.output_format
    names = output_names(cset) if fmt == "dcp" else {}
    files = folder_files(merge_facts(cfg, cset, weights))
    if fmt == "dcp":
        files["README.md"] = files.get("README.md", "") + DCP_CARD.format(
            n=len(names), first=next(iter(names.values()))
        )

    def write(folder: Path) -> Path:
        return write_merged(
            [c.reader for c in cset.checkpoints],
            cset.newest.config_dir,
            weights,
            folder,
            fn,
            shard_bytes,
            out_dtype=out_dtype,
            overwrite=cfg.merge.overwrite,
            extra_files={
                "ckptmerge.json": json.dumps(
                    {"weights": named, "method": cfg.merge.method, "output_format": fmt}, indent=2
                ),
                **files,
            },
            progress=True,
            stats=stats,
            checks=sources.checks,  # finite and distinct inputs, checked on the merge's one read of each
        )

    if fmt == "dcp":
        write_merged_dcp(write, target, names, cfg.merge.overwrite, getattr(cset.newest.reader, "permutes", None))
    else:
        write(target)
    rate = stats.bytes_written / max(stats.seconds, 1e-9) / 1e9
    print(
        f"merged {len(cset)} checkpoints {named} into {target} "
        f"({stats.tensors} tensors, {stats.bytes_written / 1e9:.2f} GB in {stats.seconds:.1f} s, {rate:.2f} GB/s)"
    )
    return {
        "weights": named,
        "output_dir": str(target),
        "tensors": stats.tensors,
        "bytes": stats.bytes_written,
        "seconds": stats.seconds,
        "output_format": fmt,
        # dcp: the tensor names as the newest input holds them (a training job loads them as it saved them)
        **({"output_names": "input"} if fmt == "dcp" else {}),
    }


def run(cfg: Config, context: Any = None) -> dict[str, Any]:
    """``action=merge``."""
    return run_merge(cfg)
