"""How SearchTracker.finishing() ends runs after a stop or an error, on a real sqlite store."""

from __future__ import annotations

import signal

import pytest

from ckptmerge.config import TrackingConfig
from ckptmerge.errors import Stopped
from ckptmerge.tracking.mlflow_run import SearchTracker


@pytest.fixture()
def tracker(tmp_path):
    return SearchTracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", log_plots=False), tmp_path)


def _start(tracker, **kw):
    return tracker.start("search-x", {"a": 1}, "a: 1\n", [], tags={"ckptmerge.kind": "search"}, **kw)


def test_a_signal_ends_the_open_trial_and_the_parent_killed(tracker):
    parent = _start(tracker)
    with pytest.raises(Stopped):
        with tracker.finishing():
            done = tracker.start_trial(0, {"trial": 0})
            tracker.end_trial(done)
            open_ = tracker.start_trial(1, {"trial": 1})
            raise Stopped(signal.SIGTERM)
    c = tracker.client
    assert c.get_run(done).info.status == "FINISHED" and "ckptmerge.stopped_by" not in c.get_run(done).data.tags
    trial = c.get_run(open_)
    assert trial.info.status == "KILLED"
    assert trial.data.tags["ckptmerge.stopped_by"] == "SIGTERM"
    assert trial.data.tags["ckptmerge.trial_status"] == "interrupted"
    run = c.get_run(parent)
    assert run.info.status == "KILLED" and run.data.tags["ckptmerge.stopped_by"] == "SIGTERM"
    assert "ckptmerge.error" not in run.data.tags
    assert Stopped(signal.SIGTERM).exit_code == 143 and Stopped(signal.SIGINT).exit_code == 130


def test_an_error_fails_the_runs_and_a_resumed_run_drops_the_stale_tags(tracker):
    parent = _start(tracker)
    with pytest.raises(KeyboardInterrupt):  # a plain Ctrl-C (no handler installed) is SIGINT
        with tracker.finishing():
            raise KeyboardInterrupt
    assert tracker.client.get_run(parent).data.tags["ckptmerge.stopped_by"] == "SIGINT"
    _start(tracker, resume_run_id=parent)
    with pytest.raises(RuntimeError):
        with tracker.finishing():
            child = tracker.start_trial(0, {"trial": 0})
            raise RuntimeError("disk full\nmore")
    run = tracker.client.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags["ckptmerge.error"] == "disk full"
    assert "ckptmerge.stopped_by" not in run.data.tags  # the earlier stop is not this run's story any more
    assert tracker.client.get_run(child).info.status == "FAILED"
    _start(tracker, resume_run_id=parent)
    with tracker.finishing():
        pass
    run = tracker.client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert not {"ckptmerge.error", "ckptmerge.stopped_by"} & set(run.data.tags)


def test_a_sqlite_store_elsewhere_keeps_its_artifacts_beside_it(tmp_path):
    """Not in the working directory: the artifacts belong with the store the user named."""
    store, cwd = tmp_path / "team" / "store", tmp_path / "work"
    store.mkdir(parents=True)
    cwd.mkdir()
    t = SearchTracker(TrackingConfig(uri=f"sqlite:///{store / 'mlflow.db'}", log_plots=False), cwd)
    location = t.client.get_experiment(t.experiment_id).artifact_location
    assert location == (store / "mlartifacts").as_uri()
    set_by_user = (tmp_path / "elsewhere").as_uri()
    t2 = SearchTracker(
        TrackingConfig(uri=f"sqlite:///{store / 'mlflow.db'}", experiment="x", artifact_location=set_by_user), cwd
    )
    assert t2.client.get_experiment(t2.experiment_id).artifact_location == set_by_user
