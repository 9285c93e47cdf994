"""`action=pilot` and `action=compare` resume like a search: SIGKILL midway, run the same command again,
and what finished is reused (not evaluated again), the rest is done, and no run stays RUNNING."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN, run_main
from tests.helpers import query_store

pytestmark = pytest.mark.slow


def _count(db: Path, sql: str) -> int:
    """A count read from the store, read-only (an MLflow client here would race the study)."""
    rows = query_store(db, sql)
    return rows[0][0] if rows else 0


def _kill_when(args: list[str], cwd: Path, db: Path, sql: str, at_least: int) -> None:
    """Start ``src/main.py ARGS``, SIGKILL it once ``sql`` counts ``at_least`` in the store."""
    proc = subprocess.Popen(
        [sys.executable, str(MAIN), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 600
    while _count(db, sql) < at_least and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, f"it ended before it could be killed midway:\n{proc.stderr.read()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _common(tmp_path: Path, traj_cache: Path) -> list[str]:
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.log_plots=false",
        "eval.limit=24",  # quick, yet each evaluation long enough to be killed between two
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def _no_running(uri: str) -> None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ckptmerge")
    running = [r.info.run_name for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"]
    assert running == []


PILOT_DONE = (
    "select count(*) from metrics m join tags t on m.run_uuid = t.run_uuid where t.key = 'ckptmerge.kind' "
    "and t.value = 'pilot' and (m.key like 'single.%.objective' or m.key like 'pair.%.objective')"
)


def test_pilot_killed_midway_resumes_and_reuses_what_it_evaluated(tmp_path, traj_cache, tiny_trajectory):
    db, args = tmp_path / "mlflow.db", ["action=pilot", *_common(tmp_path, traj_cache)]
    _kill_when(args, tmp_path, db, PILOT_DONE, 2)
    before = _count(db, PILOT_DONE)
    proc = run_main(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(tiny_trajectory.checkpoints)
    total = n + n * (n - 1) // 2
    assert f"of {total} evaluations reused" in proc.stdout + proc.stderr
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ckptmerge").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]  # the killed run, continued: not a second one
    # every evaluation was logged once: none done before the kill was evaluated again
    history = [
        client.get_metric_history(runs[0].info.run_id, k)
        for k in runs[0].data.metrics
        if k.endswith(".objective") and k.startswith(("single.", "pair."))
    ]
    assert len(history) == total and all(len(h) == 1 for h in history)
    assert _count(db, PILOT_DONE) == total and before >= 2
    _no_running(uri)


COMPARE_DONE = (
    "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid where t.key = 'ckptmerge.kind' "
    "and t.value = 'method' and r.status = 'FINISHED'"
)
METHODS = ["newest", "uniform", "lawa", "ema", "bo"]


def test_compare_killed_midway_resumes_and_reuses_finished_methods(tmp_path, traj_cache, tiny_trajectory):
    db = tmp_path / "mlflow.db"
    args = [
        "action=compare",
        *_common(tmp_path, traj_cache),
        f"compare.methods=[{','.join(METHODS)}]",
        "search.budget=3",
        "+compare.settings.lawa.k=2",
    ]
    _kill_when(args, tmp_path, db, COMPARE_DONE, 2)
    finished_before = _count(db, COMPARE_DONE)
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ckptmerge").experiment_id
    objectives = {
        r.info.run_name: r.data.metrics["objective"]
        for r in client.search_runs([exp], "tags.`ckptmerge.kind` = 'method' and attributes.status = 'FINISHED'")
    }
    proc = run_main(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{finished_before} of {len(METHODS)} methods reused" in proc.stdout + proc.stderr
    parents = client.search_runs([exp], "tags.`ckptmerge.kind` = 'compare'")
    assert [p.info.status for p in parents] == ["FINISHED"]  # the killed run, continued
    methods = client.search_runs([exp], "tags.`ckptmerge.kind` = 'method'")
    finished = [m.info.run_name for m in methods if m.info.status == "FINISHED"]
    assert sorted(finished) == sorted(METHODS)  # each method finished once: the reused ones not run again
    out = json.loads((tmp_path / "run" / "compare.json").read_text())
    by_method = {m["method"]: m for m in out["methods"]}
    for name, objective in objectives.items():  # a reused method's row is its earlier result
        assert by_method[name]["objective"] == objective
    assert all(m["gain"] is not None for m in out["methods"])  # paired gains: its per-document scores came back
    _no_running(uri)
