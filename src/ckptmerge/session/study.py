"""The start shared by the studies over a whole trajectory (``action=pilot``, ``action=compare``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptmerge.checkpoints import CheckpointSet
from ckptmerge.config import Config
from ckptmerge.resident import ResidentModel
from ckptmerge.runtime import seed_everything
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.setup import Sources, newest_of, resolve_sources
from ckptmerge.tracking import names
from ckptmerge.tracking.mlflow_run import SearchTracker


@dataclass
class Study:
    tracker: SearchTracker
    sources: Sources
    session: EvalSession
    resident: ResidentModel
    run_id: str

    @property
    def cset(self) -> CheckpointSet:
        return self.sources.cset


def start_study(cfg: Config, cwd: Path, config_yaml: str, kind: str, last: int | None = None) -> Study:
    """Seeds, tracking (fails fast), every checkpoint of the trajectory (or its ``last`` newest), the
    tasks and resident model, then the parent MLflow run ``KIND-FIRST-LAST`` tagged with the kind."""
    seed_everything(cfg.search.seed, cfg.runtime.threads)
    tracker = SearchTracker(cfg.tracking, cwd)
    sources = resolve_sources(cfg, all_checkpoints=True)
    if last is not None:
        sources = newest_of(sources, last)
    cset = sources.cset
    session, resident = EvalSession.with_resident(cfg, sources)
    run_id = tracker.start(
        run_name=f"{kind}-{cset.names[0]}-{cset.names[-1]}",
        config=cfg.to_dict(),
        config_yaml=config_yaml,
        checkpoints=[{"name": c.name, **c.identity()} for c in cset.checkpoints],
        tags={names.TAG_KIND: kind, names.TAG_OBJECTIVE: session.objective.describe()},
    )
    return Study(tracker, sources, session, resident, run_id)
