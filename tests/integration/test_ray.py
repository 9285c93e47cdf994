"""runtime=ray on a cluster this module starts with ``ray start --head`` and joins through
``runtime.address`` (started once for the module): a SIGKILLed driver resumes with the same command,
and in that resumed run a worker actor killed mid-trial has its trial run again, counted once; a pilot
and a compare on the workers score what one process scores. (tests/integration/test_ray_local.py: the
tool's own local instance.)"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main, start_main
from tests.helpers import count_finished_trials
from tests.ray_support import (
    AUTH,
    BUDGET,
    RAY,
    check_counted_once,
    close_numbers,
    gone,
    process_tree,
    ray_args,
    stop_processes,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster (2 CPUs, a small object store) started as Ray documents; its address.
    Teardown ends exactly the processes it started (not ``ray stop``, which ends every Ray on the machine)."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    proc = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--port=0",
            "--num-cpus=2",
            "--object-store-memory=150000000",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **AUTH},  # PYTHONPATH included: the workers import this checkout's ckptmerge
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    address = (temp / "ray_current_cluster").read_text().strip()
    try:
        yield address, temp
    finally:
        ours = [p.pid for p in psutil.process_iter(["cmdline"]) if any(str(temp) in a for a in p.info["cmdline"] or [])]
        stop_processes(process_tree(ours))


def _raylet(temp: Path) -> psutil.Process:
    """The cluster's raylet: our actors' worker processes are its children."""
    (raylet,) = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "raylet" and any(str(temp) in a for a in p.info["cmdline"] or [])
    ]
    return raylet


def _cluster_workers(raylet: psutil.Process, busy: bool = False) -> list[psutil.Process]:
    """Our TrialWorker actors' processes on the cluster (``busy``: those evaluating a trial now)."""
    title = "ray::TrialWorker.evaluate" if busy else "ray::TrialWorker"
    out = []
    for p in raylet.children():
        try:
            if p.cmdline()[0].startswith(title):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, IndexError):
            pass
    return out


def test_sigkill_driver_then_same_command_resumes_and_a_worker_killed_mid_trial_reruns_it_once(
    tmp_path, traj_cache, tiny_trajectory, cluster
):
    """Two faults of one search on the joined cluster (one resumed search serves both, a whole Ray search
    less than a test each): the driver SIGKILLed after its first finished trial; then, in the same
    command run again, a worker actor killed while it evaluates a trial. The resumed run reuses the
    finished trials, runs the unfinished ones and the killed worker's trial once more (Ray restarts the
    actor), counts each trial once, registers at most one version, and leaves none of its actors on the
    cluster."""
    address, temp = cluster
    raylet = _raylet(temp)
    args = ray_args(tmp_path, traj_cache, tmp_path / "run1", f"runtime.address={address}")
    p = start_main(args, tmp_path, env_extra=AUTH)
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        if count_finished_trials(tmp_path / "mlflow.db") >= 1:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    before = count_finished_trials(tmp_path / "mlflow.db")
    assert 1 <= before < BUDGET

    # The same command again (its own run folder). The killed driver's actors, which Ray ends after their
    # owner, are neither killed below nor counted at the end: only the resumed run's own workers are.
    stale = {w.pid for w in _cluster_workers(raylet)}
    args = ray_args(tmp_path, traj_cache, tmp_path / "run2", f"runtime.address={address}")
    p = start_main(args, tmp_path, env_extra=AUTH, capture=True)  # its log, for the worker's death
    # A worker evaluating one of the resumed run's trials is killed there. At eval.limit=12 a trial takes
    # a second or more, some hundred polls of the raylet's children; the kill is asserted (``killed``), so
    # a trial too short to catch fails here rather than passing unkilled.
    killed = None
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline and killed is None:
        for w in _cluster_workers(raylet, busy=True):
            if w.pid in stale:
                continue
            try:
                w.kill()
                killed = w.pid
                break
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.01)
    _, err = p.communicate(timeout=600)
    assert killed is not None, "no worker was seen evaluating a trial"
    assert p.returncode == 0, err[-3000:]
    log = "".join(f.read_text() for f in (tmp_path / "run2").glob("*.log"))
    assert "died during trial" in log + err, "the driver saw the worker die and ran its trial again"
    result = json.loads((tmp_path / "run2" / "result.json").read_text())
    check_counted_once(tmp_path, result)  # the finished ones reused, the unfinished and the killed one run once more
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name='ray-test'")
    assert len(versions) <= 1
    ours = {w.pid for w in _cluster_workers(raylet)} - stale
    assert gone(ours) == [], "the joined cluster keeps none of our actors"


