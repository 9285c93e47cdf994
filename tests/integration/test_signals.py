"""SIGTERM and SIGINT with real processes and real signals: the runs end KILLED, one line, exit 143 /
130, and the same command resumes. And secrets: a password in a URI appears nowhere we print or write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN, run_main, start_main
from tests.helpers import running_trial

pytestmark = pytest.mark.slow

BUDGET = 4


def _args(work, traj_cache):
    # batch_size=2 makes a trial last long enough (about a second) for the signal to land inside one
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={BUDGET}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.enabled=false",
        "tracking.log_plots=false",
        "eval.limit=8",
        "eval.batch_size=2",
        f"hydra.run.dir={work / 'run'}",
    ]


@pytest.mark.parametrize(
    "sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_a_signal_ends_the_runs_killed_and_the_same_command_resumes(tmp_path, traj_cache, tiny_trajectory, sig, code):
    args = _args(tmp_path, traj_cache)
    p = start_main(args, cwd=tmp_path, capture=True, from_terminal=True)
    deadline, seen = time.time() + 240, None
    while time.time() < deadline and p.poll() is None and seen is None:
        time.sleep(0.05)
        running = running_trial(tmp_path / "mlflow.db")
        seen = running.run_id if running else None
    assert seen is not None, "no trial started before the search ended"
    signalled_ms = int(time.time() * 1000)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: stopped by {sig.name}; run the same command again to resume"], err[-3000:]
    assert "Traceback" not in err

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []  # nothing left RUNNING
    (parent,) = [r for r in runs if r.data.tags.get("ckptmerge.kind") == "search"]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["ckptmerge.stopped_by"] == sig.name and "ckptmerge.error" not in parent.data.tags
    trial = client.get_run(seen)
    if trial.info.end_time >= signalled_ms:  # the signal landed inside it (not just after it finished)
        assert trial.info.status == "KILLED"
        assert trial.data.tags["ckptmerge.stopped_by"] == sig.name
        assert trial.data.tags["ckptmerge.trial_status"] == "interrupted"
    assert not (tmp_path / "run" / "result.json").exists() and not (tmp_path / "run" / "merged").exists()

    proc = run_main(args, cwd=tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming search" in proc.stdout + proc.stderr
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["mlflow"]["run_id"] == parent.info.run_id  # the stopped search continued, not a new one
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert "ckptmerge.stopped_by" not in parent.data.tags and "ckptmerge.error" not in parent.data.tags
    runs = client.search_runs([exp.experiment_id])
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    finished = [r for r in runs if r.data.tags.get("ckptmerge.kind") == "trial" and r.info.status == "FINISHED"]
    assert len(finished) == BUDGET == len({r.data.params["lambda"] for r in finished})  # none evaluated twice
    assert len(res["trials"]) == BUDGET


_STORE_WRITES = r"""
import os, random, signal, sys, threading, time
from pathlib import Path
from ckptmerge.config import TrackingConfig
from ckptmerge.errors import Stopped
from ckptmerge.signals import install_stop_handlers
from ckptmerge.tracking.mlflow_run import SearchTracker

install_stop_handlers()
work, rng = Path(sys.argv[1]), random.Random(0)
tracker = SearchTracker(TrackingConfig(uri=f"sqlite:///{work / 'mlflow.db'}", log_plots=False), work)
for n in range(8):
    tracker.start(f"s{n}", {"a": 1}, "a: 1", [], tags={"ckptmerge.kind": "search"})
    threading.Timer(rng.uniform(0.05, 0.6), os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        with tracker.finishing():
            for i in range(100000):  # nothing but store writes: the signal lands inside one
                r = tracker.start_trial(i, {"trial": i})
                tracker.set_tags({"ckptmerge.trial_status": "ok"}, r)
                tracker.end_trial(r)
    except Stopped:
        t0 = time.time()
    running = tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'RUNNING'")
    print(n, len(running), round(time.time() - t0, 2), flush=True)
"""


def test_a_signal_inside_a_store_write_still_ends_every_run(tmp_path):
    """A signal that lands inside an MLflow write is raised once the write has returned: raised inside
    it, it left the sqlite store locked, and marking the runs KILLED failed after a 20 s wait."""
    proc = subprocess.run(
        [sys.executable, "-c", _STORE_WRITES, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(MAIN.parent)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln.split() for ln in proc.stdout.splitlines()]
    assert len(rows) == 8
    for _, running, seconds in rows:
        assert running == "0" and float(seconds) < 5, proc.stdout


def _files(folder):
    return [p for p in folder.rglob("*") if p.is_file()]


def test_a_password_in_the_tracking_uri_is_printed_and_written_nowhere(tmp_path, traj_cache):
    run_dir = tmp_path / "run"
    proc = run_main(
        [
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            "tracking.uri=http://alice:s3cret-pw@127.0.0.1:9",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: tracking.uri=http://alice:***@127.0.0.1:9 is unreachable")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "tracking.uri" in warnings[0] and "MLFLOW_TRACKING_PASSWORD" in warnings[0]
    assert "s3cret" not in proc.stdout + proc.stderr
    files = _files(run_dir)
    assert {p.name for p in files} >= {"config.yaml", "overrides.yaml", "hydra.yaml"}
    for p in files:
        assert "s3cret" not in p.read_text(errors="replace"), p
    assert "tracking.uri=http://alice:***@127.0.0.1:9" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_a_secret_in_a_successful_search_stays_out_of_the_run_folder(tmp_path, traj_cache, tiny_trajectory):
    """An environment secret (HF_TOKEN) that also occurs in the config, here in the tracking store's
    path: result.json, the Hydra files, the log and the printed summary show it masked."""
    token = "hf_TestTokenValue42"
    store = tmp_path / token
    store.mkdir()
    run_dir = tmp_path / "run"
    proc = run_main(
        [
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            "search.budget=2",
            f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
            "registry.enabled=false",
            "tracking.log_plots=false",
            "eval.limit=8",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env_extra={"HF_TOKEN": token},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert token not in proc.stdout + proc.stderr
    assert "***/mlflow.db" in proc.stdout  # the "see it" line, masked
    res = json.loads((run_dir / "result.json").read_text())
    assert res["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path}/***/mlflow.db"
    files = _files(run_dir)
    assert {p.name for p in files} >= {"config.yaml", "overrides.yaml", "hydra.yaml", "result.json", "main.log"}
    for p in files:
        if p.suffix in (".yaml", ".json", ".log"):
            assert token not in p.read_text(), p
    # the search did use the store at the real path, and MLflow holds no secret either
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    parent = client.get_run(res["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED"
    assert all(token not in v for v in {**parent.data.params, **parent.data.tags}.values())
