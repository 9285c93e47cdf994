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
