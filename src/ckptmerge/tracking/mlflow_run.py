"""MLflow tracking of a search: one parent run, one nested child run per trial.

Uses ``MlflowClient`` with explicit run ids (no global active run), so nothing depends on which run
happens to be active. When ``MLFLOW_RUN_ID`` is set (``mlflow run`` sets it, together with
``MLFLOW_TRACKING_URI``), that run becomes the parent instead of a second top-level run, in its own
experiment; ``mlflow run`` ends it with the process's exit status. ``tracking.uri`` null means
``MLFLOW_TRACKING_URI`` when set, else a sqlite file in the working directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ckptmerge import __version__
from ckptmerge.config import TrackingConfig
from ckptmerge.errors import TrackingError
from ckptmerge.signals import HoldingStops, holding
from ckptmerge.tracking import names
from ckptmerge.tracking.secrets import has_uri_password, redact

log = logging.getLogger(__name__)


def default_tracking_uri(cwd: Path) -> str:
    """A sqlite file in the working directory, which ``mlflow ui`` opens with no server."""
    return f"sqlite:///{(Path(cwd) / 'mlflow.db').resolve()}"


def default_artifact_location(cwd: Path, uri: str = "") -> str:
    """``mlartifacts/`` beside a sqlite store's file (a store the user named keeps its artifacts with it,
    so that moving or sharing the folder keeps both), else in the working directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return (Path(cwd) / "mlartifacts").resolve().as_uri()


@contextlib.contextmanager
def _fast_fail_http() -> Iterator[None]:
    """For the reachability probe only: no retries, short timeout (MLflow's defaults retry for minutes)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_tracking_uri(uri: str) -> None:
    """Fail fast, with one line, when the tracking store cannot be used."""
    from mlflow.tracking import MlflowClient

    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if path is not None and not path.parent.is_dir():
            raise TrackingError(f"tracking.uri={redact(uri)}: folder {path.parent} does not exist")
        if path is not None:
            _refuse_foreign_sqlite(uri, path)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri)
        if not path.parent.exists():
            raise TrackingError(f"tracking.uri={redact(uri)}: folder {path.parent} does not exist")
    try:
        with _fast_fail_http():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # connection refused, bad scheme, bad database: one line says which
        if _is_locked(e):
            raise StoreLocked(uri) from None
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        # MLflow's own message repeats the URI, credentials included
        raise TrackingError(f"tracking.uri={redact(uri)} is unreachable or unusable: {redact(msg)[:300]}") from None


# Tables every MLflow sqlite store has; a file with tables and without these is someone else's database.
_MLFLOW_MARKER_TABLES = {"alembic_version", "experiments", "runs"}


def _refuse_foreign_sqlite(uri: str, path: Path) -> None:
    """Refuse a sqlite file that holds another application's tables.

    MLflow would add its tables to any sqlite file it is given (and migrate it), silently, so the file
    is read first, read-only, with sqlite3. An empty or missing file and an MLflow store are fine.
    """
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = sorted(
                r[0]
                for r in con.execute("select name from sqlite_master where type = 'table'")
                if not r[0].startswith("sqlite_")
            )
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if "locked" in str(e):
            raise StoreLocked(uri, str(e)) from None
        raise TrackingError(f"tracking.uri={redact(uri)}: {path} is not a sqlite database ({e})") from None
    if tables and not _MLFLOW_MARKER_TABLES <= set(tables):
        foreign = [t for t in tables if t not in _MLFLOW_MARKER_TABLES] or tables
        raise TrackingError(
            f"tracking.uri={redact(uri)}: the sqlite file holds tables that are not MLflow's "
            f"(e.g. {foreign[0]!r}); refusing to add MLflow's tables to it"
        )


class StoreLocked(TrackingError):
    """Another process holds the sqlite store's lock longer than MLflow waits (20 s)."""

    def __init__(self, uri: str, reason: str = "database is locked") -> None:
        super().__init__(
            f"the MLflow store {redact(uri)} is locked by another process ({reason}); "
            "find what holds it (an open `sqlite3` shell, a backup, `mlflow ui` mid-migration), "
            "then run the same command again to resume"
        )


