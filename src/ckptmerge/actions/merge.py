"""``action=merge``: merge k >= 2 checkpoints with given weights into a transformers folder."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ckptmerge.actions.setup import resolve_sources
from ckptmerge.checkpoints.writer import check_target, write_merged
from ckptmerge.config import Config, parse_size
from ckptmerge.errors import ConfigError
from ckptmerge.merge import get_method

log = logging.getLogger(__name__)


def run_merge(cfg: Config) -> dict[str, Any]:
    """Stream the weighted merge of the configured checkpoints into ``merge.output_dir`` (atomic)."""
    fn = get_method(cfg.merge.method)
    target = Path(cfg.merge.output_dir).expanduser().resolve()  # type: ignore[arg-type]
    check_target(target, cfg.merge.overwrite)
    shard_bytes = parse_size(cfg.merge.shard_size, "merge.shard_size")
    cset = resolve_sources(cfg).cset
    weights = list(cfg.merge.weights or ())
    if len(weights) != len(cset):
        raise ConfigError(f"merge.weights has {len(weights)} weights for {len(cset)} checkpoints ({', '.join(cset.names)})")
    out_dtype = None if cfg.merge.dtype == "auto" else getattr(torch, cfg.merge.dtype)
    named = dict(zip(cset.names, weights))
    write_merged([c.reader for c in cset.checkpoints], cset.newest.folder, weights, target, fn, shard_bytes,
                 out_dtype=out_dtype, overwrite=cfg.merge.overwrite,
                 extra_files={"ckptmerge.json": json.dumps({"weights": named, "method": cfg.merge.method}, indent=2)},
                 progress=True)
    print(f"merged {len(cset)} checkpoints {named} into {target}")
    return {"weights": named, "output_dir": str(target)}
