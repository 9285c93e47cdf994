"""The tracking store and run folder under misuse: real processes, real files, real locks.

- two identical searches started together on one sqlite store: one runs and registers, the other
  exits 2 with one line naming it;
- a sqlite file of another application given as the store: refused, left byte-identical;
- the store locked by another process mid-search: one line, not SQLAlchemy's traceback;
- a run folder that cannot be created: one line naming ``hydra.run.dir``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN, run_main
from tests.helpers import count_finished_trials

pytestmark = pytest.mark.slow


def _args(work, traj_cache, run_dir, budget=3):
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={budget}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.name=lock-test",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        "eval.limit=8",
        f"hydra.run.dir={run_dir}",
    ]


def _popen(args, cwd):
    return subprocess.Popen(
        [sys.executable, str(MAIN), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.strip().splitlines() if ln.startswith("error:")]


def test_two_identical_searches_one_runs_the_other_refuses(tmp_path, traj_cache, tiny_trajectory):
    procs = [_popen(_args(tmp_path, traj_cache, tmp_path / f"run{i}"), tmp_path) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, [e[-2000:] for _, e in outs])
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    lines = _error_lines(outs[loser][1])
    assert len(lines) == 1, outs[loser][1][-2000:]
    result = json.loads((tmp_path / f"run{winner}" / "result.json").read_text())
    run_id = result["mlflow"]["run_id"]
    # the line names the running search by its run and its process
    assert re.fullmatch(
        rf"error: an identical search is already running \(run {run_id}, owner \S+:{procs[winner].pid}\); "
        r"wait for it or stop it",
        lines[0],
    ), lines[0]
    assert not (tmp_path / f"run{loser}" / "result.json").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'lock-test'")
    assert [str(v.version) for v in versions] == ["1"]  # one registration, not two identical ones
    exp = client.get_experiment_by_name("ckptmerge")
    parents = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'search'")
    assert [(r.info.run_id, r.info.status) for r in parents] == [(run_id, "FINISHED")]
    trials = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'trial'")
    assert len(trials) == 3  # the loser evaluated nothing


def test_unrelated_sqlite_database_is_refused_untouched(tmp_path, tiny_trajectory, traj_cache):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("create table users (id integer primary key, name text)")
    con.execute("insert into users (name) values ('ada')")
    con.commit()
    con.close()
    before = db.read_bytes()
    files_before = sorted(p.name for p in tmp_path.iterdir())
    args = [a for a in _args(tmp_path, traj_cache, tmp_path / "run") if not a.startswith("tracking.uri=")]
    proc = run_main(args + [f"tracking.uri=sqlite:///{db}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-2000:]
    assert (
        "the sqlite file holds tables that are not MLflow's (e.g. 'users'); refusing to add MLflow's tables" in lines[0]
    )
    assert db.read_bytes() == before
    # no journal, no lock file, nothing else beside it (the run folder is Hydra's)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == files_before
    assert sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
        "select name from sqlite_master where type = 'table'"
    ).fetchall() == [("users",)]


def test_store_locked_mid_search_is_one_line(tmp_path, traj_cache, tiny_trajectory):
    db = tmp_path / "mlflow.db"
    p = _popen(_args(tmp_path, traj_cache, tmp_path / "run", budget=8), tmp_path)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and count_finished_trials(db) < 1:
            time.sleep(0.2)
        assert p.poll() is None, "the search ended before the store could be locked"
        holder = sqlite3.connect(db, timeout=30, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # what a backup or a sqlite3 shell mid-transaction does
        try:
            # MLflow waits 20 s for a lock, then gives up; hold it past that, bounded
            t_end = time.time() + 35
            while time.time() < t_end and p.poll() is None:
                time.sleep(0.5)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        out, err = p.communicate(timeout=180)  # the runs are marked FAILED once the store is free
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 2, (p.returncode, err[-3000:])
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(
        f"error: the MLflow store sqlite:///{db} is locked by another process (database is locked); "
    ), lines[0]
    assert "Traceback" not in err and "OperationalError" not in err, err[-3000:]
    assert not (tmp_path / "run" / "result.json").exists()
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ckptmerge")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'search'")
    assert parent.info.status == "FAILED"  # and the same command resumes it
    assert client.search_registered_models() == []


@pytest.mark.parametrize("where", ["proc", "sys", "read-only"])
def test_unusable_run_dir_is_one_line(where, tmp_path):
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder anyway; /proc and /sys stand in for it")
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o500)
        run_dir = parent / "run"
    else:
        run_dir = f"/{where}/ckptmerge-run-{os.getpid()}"
    try:
        proc = run_main(["action=merge", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=120)
    finally:
        if where == "read-only":
            parent.chmod(0o700)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: hydra.run.dir={run_dir} cannot be created or written ("), lines[0]
