"""Which executor an action's evaluations run on (session/executor.py): Ray workers under ``runtime=ray``,
this process (and its DeepSpeed ranks) otherwise."""

from __future__ import annotations

from ckptmerge.config import Config
from ckptmerge.resident import ResidentModel
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.executor import Executor, InProcessExecutor


def make_executor(
    cfg: Config, resident: ResidentModel, session: EvalSession, study: bool = False, last: int | None = None
) -> Executor:
    """``study``: the workers build a study's whole trajectory (or its newest ``last``), not a search's pair."""
    if cfg.runtime.backend == "ray":
        from ckptmerge.runtime.ray_workers import RayExecutor

        return RayExecutor(cfg, study=study, last=last)
    return InProcessExecutor(resident, session)
