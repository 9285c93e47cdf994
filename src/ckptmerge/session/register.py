"""Writing a chosen merge to disk, verifying it, and registering it: shared by search and compare.

The merge is written atomically (linear merges stream from the checkpoint tensors in their own
dtype; other merges save the resident model), reloaded from disk and re-scored; only a merge that
reproduces the objective the caller saw is returned for registration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckptmerge.checkpoints.atomic import OWNER_FILE, atomic_folder
from ckptmerge.checkpoints.writer import write_merged
from ckptmerge.config import MergeConfig, RegistryConfig
from ckptmerge.errors import EvaluationError
from ckptmerge.merge import get_method
from ckptmerge.resident import ResidentModel
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.tracking.mlflow_run import SearchTracker

log = logging.getLogger(__name__)


def write_and_verify(
    merge: MergeConfig,
    registry: RegistryConfig,
    session: EvalSession,
    resident: ResidentModel,
    weights: Mapping[str, float] | None,
    objective: float,
    target: Path,
    info: Mapping[str, Any],
    owner: str | None = None,
    files: Mapping[str, str] | None = None,
) -> tuple[Any, Any, Any, float]:
    """Write the merge to ``target``; return ``(model, tokenizer, lm, rescored_objective)`` of the reloaded copy.

    ``weights`` None means the merge is not linear: the resident model's parameters are saved as they are.
    ``owner`` (e.g. ``search:RUN_ID``) is recorded in the folder, so that the same search may replace
    its own earlier output after a crash; any other existing folder is refused at the rename.
    ``files`` (name → text: the model card, the mergekit config) are written inside the atomic publish.
    Raises (and leaves no folder) when the reloaded merge does not reproduce ``objective``.
    """
    cset = resident.cset
    extra = {**dict(files or {}), OWNER_FILE: json.dumps({**dict(info), "owner": owner}, indent=2, default=str)}
    try:
        if weights is not None:
            out_dtype = None if merge.dtype == "auto" else getattr(torch, merge.dtype)
            write_merged(
                [c.reader for c in cset.checkpoints],
                cset.newest.config_dir,
                list(weights.values()),
                target,
                get_method(merge.method, merge.settings),
                merge.shard_bytes,
                out_dtype=out_dtype,
                overwrite=merge.overwrite,
                extra_files=extra,
                progress=True,
                owner=owner,
            )
        else:
            with atomic_folder(target, overwrite=merge.overwrite, owner=owner) as tmp:  # resident's own dtype
                resident.model.save_pretrained(tmp, max_shard_size=merge.shard_size)
                resident.tokenizer.save_pretrained(tmp)
                for name, text in extra.items():
                    (tmp / name).write_text(text)
    except BaseException:
        # a stop or failure just after the folder was renamed into place (the writer's last steps): the
        # folder is ours, and a stopped search leaves nothing behind; anyone else's folder stays as it was
        if published_by(target, owner):
            import shutil

            shutil.rmtree(target, ignore_errors=True)
        raise
    try:
        model, tok, lm = session.reload(target)
        rescored = session.objective(session.evaluate_dev(lm))
        tol = registry.rescore_tolerance * max(1.0, abs(objective))
        if not math.isfinite(rescored) or abs(rescored - objective) > tol:
            raise EvaluationError(
                f"the written merge scores {rescored:.6f} but the search saw {objective:.6f} "
                f"(tolerance {tol:.2g}); not registering it"
            )
    except BaseException:  # the folder is ours: write_merged/atomic_folder above just put it there
        import shutil

        shutil.rmtree(target, ignore_errors=True)
        raise
    return model, tok, lm, rescored


def published_by(target: Path, owner: str | None) -> bool:
    """Whether ``target`` is a folder this writer published (its owner file names ``owner``)."""
    if owner is None:
        return False
    try:
        return json.loads((target / OWNER_FILE).read_text()).get("owner") == owner
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class PendingVersion:
    """A verified merge logged to MLflow, waiting to become a registered version (see :meth:`commit`)."""

    registry_name: str
    alias: str
    run_id: str
    tracking_uri: str
    tags: Mapping[str, str]
    description: str
    logged: Any  # ckptmerge.tracking.registry.LoggedModel; None when the run already registered it

    def commit(self, tracker: SearchTracker) -> dict[str, str]:
        """Create the version and its alias (quick registry calls: a search makes them inside its commit)."""
        from ckptmerge.tracking.registry import register_logged

        reg = register_logged(
            self.run_id, self.logged, self.registry_name, self.alias, self.tags, self.description, self.tracking_uri
        )
        tracker.set_tags({"ckptmerge.registered_model": f"{reg.name}/{reg.version}"})
        return {"name": reg.name, "version": reg.version, "alias": reg.alias}


def log_for_registry(
    registry: RegistryConfig,
    tracker: SearchTracker,
    model: Any,
    tokenizer: Any,
    weights: Mapping[str, float] | None,
    objective: float,
    session: EvalSession,
    description: str,
    tags: Mapping[str, str],
    folder: Path | None = None,
) -> PendingVersion:
    """Log the verified merge as an MLflow model (the slow part), ready to become a new version of
    ``registry.name`` by :meth:`PendingVersion.commit`.

    ``model`` None (the merge was verified in a partitioned model, which no rank holds whole): the
    written ``folder`` is loaded here, on the CPU, for MLflow's transformers flavor to log.
    """
    from mlflow.tracking import MlflowClient

    from ckptmerge.tracking.registry import log_model, registered_version

    cset_sources = tags.get("sources", "")
    all_tags = {
        "objective": f"{objective:.6f}",
        "search_run_id": tracker.run_id or "",
        "objective_definition": session.objective.describe(),
        "sources": cset_sources,
        **tags,
    }
    if weights is not None:
        all_tags["weights"] = json.dumps({n: round(w, 6) for n, w in weights.items()})
        all_tags.setdefault("lambda", f"{list(weights.values())[-1]:.6f}")
    assert tracker.run_id is not None, "registration happens inside the search's run"
    pending = PendingVersion(registry.name, registry.alias, tracker.run_id, tracker.uri, all_tags, description, None)
    if registered_version(MlflowClient(tracker.uri), registry.name, tracker.run_id, registry.alias):
        return pending  # a rerun after a crash that came after registration: commit() finds that version
    if model is None:
        from transformers import AutoModelForCausalLM

        assert folder is not None, "register: no model object and no folder to load it from"
        log.info("Loading %s on the CPU to log it to MLflow", folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype="auto", trust_remote_code=session.sources.cset.trust_remote_code
        )
    logged = log_model(tracker.run_id, model, tokenizer, registry.name, description, tracker.uri)
    return dataclasses.replace(pending, logged=logged)


def register_merge(
    merge: MergeConfig,
    registry: RegistryConfig,
    tracker: SearchTracker,
    session: EvalSession,
    resident: ResidentModel,
    weights: Mapping[str, float] | None,
    objective: float,
    target: Path,
    description: str,
    tags: Mapping[str, str],
) -> dict[str, str]:
    """:func:`write_and_verify`, then :func:`log_for_registry` and its commit (compare's best merge)."""
    model, tok, _, _ = write_and_verify(
        merge,
        registry,
        session,
        resident,
        weights,
        objective,
        target,
        {"weights": weights, **tags},
        owner=f"compare:{tracker.run_id}",
    )
    sources = ",".join(c.ref.text for c in resident.cset.checkpoints)
    try:
        pending = log_for_registry(
            registry, tracker, model, tok, weights, objective, session, description, {"sources": sources, **tags}
        )
        return pending.commit(tracker)
    except BaseException:
        import shutil

        shutil.rmtree(target, ignore_errors=True)
        raise
