"""Log a merged model as an MLflow model (transformers flavor) and register it.

The model object is the one reloaded from the written folder and re-scored, so what is registered is
what was verified. (MLflow's local-checkpoint-path logging breaks on transformers 5 task metadata, so
the loaded components are logged.) Registering is two steps: :func:`log_model` (slow: the weights are
copied into the artifact store) and :func:`register_logged` (a few quick registry calls, which a search
makes inside its commit, with stop signals held). If any part fails, the version created is deleted so
that nothing half done stays in the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ckptmerge import __version__
from ckptmerge.errors import TrackingError
from ckptmerge.tracking import names
from ckptmerge.tracking.secrets import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str
    model_uri: str


def pip_requirements() -> list[str]:
    """What a served model needs, pinned to what is installed (avoids MLflow's slow inference)."""
    from importlib import metadata

    reqs = []
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "accelerate"):
        try:
            version = metadata.version(pkg).split("+")[0]
            reqs.append(f"{pkg}=={version}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def _model_card(text: str) -> Any:
    from huggingface_hub import ModelCard

    return ModelCard(f"---\nlicense: other\nlibrary_name: transformers\ntags: [ckptmerge, merge]\n---\n{text}\n")


def registered_version(client: Any, registry_name: str, run_id: str, alias: str) -> RegisteredVersion | None:
    """The version of ``registry_name`` that ``run_id`` already registered (its alias set again), if any.

    A search killed after registering but before its run closed is resumed by running the same command
    again; the registry itself is what says the work was done (the run's tag may not have been set).
    """
    try:
        found = client.search_model_versions(f"name='{registry_name}' and run_id='{run_id}'")
    except Exception:  # no such registered model yet
        return None
    live = [v for v in found if getattr(v, "status", "READY") == "READY"]
    if not live:
        return None
    mv = min(live, key=lambda v: int(v.version))
    client.set_registered_model_alias(registry_name, alias, mv.version)
    return RegisteredVersion(name=registry_name, version=str(mv.version), alias=alias, model_uri=mv.source)


def _already_registered(client: Any, registry_name: str, run_id: str, alias: str) -> RegisteredVersion | None:
    """The version this run registered before, if any (a rerun after a crash that came after
    registration: one version per run), said in the log."""
    done = registered_version(client, registry_name, run_id, alias)
    if done is not None:
        log.info(
            "Run %s is already registered as %s version %s; not registering it again",
            run_id,
            registry_name,
            done.version,
        )
    return done


@dataclass(frozen=True)
class LoggedModel:
    """A merge logged as an MLflow model under its run, not yet a registered version."""

    model_uri: str
    model_id: str | None


def _failed(registry_name: str, e: Exception) -> TrackingError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return TrackingError(f"registering the merge as '{registry_name}' failed: {msg[:300]}")


def log_model(
    run_id: str, model: Any, tokenizer: Any, registry_name: str, description: str, tracking_uri: str
) -> LoggedModel:
    """Log ``model`` under ``run_id`` as model artifact ``model`` (the slow part of registering; a stop
    here leaves a logged model of a run that did not finish, and nothing in the registry)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        # The logged model belongs to the search's experiment (MLflow 3 otherwise files it under the
        # active experiment, i.e. Default, and its artifact root).
        mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=names.MODEL_ARTIFACT,
            task="text-generation",
            pip_requirements=pip_requirements(),
            model_card=_model_card(redact(description)),
            run_id=run_id,
        )
    except Exception as e:
        raise _failed(registry_name, e) from e
    return LoggedModel(model_uri=info.model_uri, model_id=info.model_id)


def register_logged(
    run_id: str,
    logged: LoggedModel | None,
    registry_name: str,
    alias: str,
    tags: Mapping[str, str],
    description: str,
    tracking_uri: str,
) -> RegisteredVersion:
    """A new version of ``registry_name`` for ``logged``, with ``alias``: a few quick registry calls, made
    inside the search's commit (see :func:`ckptmerge.signals.committing`). A failure deletes the version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    done = _already_registered(client, registry_name, run_id, alias)
    if done is not None:
        return done
    if logged is None:
        raise TrackingError(
            f"registering the merge as '{registry_name}' failed: the version run {run_id} registered is gone"
        )
    version = None
    try:
        try:
            client.get_registered_model(registry_name)
        except Exception:
            client.create_registered_model(registry_name, description="Merged checkpoints registered by ckptmerge")
        mv = client.create_model_version(
            registry_name,
            logged.model_uri,
            run_id=run_id,
            tags={names.TAG_VERSION: __version__, **{k: redact(str(v)) for k, v in tags.items()}},
            description=redact(description),
            model_id=logged.model_id,  # a tracking server requires it for models:/m-... sources
        )
        version = mv.version
        client.set_registered_model_alias(registry_name, alias, version)
        return RegisteredVersion(name=registry_name, version=str(version), alias=alias, model_uri=logged.model_uri)
    except Exception as e:
        if version is not None:
            try:
                client.delete_model_version(registry_name, version)
            except Exception:  # the registry itself is failing; report the original error
                pass
        raise _failed(registry_name, e) from e


def log_and_register(
    run_id: str,
    model: Any,
    tokenizer: Any,
    registry_name: str,
    alias: str,
    tags: Mapping[str, str],
    description: str,
    tracking_uri: str,
) -> RegisteredVersion:
    """Log ``model`` under ``run_id`` as model artifact ``model`` and register it as a new version."""
    from mlflow.tracking import MlflowClient

    done = _already_registered(MlflowClient(tracking_uri), registry_name, run_id, alias)
    if done is not None:  # nothing to log again
        return done
    logged = log_model(run_id, model, tokenizer, registry_name, description, tracking_uri)
    return register_logged(run_id, logged, registry_name, alias, tags, description, tracking_uri)