def _is_locked(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is sqlite's "database is locked" (MLflow wraps it in MlflowException)."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 10:
        if "database is locked" in str(cur) and type(cur).__module__.split(".")[0] in (
            "sqlite3",
            "sqlalchemy",
            "mlflow",
        ):
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False


EXIT_STORE_UNAVAILABLE = 75  # EX_TEMPFAIL: try again later; a scheduler may retry the same command


class StoreUnavailable(TrackingError):
    """A tracking call failed after MLflow's own retries (connection refused, timeouts, 5xx answers):
    the store is down for longer than the client waits. The run stops; the same command resumes it."""

    exit_code = EXIT_STORE_UNAVAILABLE

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(
            f"the MLflow store {redact(uri)} did not answer after MLflow's retries ({reason}); the run stopped "
            "and is left to resume: run the same command again once the store is back (how long MLflow "
            "retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT, docs/operations.md)"
        )


def _unavailable(e: BaseException) -> str | None:
    """Why the store did not answer, when ``e`` (or what caused it) is MLflow giving up on a request."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 10:
        text = str(cur)
        if type(cur).__module__.split(".")[0] == "mlflow" and text.startswith("API request to"):
            if "timeout exception" in text or "Read timed out" in text:
                return "timed out"
            if "failed with exception" in text:
                return "connection refused" if "refused" in text else "no connection"
            if code := re.search(r"failed with error code (5\d\d)", text):
                return f"HTTP {code.group(1)}"
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


class _LockedFilter(logging.Filter):
    """Drops MLflow's traceback for "database is locked" (``mlflow.store.db.utils`` logs it before it
    raises): :class:`StoreLocked` says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and _is_locked(exc))


logging.getLogger("mlflow.store.db.utils").addFilter(_LockedFilter())


