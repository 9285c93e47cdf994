"""The start shared by the studies over a whole trajectory (``action=pilot``, ``action=compare``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ckptmerge.checkpoints import CheckpointSet
from ckptmerge.config import Config
from ckptmerge.resident import ResidentModel
from ckptmerge.runtime import seed_everything
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.setup import Sources, newest_of, resolve_sources
from ckptmerge.tracking import names, resume
from ckptmerge.tracking.mlflow_run import SearchTracker

log = logging.getLogger(__name__)


@dataclass
class Study:
    tracker: SearchTracker
    sources: Sources
    session: EvalSession
    resident: ResidentModel
    run_id: str
    resumed: bool = False  # the run continues an unfinished one of the same key: reuse what it finished

    @property
    def cset(self) -> CheckpointSet:
        return self.sources.cset


def start_study(cfg: Config, cwd: Path, config_yaml: str, kind: str, last: int | None = None) -> Study:
    """Seeds, tracking (fails fast), every checkpoint of the trajectory (or its ``last`` newest), the
    tasks and resident model, then the parent MLflow run ``KIND-FIRST-LAST`` tagged with the kind.

    The run is resumable like a search's: it carries a resume key (the whole config and the checkpoints'
    identities; ``ckptmerge.resume_hash``) and its owner; the same command again continues the newest
    unfinished run of that key whose process is gone (``search.resume=never`` starts afresh), after
    ending the child runs that process left RUNNING."""
    seed_everything(cfg.search.seed, cfg.runtime.threads)
    tracker = SearchTracker(cfg.tracking, cwd)
    sources = resolve_sources(cfg.model, cfg.eval, all_checkpoints=True)
    if last is not None:
        sources = newest_of(sources, last)
    cset = sources.cset
    session, resident = EvalSession.with_resident(cfg.eval, cfg.search.seed, cfg.runtime, cfg.merge, sources)
    checkpoints = [{"name": c.name, **c.identity()} for c in cset.checkpoints]
    # the same command again continues the newest unfinished study of this key (as a search resumes)
    key = {"kind": kind, "config": cfg.to_dict(), "checkpoints": checkpoints}
    auto = cfg.search.resume == "auto" and not os.environ.get("MLFLOW_RUN_ID")
    resume_id = resume.find_resumable(tracker.client, tracker.experiment_id, key, kind) if auto else None
    run_id = tracker.start(
        run_name=f"{kind}-{cset.names[0]}-{cset.names[-1]}",
        config=cfg.to_dict(),
        config_yaml=config_yaml,
        checkpoints=checkpoints,
        tags={
            names.TAG_KIND: kind,
            names.TAG_OBJECTIVE: session.objective.describe(),
            resume.TAG_RESUME_HASH: resume.key_hash(key),
            resume.TAG_OWNER: resume.owner(),
        },
        resume_run_id=resume_id,
    )
    if resume_id:
        interrupted = tracker.end_interrupted_children()
        log.info("Resuming %s %s (%d interrupted child runs ended FAILED)", kind, run_id, len(interrupted))
    return Study(tracker, sources, session, resident, run_id, resumed=bool(resume_id))
