"""The tracking server goes away in the middle of a search and comes back: the search carries on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN
from tests.ops.conftest import free_port, mlflow_server

pytestmark = pytest.mark.slow

BUDGET = 5


def _finished_trials(url: str) -> int:
    try:
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("outage")
        if exp is None:
            return 0
        runs = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'trial'")
        return sum(r.info.status == "FINISHED" for r in runs)
    except Exception:
        return 0


def test_search_survives_a_server_restart(tmp_path, traj_cache, tiny_trajectory):
    port = free_port()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    artifacts, log = tmp_path / "artifacts", tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    args = [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={BUDGET}",
        "search.stop=budget",  # counts every trial of the budget
        "eval.limit=8",
        "tracking.log_plots=false",
        "tracking.experiment=outage",
        "registry.name=outage",
        "registry.require_significant_gain=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    with mlflow_server(backend, artifacts, log, port=port) as url:
        search = subprocess.Popen(
            [sys.executable, str(MAIN), *args, f"tracking.uri={url}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.time() + 300
        while _finished_trials(url) < 2 and search.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert search.poll() is None, search.stdout.read()[-3000:]
    # the server is down now (the context stopped it); keep it down a while, then bring it back
    time.sleep(8)
    assert search.poll() is None, "the search gave up while the server was down"
    with mlflow_server(backend, artifacts, log, port=port) as url:
        out, _ = search.communicate(timeout=600)
        assert search.returncode == 0, out[-3000:]
        result = json.loads((tmp_path / "run" / "result.json").read_text())
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("outage")
        trials = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'trial'")
        assert sorted(r.info.status for r in trials) == ["FINISHED"] * BUDGET  # no trial lost or doubled
        assert len({r.data.params["lambda"] for r in trials}) == BUDGET
        assert len(result["trials"]) == BUDGET and result["registered_model"]["version"] == "1"
        assert client.get_run(result["mlflow"]["run_id"]).info.status == "FINISHED"


def _runs(url: str, experiment: str) -> list:
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_an_outage_longer_than_the_retries_is_a_clean_stop_that_resumes(tmp_path, traj_cache, tiny_trajectory):
    """The server goes away and stays away longer than MLflow retries (kept short here through its
    environment variables): one line naming the store (password masked), exit 75, and once the server
    is back the same command resumes the search."""
    port = free_port()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    artifacts, log = tmp_path / "artifacts", tmp_path / "server.log"
    # two tries, about 1 s apart, 5 s per request: the search gives up within seconds of the outage
    env = {
        **os.environ,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    budget = 3
    args = [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={budget}",
        "eval.limit=8",
        "tracking.log_plots=false",
        "tracking.experiment=long-outage",
        "registry.name=long-outage",
        "registry.require_significant_gain=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    secret = "outagePw123"
    with mlflow_server(backend, artifacts, log, port=port) as url:
        uri = url.replace("http://", f"http://team:{secret}@")  # a server without auth ignores it
        search = subprocess.Popen(
            [sys.executable, str(MAIN), *args, f"tracking.uri={uri}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 300
        while (
            sum(
                r.info.status == "FINISHED" and r.data.tags.get("ckptmerge.kind") == "trial"
                for r in _runs(url, "long-outage")
            )
            < 1
            and search.poll() is None
            and time.time() < deadline
        ):
            time.sleep(0.5)
        assert search.poll() is None, search.communicate()[1][-3000:]
    # the server is down now, and stays down until the search has given up
    out, err = search.communicate(timeout=300)
    assert search.returncode == 75, (search.returncode, err[-3000:])
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"the MLflow store http://team:***@127.0.0.1:{port} did not answer after MLflow's retries" in lines[0]
    assert "run the same command again" in lines[0]
    assert secret not in out + err
    with mlflow_server(backend, artifacts, log, port=port) as url:
        again = subprocess.run(
            [sys.executable, str(MAIN), *args, f"tracking.uri={uri}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Resuming search" in again.stdout + again.stderr
        runs = _runs(url, "long-outage")
        assert [r.info.status for r in runs if r.data.tags.get("ckptmerge.kind") == "search"] == ["FINISHED"]
        trials = [r for r in runs if r.data.tags.get("ckptmerge.kind") == "trial"]
        assert sum(r.info.status == "FINISHED" for r in trials) == budget
        assert not [r for r in runs if r.info.status == "RUNNING"]