class _OneLineStoreErrors:
    """An MlflowClient whose "database is locked" failures are :class:`StoreLocked`, one line."""

    def __init__(self, client: Any, uri: str) -> None:
        self._client, self._uri = client, uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as e:
                if _is_locked(e):
                    raise StoreLocked(self._uri) from None
                if why := _unavailable(e):
                    raise StoreUnavailable(self._uri, why) from None
                raise

        return call


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """Serialise the creation and migration of a sqlite store across processes (parallel sweep jobs).

    MLflow creates and migrates a sqlite store on first use; two processes doing it at once break it
    ("table ... already exists", half-applied migrations). An advisory ``flock`` on the database file
    (sqlite's own locks are fcntl locks, independent of it) lets the first job initialise the store
    while the others wait.
    """
    path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None or not path.parent.is_dir():
        yield
        return
    with open(path, "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_store(uri: str) -> None:
    """:func:`check_tracking_uri`, holding the sqlite init lock (the store is created on first use)."""
    with _sqlite_init_lock(uri):
        check_tracking_uri(uri)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` for MLflow params (values cut to MLflow's limit)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[names.safe_key(key)] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return {k: redact(v)[:6000] for k, v in out.items()}


def stop_reason(e: BaseException) -> str | None:
    """``SIGTERM`` / ``SIGINT`` when ``e`` is a stop (a signal, Ctrl-C), else None (an error)."""
    from ckptmerge.errors import Stopped

    if isinstance(e, Stopped):
        return e.signal_name
    return "SIGINT" if isinstance(e, KeyboardInterrupt) else None


class SearchTracker:
    """The MLflow side of one search (or one comparison): parent run, child runs, artifacts."""

    def __init__(self, cfg: TrackingConfig, cwd: Path) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(cwd)
        self.display_uri = redact(self.uri)  # self.uri connects; this one is for anything printed or written
        if has_uri_password(self.uri):
            # MLflow prints "View run at: URL" when a run ends, URL built from the URI with its password
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        _check_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        # a SIGTERM/SIGINT during a store call is raised once it returns (see ckptmerge.signals)
        self.client = HoldingStops(_OneLineStoreErrors(MlflowClient(self.uri), self.uri))
        self.log_plots = cfg.log_plots
        env_run = os.environ.get("MLFLOW_RUN_ID")
        if env_run:  # launched by `mlflow run`: that run is our parent, in its experiment
            self.experiment_id = self._env_run_experiment(env_run)
        else:
            self.experiment_id = self._experiment(cfg, cwd)
        self._tag_experiment_kind()
        self.run_id: str | None = None
        self.ended: str | None = None  # the status the parent run was ended with here, once it was
        self._env_run = env_run
        self._open_children: dict[str, None] = {}  # child runs started and not yet ended, in order

    def _env_run_experiment(self, run_id: str) -> str:
        """The experiment of the run ``mlflow run`` opened; it must be in this store and still running."""
        try:
            run = self.client.get_run(run_id)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TrackingError(
                f"MLFLOW_RUN_ID={run_id} is not a run in {self.display_uri} ({redact(msg)[:200]}); `mlflow run` sets "
                "it with "
                "MLFLOW_TRACKING_URI, so leave tracking.uri unset there, or unset a stale MLFLOW_RUN_ID"
            ) from None
        if run.info.status != "RUNNING":
            raise TrackingError(f"MLFLOW_RUN_ID={run_id} names a {run.info.status} run; unset the stale MLFLOW_RUN_ID")
        return run.info.experiment_id

    def _experiment(self, cfg: TrackingConfig, cwd: Path) -> str:
        """``tracking.experiment``, created on first use. Parallel sweep jobs may race to create it."""
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":  # deleted in the UI: MLflow keeps its name
            raise TrackingError(
                f"tracking.experiment={cfg.experiment} was deleted in {self.display_uri} (experiment id "
                f"{exp.experiment_id}); restore it (MLflow UI, or `mlflow experiments restore --experiment-id "
                f"{exp.experiment_id}`) or name another experiment"
            )
        if exp is not None:
            self._refuse_served_sqlite(exp.artifact_location)
            return exp.experiment_id
        self._refuse_served_sqlite(None)
        location = cfg.artifact_location
        if location is None and urlparse(self.uri).scheme in ("sqlite", "", "file"):
            location = default_artifact_location(cwd, self.uri)
        try:
            return self.client.create_experiment(cfg.experiment, artifact_location=location)
        except Exception:
            exp = self.client.get_experiment_by_name(cfg.experiment)  # another job created it first
            if exp is None:
                raise
            return exp.experiment_id

    def _refuse_served_sqlite(self, artifact_location: str | None) -> None:
        """Refuse a direct ``sqlite:///DB`` (or folder store) on a database that an ``mlflow server`` serves.

        Such a server proxies artifacts (``mlflow-artifacts:/`` locations, which only a server's clients can
        write), and the searches through it take their lock in the store, not beside the file: a direct
        client would crash at its first artifact and would not see their lock. The store records it: the
        experiment's artifact location, or the Default experiment's, which the server created.
        """
        if urlparse(self.uri).scheme not in ("sqlite", "", "file"):
            return
        locations = [artifact_location]
        with contextlib.suppress(Exception):
            locations.append(self.client.get_experiment("0").artifact_location)
        if any(str(loc or "").startswith("mlflow-artifacts:") for loc in locations):
            raise TrackingError(
                f"tracking.uri={self.display_uri} is a database that an mlflow server serves (its artifacts "
                "are proxied, mlflow-artifacts:/); use that server's URL as tracking.uri, so that its searches "
                "and this one share one store and one lock"
            )

    def _tag_experiment_kind(self) -> None:
        """Mark the experiment as model development, so that MLflow's UI opens it on its runs (untagged,
        MLflow 3 opens the GenAI traces overview). A kind someone already chose is left as it is."""
        tags = self.client.get_experiment(self.experiment_id).tags or {}
        if not tags.get(names.TAG_EXPERIMENT_KIND):
            self.client.set_experiment_tag(
                self.experiment_id, names.TAG_EXPERIMENT_KIND, names.EXPERIMENT_KIND_MODEL_DEVELOPMENT
            )

    def log_datasets(self, run_id: str | None, datasets: list[Any], context: str) -> None:
        """Record ``datasets`` (see :mod:`ckptmerge.tracking.datasets`) as inputs of the run, as ``context``."""
        from ckptmerge.tracking.datasets import dataset_inputs

        if datasets:
            self.client.log_inputs(run_id or self.run_id, datasets=dataset_inputs(datasets, context))

    def describe(self, markdown: str, run_id: str | None = None) -> None:
        """The run's description in MLflow's UI (markdown)."""
        self.set_tags({names.TAG_NOTE: markdown}, run_id)

    # -- parent ------------------------------------------------------------------------------
    def start(
        self,
        run_name: str,
        config: Mapping[str, Any],
        config_yaml: str,
        checkpoints: list[dict[str, str]],
        tags: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> str:
        """Open the parent run and log the resolved config and the checkpoints' identities.

        ``resume_run_id``: continue that (unfinished) run instead; it already holds config and identities.
        """
        from mlflow.entities import Param, RunTag

        # the version that last ran it (a resumed search: the one that resumed it)
        all_tags = {names.TAG_KIND: "search", names.TAG_VERSION: __version__, **(tags or {})}
        self.ended = None
        if resume_run_id:
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
            self._clear_end_tags(resume_run_id)
            self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in all_tags.items()])
            return self.run_id
        if self._env_run:
            self.run_id = self._env_run
            self.client.set_tag(self.run_id, "mlflow.runName", run_name)
        else:
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
        params = flatten(config)
        for i, c in enumerate(checkpoints):
            params[f"checkpoint.{i}.name"] = c["name"]
            params[f"checkpoint.{i}.source"] = redact(c["source"])[:6000]
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in all_tags.items()])
        self.log_text(self.run_id, config_yaml, names.ARTIFACT_CONFIG)
        self.log_text(self.run_id, json.dumps(checkpoints, indent=2), names.ARTIFACT_CHECKPOINTS)
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, run_id: str | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(names.safe_key(k), float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id or self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any], run_id: str | None = None) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id or self.run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])

    def log_text(self, run_id: str | None, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id or self.run_id, redact(text), artifact_file)

    def log_figure(self, run_id: str | None, figure: Any, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(run_id or self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def _clear_end_tags(self, run_id: str) -> None:
        """Drop what an earlier ending left on a run that goes on (a resumed search): its error or stop
        reason would otherwise stay on a run that then finishes."""
        tags = self.client.get_run(run_id).data.tags
        for key in (names.TAG_ERROR, names.TAG_STOPPED_BY):
            if key in tags:
                self.client.delete_tag(run_id, key)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id and not self._env_run:  # `mlflow run` ends its own run
            self.client.set_terminated(self.run_id, status=status)
        self.ended = status

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """End the parent run with the block: FINISHED, or, when it raises (and the error goes on),
        KILLED with the signal as the ``ckptmerge.stopped_by`` tag (SIGTERM, SIGINT: see
        :class:`ckptmerge.errors.Stopped`) or FAILED with the error's first line as ``ckptmerge.error``.
        A child run still open (the trial in progress) ends the same way first: nothing stays RUNNING.
        A run the block itself ended FINISHED (a search's commit) stays so.
        """
        try:
            yield
        except BaseException as e:
            if self.ended == "FINISHED":  # committed: nothing after the commit undoes it
                raise
            if isinstance(e, Exception) and not isinstance(e, TrackingError) and _is_locked(e):
                e = StoreLocked(self.uri)  # an MLflow call not made through self.client (model logging)
                self._end_after(e)
                raise e from None
            why = _unavailable(e) if isinstance(e, Exception) and not isinstance(e, TrackingError) else None
            if why:  # as above, an MLflow call not made through self.client
                e = StoreUnavailable(self.uri, why)
            if isinstance(e, StoreUnavailable):
                with _fast_fail_http():  # one try to mark the runs, not MLflow's minutes of retries again
                    self._end_after(e)
                if why:
                    raise e from None
                raise
            self._end_after(e)
            raise
        if self.ended is None:
            self.finish("FINISHED")

    def _running_descendants(self) -> list[str]:
        """Child runs still RUNNING: those started and not ended here, and any the store holds under
        the parent (a stop between creating a child and noting it), and their RUNNING children
        (compare's method runs hold trials)."""
        found = dict(self._open_children)
        frontier = [self.run_id] if self.run_id else []
        while frontier:
            parent = frontier.pop()
            query = f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
            for r in self.client.search_runs([self.experiment_id], query, max_results=1000):
                if r.info.run_id not in found:
                    found[r.info.run_id] = None
                    frontier.append(r.info.run_id)
        return [r for r in found if self.client.get_run(r).info.status == "RUNNING"]

    def end_interrupted_children(self) -> list[str]:
        """On a resumed run: end the child runs (and theirs) that its killed process left RUNNING, FAILED
        with ``ckptmerge.trial_status=interrupted``; they are done again. Returns their ids."""
        children = self._running_descendants()
        for child in children:
            self.set_tags({names.TAG_TRIAL_STATUS: "interrupted"}, child)
            self.end_trial(child, "FAILED")
        return children

    def _end_after(self, e: BaseException) -> None:
        """End the open child runs and the parent after ``e``; a failure here (the store itself may be
        what failed) is logged, never raised in place of ``e``."""
        stopped = stop_reason(e)
        if stopped:
            status, tags = "KILLED", {names.TAG_STOPPED_BY: stopped}
        else:
            status, tags = "FAILED", {names.TAG_ERROR: str(e).splitlines()[0] if str(e) else type(e).__name__}
        # a second signal (an impatient Ctrl-C, a supervisor repeating SIGTERM) must not cut this short and
        # leave a run RUNNING: the process is ending anyway
        try:
            with holding(drop=True):
                for child in self._running_descendants():
                    self.set_tags({names.TAG_TRIAL_STATUS: "interrupted", **tags}, child)
                    self.end_trial(child, status)
                if self.run_id:
                    self.set_tags(tags)
                    self.finish(status)
        except Exception as cleanup:  # noqa: BLE001 - the original error is the one to report
            log.warning("could not mark run %s %s in MLflow: %s", self.run_id, status, redact(str(cleanup))[:300])

    # -- children ----------------------------------------------------------------------------
    def start_trial(
        self,
        index: int,
        params: Mapping[str, Any],
        parent_run_id: str | None = None,
        run_name: str | None = None,
        kind: str = "trial",
    ) -> str:
        """A nested child run for trial ``index`` (0-based) under ``parent_run_id`` (default: the search run)."""
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name or f"trial-{index:03d}",
            tags={
                "mlflow.parentRunId": parent_run_id or self.run_id,
                names.TAG_KIND: kind,
                names.TAG_VERSION: __version__,
            },
        )
        self._open_children[run.info.run_id] = None  # until end_trial: finishing() ends it if the block fails
        items = [Param(names.safe_key(k), redact(str(v))) for k, v in params.items()]
        self.client.log_batch(run.info.run_id, params=items)
        return run.info.run_id

    def end_trial(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)
        self._open_children.pop(run_id, None)

    def artifact_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="ckptmerge-artifacts-"))