def _run_serial_then_on_workers(common: list[str], tmp_path: Path, address: str) -> None:
    """``src/main.py COMMON`` in one process (run folder ``serial``), then on 2 workers of the module's
    cluster (run folder ``ray``); both must succeed."""
    serial = run_main([*common, "runtime=cpu", f"hydra.run.dir={tmp_path / 'serial'}"], cwd=tmp_path, timeout=600)
    assert serial.returncode == 0, serial.stderr[-3000:]
    ray_dir = tmp_path / "ray"
    parallel = run_main(
        [*common, "runtime=ray", "runtime.workers=2", f"runtime.address={address}", f"hydra.run.dir={ray_dir}"],
        cwd=tmp_path,
        env_extra=AUTH,
        timeout=600,
    )
    assert parallel.returncode == 0, parallel.stderr[-3000:]


def test_pilot_on_workers_gives_the_serial_numbers(tmp_path, traj_cache, tiny_trajectory, cluster):
    """The pilot's evaluations spread over the workers score what one process scores: same documents,
    same models, built by each worker from the checkpoints' paths."""
    address, _ = cluster
    common = [
        "action=pilot",
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        "eval.limit=12",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    _run_serial_then_on_workers(common, tmp_path, address)
    a = json.loads((tmp_path / "serial" / "result.json").read_text())
    b = json.loads((tmp_path / "ray" / "result.json").read_text())
    assert a["singles"].keys() == b["singles"].keys() and len(a["pairs"]) == len(b["pairs"]) >= 1
    for name, value in a["singles"].items():
        assert b["singles"][name] == pytest.approx(value, rel=1e-6, abs=1e-9)
    for x, y in zip(a["pairs"], b["pairs"]):
        assert (x["older"], x["newer"]) == (y["older"], y["newer"])
        assert y["objective"] == pytest.approx(x["objective"], rel=1e-6, abs=1e-9)


def _same_cell(a: str, b: str) -> bool:
    """Two CSV cells: the same text, or numbers within the tolerance (printed to 6 digits, so the last
    digit may round the other way)."""
    try:
        return a == b or float(b) == pytest.approx(float(a), rel=1e-5, abs=2e-6)
    except ValueError:
        return False


def test_compare_on_workers_gives_the_serial_table(tmp_path, traj_cache, tiny_trajectory, cluster):
    """action=compare under runtime=ray: the baselines (a weighting rule, a greedy soup that scores on
    the way, a calibration method that reads Fisher statistics on the worker's own model) go out at
    once, the search's trials over both workers; the table is the serial one. At search.budget=2 the
    pair's search evaluates its two initial points (λ=α, λ=1) serially and in parallel alike."""
    address, _ = cluster
    methods = ["newest", "uniform", "greedy", "fisher", "bo"]
    common = [
        "action=compare",
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"compare.methods=[{','.join(methods)}]",
        "search.budget=2",
        "+compare.settings.fisher.tokens=256",
        "eval.limit=12",
        "tracking.log_plots=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    _run_serial_then_on_workers(common, tmp_path, address)
    a = json.loads((tmp_path / "serial" / "compare.json").read_text())
    b = json.loads((tmp_path / "ray" / "compare.json").read_text())
    assert [m["method"] for m in a["methods"]] == [m["method"] for m in b["methods"]] == methods
    assert a["best_method"] == b["best_method"]
    for x, y in zip(a["methods"], b["methods"]):
        m = x["method"]
        assert (x["evaluations"], x["documents"]) == (y["evaluations"], y["documents"]), m
        assert close_numbers(x["objective"], y["objective"]), (m, x["objective"], y["objective"])
        assert (x["weights"] is None) == (y["weights"] is None), m
        for name, w in (x["weights"] or {}).items():
            assert close_numbers(w, y["weights"][name]), m
        for part in ("dev_metrics", "test_metrics"):
            assert x[part].keys() == y[part].keys() and x[part], (m, part)
            assert all(close_numbers(v, y[part][k]) for k, v in x[part].items()), (m, part, x[part], y[part])
        for key in ("value", "ci_low", "ci_high"):
            assert close_numbers(x["gain"][key], y["gain"][key]), (m, key)
    # the CSV rows too, but for the wall time (numbers within the tolerance: a worker's 1 torch thread sums
    # a Fisher statistic in another order than the driver's 2)
    rows_a = list(csv.DictReader((tmp_path / "serial" / "compare.csv").open()))
    rows_b = list(csv.DictReader((tmp_path / "ray" / "compare.csv").open()))
    assert [list(r) for r in rows_a] == [list(r) for r in rows_b] and len(rows_a) == len(methods)
    for x, y in zip(rows_a, rows_b):
        for column, value in x.items():
            if column != "seconds":
                assert _same_cell(value, y[column]), (x["method"], column, value, y[column])
    # the search's two trials ran at once on the two workers: the second was proposed with one in flight
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    bo_run = b["methods"][methods.index("bo")]["run_id"]
    exp = b["mlflow"]["experiment_id"]
    trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{bo_run}'")
    assert sorted(int(t.data.params["pending_at_proposal"]) for t in trials) == [0, 1]
    assert "Ray: 2 workers" in "".join(f.read_text() for f in (tmp_path / "ray").glob("*.log"))
