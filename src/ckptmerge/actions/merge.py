"""``action=merge``: merge k >= 2 checkpoints with given weights into a transformers folder."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ckptmerge.actions.setup import resolve_sources
from ckptmerge.checkpoints.stream import StreamStats
from ckptmerge.checkpoints.atomic import check_target, refuse_inputs
from ckptmerge.checkpoints.writer import write_merged
from ckptmerge.config import Config, parse_size
from ckptmerge.errors import ConfigError
from ckptmerge.merge import get_method

log = logging.getLogger(__name__)


def run_merge(cfg: Config) -> dict[str, Any]:
    """Stream the weighted merge of the configured checkpoints into ``merge.output_dir`` (atomic).

    Tensor by tensor (chunk by chunk for an elementwise method), fp32 arithmetic, output in
    ``merge.dtype`` as sharded safetensors of ``merge.shard_size``; memory stays flat whatever the size
    (see :mod:`ckptmerge.checkpoints.stream`).
    """
    fn = get_method(cfg.merge.method)
    target = Path(cfg.merge.output_dir).expanduser().resolve()  # type: ignore[arg-type]
    check_target(target, cfg.merge.overwrite)
    shard_bytes = parse_size(cfg.merge.shard_size, "merge.shard_size")
    cset = resolve_sources(cfg).cset
    refuse_inputs(target, [c.folder for c in cset.checkpoints])
    weights = list(cfg.merge.weights or ())
    if len(weights) != len(cset):
        raise ConfigError(f"merge.weights has {len(weights)} weights for {len(cset)} checkpoints ({', '.join(cset.names)})")
    out_dtype = None if cfg.merge.dtype == "auto" else getattr(torch, cfg.merge.dtype)
    named = dict(zip(cset.names, weights))
    stats = StreamStats()
    write_merged([c.reader for c in cset.checkpoints], cset.newest.folder, weights, target, fn, shard_bytes,
                 out_dtype=out_dtype, overwrite=cfg.merge.overwrite,
                 extra_files={"ckptmerge.json": json.dumps({"weights": named, "method": cfg.merge.method}, indent=2)},
                 progress=True, stats=stats)
    rate = stats.bytes_written / max(stats.seconds, 1e-9) / 1e9
    print(f"merged {len(cset)} checkpoints {named} into {target} "
          f"({stats.tensors} tensors, {stats.bytes_written / 1e9:.2f} GB in {stats.seconds:.1f} s, {rate:.2f} GB/s)")
    return {"weights": named, "output_dir": str(target), "tensors": stats.tensors,
            "bytes": stats.bytes_written, "seconds": stats.seconds}


def run(cfg: Config, context: Any = None) -> dict[str, Any]:
    """``action=merge``."""
    return run_merge(cfg)
