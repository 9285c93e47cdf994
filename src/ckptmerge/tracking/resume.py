"""Resuming a search from what MLflow holds.

A search's parent run carries a *resume key*: everything that changes the objective or the proposed
points (checkpoint fingerprints, dev tasks and objective, eval limit and length, search kind, α,
seed, acquisition, merge method, dtype), as the artifact ``resume_key.json`` and its hash as the tag
``ckptmerge.resume_hash``. Running the same command again finds the newest unfinished search with the
same hash (one whose process is gone: killed, crashed, or stopped by SIGTERM/SIGINT, which ends it
KILLED) and continues it; ``search.resume=RUN_ID`` names one, and a key
that differs is refused with the first difference named. The budget is not part of the key: a
resumed search may be given more evaluations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptmerge.errors import ConfigError
from ckptmerge.liveness import process_alive
from ckptmerge.tracking import names

log = logging.getLogger(__name__)

TAG_RESUME_HASH = "ckptmerge.resume_hash"
TAG_OWNER = "ckptmerge.owner"  # host:pid of the process running the search
ARTIFACT_RESUME_KEY = "resume_key.json"


def key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(tag: str | None) -> bool:
    """Whether the process that ran a search is still running on this host (then it is not ours to resume)."""
    if not tag or ":" not in tag:
        return False
    host, _, pid = tag.rpartition(":")
    if host != socket.gethostname():
        return False  # another machine's search; it may be alive, but a dead node is the usual reason to resume
    return pid.isdigit() and process_alive(int(pid))


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> str | None:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            d = _first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k} was {va!r}, now {vb!r}"
    return None


def find_resumable(client: Any, experiment_id: str, key: Mapping[str, Any], kind: str = "search") -> str | None:
    """The newest unfinished run of ``kind`` (a search; a pilot or compare study) with this resume key
    whose process is gone, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_RESUME_HASH}` = '{key_hash(key)}' and tags.`{names.TAG_KIND}` = '{kind}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        if run.info.status == "FINISHED":
            return None  # the newest such search completed: the same command starts a new one
        if not _owner_alive(run.data.tags.get(TAG_OWNER)):
            return run.info.run_id
    return None


def check_resume(client: Any, run_id: str, key: Mapping[str, Any]) -> None:
    """Refuse ``search.resume=RUN_ID`` when that run's resume key differs from this config's."""
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(f"search.resume={run_id}: no such MLflow run") from None
    if run.data.tags.get(names.TAG_KIND) != "search":
        raise ConfigError(f"search.resume={run_id} is not a ckptmerge search run")
    if run.info.status == "FINISHED":
        raise ConfigError(f"search.resume={run_id} has already finished")
    try:
        stored = json.loads(Path(client.download_artifacts(run_id, ARTIFACT_RESUME_KEY)).read_text())
    except Exception:
        raise ConfigError(f"search.resume={run_id} has no {ARTIFACT_RESUME_KEY}; it cannot be resumed") from None
    diff = _first_difference(stored, json.loads(json.dumps(key, default=str)))
    if diff:
        raise ConfigError(f"search.resume={run_id} cannot continue with this config: {diff}")


@dataclass
class PastTrial:
    index: int
    x: tuple[float, ...]
    objective: float | None
    metrics: dict[str, float]
    error: str | None
    run_id: str
    objective_se: float | None = None
    eval_seconds: float | None = None  # the bill of its evaluation (None: a run from before it was logged)
    docs_evaluated: int | None = None
    tokens_evaluated: int | None = None
    raced_out: bool = False  # eval.race: its objective is an estimate, its stored scores partial


def _int_or_none(v: float | None) -> int | None:
    return None if v is None else int(v)


def read_trials(client: Any, experiment_id: str, parent_id: str, coordinates: Sequence[str]) -> list[PastTrial]:
    """Finished and failed trials of a search, by index; interrupted ones are dropped (redone).

    A trial still RUNNING died with its process (SIGKILL, a lost node): it is marked FAILED,
    ``interrupted``. One a signal stopped was already ended KILLED, ``interrupted``; it keeps that.
    """
    done, _ = _scan(client, experiment_id, parent_id, coordinates)
    indices = sorted(done)
    if indices != list(range(len(indices))):
        # a gap means a trial in the middle never finished: keep the contiguous prefix, redo the rest
        n = next(i for i, j in enumerate(indices) if i != j)
        indices = indices[:n]
    return [done[i] for i in indices]


@dataclass(frozen=True)
class Unfinished:
    """A trial that was proposed and started but never finished (its process was killed)."""

    index: int
    x: tuple[float, ...]
    source: str
    pending: int


def read_parallel_trials(
    client: Any, experiment_id: str, parent_id: str, coordinates: Sequence[str]
) -> tuple[list[PastTrial], list[Unfinished]]:
    """A parallel search's finished and failed trials by index, gaps and all (trials finish out of
    order), and the unfinished ones to run again at their recorded points and indices."""
    done, interrupted = _scan(client, experiment_id, parent_id, coordinates)
    redo = [interrupted[i] for i in sorted(interrupted) if i not in done]
    return [done[i] for i in sorted(done)], redo


def _scan(
    client: Any, experiment_id: str, parent_id: str, coordinates: Sequence[str]
) -> tuple[dict[int, PastTrial], dict[int, Unfinished]]:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=10000
    )
    done: dict[int, PastTrial] = {}
    interrupted: dict[int, Unfinished] = {}
    for run in runs:
        p, tags = run.data.params, run.data.tags
        if names.PARAM_TRIAL not in p:
            continue
        index = int(p[names.PARAM_TRIAL])
        status = tags.get(names.TAG_TRIAL_STATUS)
        x = tuple(float(p[c]) for c in coordinates)  # the space's own coordinate params (λ for a pair)
        if run.info.status == "RUNNING" or status not in ("ok", "failed"):
            if run.info.status == "RUNNING" or status != "interrupted":
                client.set_tag(run.info.run_id, names.TAG_TRIAL_STATUS, "interrupted")
                client.set_terminated(run.info.run_id, status="FAILED")
            log.info("Trial %d (run %s) was interrupted; it will be evaluated again", index, run.info.run_id)
            pending = int(p.get(names.PARAM_PENDING_AT_PROPOSAL, 0))
            interrupted[index] = Unfinished(index, x, p.get(names.PARAM_PROPOSED_BY, "resumed"), pending)
            continue
        metrics = {k: v for k, v in run.data.metrics.items() if "/" in k and not k.startswith("gp.")}
        objective = run.data.metrics.get(names.METRIC_OBJECTIVE) if status == "ok" else None
        done[index] = PastTrial(
            index,
            x,
            objective,
            metrics,
            tags.get("ckptmerge.error"),
            run.info.run_id,
            run.data.metrics.get(names.METRIC_OBJECTIVE_SE) if status == "ok" else None,
            run.data.metrics.get(names.METRIC_EVAL_SECONDS),
            _int_or_none(run.data.metrics.get(names.METRIC_DOCS_EVALUATED)),
            _int_or_none(run.data.metrics.get(names.METRIC_TOKENS_EVALUATED)),
            bool(run.data.metrics.get(names.METRIC_RACED_OUT, 0.0)),
        )
    return done, interrupted
