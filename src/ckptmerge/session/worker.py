"""What a DeepSpeed rank other than 0 runs: the same resident model and tasks, driven by rank 0.

Rank 0 runs the action itself (searcher, MLflow, writing, registry) and sends each step that needs
every rank; this loop carries those steps out on this rank's partition until rank 0 says stop.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ckptmerge.config import Config
from ckptmerge.runtime import distributed, seed_everything
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.setup import resolve_search_sources, resolve_sources

log = logging.getLogger(__name__)


def serve(cfg: Config, channel: distributed.Channel) -> None:
    """Wait for rank 0's start on ``channel``, build this rank's part, then apply/load/evaluate until stop."""
    from ckptmerge.resident.zero import ZeroResidentModel

    command, _ = channel.receive()
    if command != distributed.START:
        return  # stop before start: rank 0 needed no model (merge, promote) or failed first (and says why)
    seed_everything(cfg.search.seed)
    # rank 0 built any embedded trajectory and checked the checkpoints' content already
    if cfg.action == "search":
        sources = resolve_search_sources(cfg.model, cfg.eval, cfg.search.space, progress=False, check=False)
    else:
        sources = resolve_sources(cfg.model, cfg.eval, progress=False, check=False)
    session, resident = EvalSession.with_resident(cfg.eval, cfg.search.seed, cfg.runtime, cfg.merge, sources, channel)
    assert isinstance(resident, ZeroResidentModel)
    while True:
        command, args = channel.receive()
        if command == distributed.APPLY:
            resident.apply(args[0])
        elif command == distributed.LOAD:
            resident.load_folder(Path(args[0]))
        elif command == distributed.EVAL:
            session.evaluate_suite(args[0])
        elif command == distributed.STOP:
            return
        else:
            raise RuntimeError(f"rank {resident.rank}: unknown command {command!r} from rank 0")
