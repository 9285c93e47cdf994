"""runtime=ray with a real Ray: the tool's own local instance, and a cluster this module starts with
``ray start --head`` and joins through ``runtime.address``. A worker actor killed mid-trial has its trial
run again, counted once; a SIGKILLed driver resumes with the same command; SIGTERM leaves no MLflow run
RUNNING and no Ray process of ours. Ray is started once for the module (the cluster); the two tests of
the tool's own instance start one each, as a user's command does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from ckptmerge.config import config_from_dict
from ckptmerge.errors import ConfigError
from tests.conftest import MAIN, run_main
from tests.helpers import count_finished_trials

pytestmark = pytest.mark.slow

BUDGET = 4
RAY = str(Path(sys.executable).parent / "ray")
# Ray 2.60's `ray start` turns token authentication on; a process joining the cluster needs the same mode
# (the token itself is ~/.ray/auth_token, which `ray start` wrote).
AUTH = {"RAY_AUTH_MODE": "token"}


def _args(work: Path, traj_cache: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        "runtime=ray",
        "runtime.workers=2",
        f"search.budget={BUDGET}",
        "search.stop=budget",  # every trial of the budget runs
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.name=ray-test",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        "eval.limit=12",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _tree(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def _stop(procs: list[psutil.Process]) -> None:
    """End these processes (ours: the cluster this module started), SIGTERM then SIGKILL, bounded."""
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


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
        _stop(_tree(ours))


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


def _trial_runs(work: Path) -> list:
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    return client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'trial'", max_results=1000)


def _check_counted_once(work: Path, result: dict) -> None:
    """Every trial of the budget ran once: unique indices 0..BUDGET-1 in result.json and in MLflow."""
    assert sorted(t["trial"] for t in result["trials"]) == list(range(BUDGET))
    finished = [r for r in _trial_runs(work) if r.info.status == "FINISHED"]
    assert sorted(int(r.data.params["trial"]) for r in finished) == list(range(BUDGET))


def test_ray_with_zero_partitioning_is_refused():
    with pytest.raises(ConfigError, match="runtime.deepspeed_config"):
        config_from_dict({"runtime": {"name": "ray", "backend": "ray", "deepspeed_config": "ds.json"}})
    with pytest.raises(ConfigError, match="runtime.workers is read by runtime=ray only"):
        config_from_dict({"runtime": {"workers": 2}})


def test_unreachable_address_is_one_line_before_any_work(tmp_path, traj_cache, tiny_trajectory):
    with socket_closed() as port:
        proc = run_main(
            _args(tmp_path, traj_cache, tmp_path / "run", f"runtime.address=127.0.0.1:{port}"),
            cwd=tmp_path,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "runtime.address=127.0.0.1" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()  # no tracking store touched, no run created
    assert not (tmp_path / "run" / "result.json").exists()


class socket_closed:
    """A local port where nothing listens (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


def _descendants(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _gone(pids: set[int], timeout: float = 30) -> list[int]:
    """The pids still alive (not zombies) after waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def test_local_instance_search_keeps_two_workers_busy(tmp_path, traj_cache, tiny_trajectory):
    """The tool starts its own Ray, runs two trials at once, and stops every Ray process it started."""
    p = subprocess.Popen(
        [sys.executable, str(MAIN), *_args(tmp_path, traj_cache, tmp_path / "run")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        seen |= _descendants(p.pid)
        time.sleep(0.5)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    assert len(seen) >= 3, "a local Ray instance starts processes of its own (gcs, raylet, workers)"
    assert _gone(seen) == [], "every Ray process the search started is stopped at its end"
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["runtime"]["backend"] == "ray" and result["runtime"]["workers"] == 2
    _check_counted_once(tmp_path, result)
    pending = {int(r.data.params["trial"]): int(r.data.params["pending_at_proposal"]) for r in _trial_runs(tmp_path)}
    assert pending[0] == 0 and pending[1] == 1, pending  # the initial design went out at once
    assert all(t["pending_at_proposal"] == pending[t["trial"]] for t in result["trials"])
    assert result["registered_model"] is not None


def test_worker_killed_mid_trial_reruns_it_once(tmp_path, traj_cache, tiny_trajectory, cluster):
    address, temp = cluster
    raylet = _raylet(temp)
    args = _args(tmp_path, traj_cache, tmp_path / "run", f"runtime.address={address}", "eval.limit=48")
    p = subprocess.Popen(
        [sys.executable, str(MAIN), *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **AUTH},
    )
    killed = None
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline and killed is None:
        for w in _cluster_workers(raylet, busy=True):  # a worker evaluating a trial: kill it there
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
    log = "".join(f.read_text() for f in (tmp_path / "run").glob("*.log"))
    assert "died during trial" in log + err, "the driver saw the worker die and ran its trial again"
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    _check_counted_once(tmp_path, result)
    assert _gone({w.pid for w in _cluster_workers(raylet)}) == [], "the joined cluster keeps none of our actors"


def test_sigkill_driver_then_same_command_resumes(tmp_path, traj_cache, tiny_trajectory, cluster):
    address, _ = cluster
    args = _args(tmp_path, traj_cache, tmp_path / "run1", f"runtime.address={address}")
    p = subprocess.Popen(
        [sys.executable, str(MAIN), *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **AUTH},
    )
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
    proc = run_main(
        _args(tmp_path, traj_cache, tmp_path / "run2", f"runtime.address={address}"),
        cwd=tmp_path,
        env_extra=AUTH,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run2" / "result.json").read_text())
    _check_counted_once(tmp_path, result)  # the finished ones reused, the unfinished ones run once more
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name='ray-test'")
    assert len(versions) <= 1


def test_sigterm_leaves_nothing_running(tmp_path, traj_cache, tiny_trajectory):
    p = subprocess.Popen(
        [sys.executable, str(MAIN), *_args(tmp_path, traj_cache, tmp_path / "run")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        seen |= _descendants(p.pid)
        if count_finished_trials(tmp_path / "mlflow.db") >= 1:
            seen |= _descendants(p.pid)
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.1)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert _gone(seen) == [], "SIGTERM stops every Ray process the search started"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert running == [], [r.info.run_name for r in running]


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
    serial = run_main([*common, "runtime=cpu", f"hydra.run.dir={tmp_path / 'serial'}"], cwd=tmp_path, timeout=600)
    assert serial.returncode == 0, serial.stderr[-3000:]
    parallel = run_main(
        [
            *common,
            "runtime=ray",
            "runtime.workers=2",
            f"runtime.address={address}",
            f"hydra.run.dir={tmp_path / 'ray'}",
        ],
        cwd=tmp_path,
        env_extra=AUTH,
        timeout=600,
    )
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    a = json.loads((tmp_path / "serial" / "result.json").read_text())
    b = json.loads((tmp_path / "ray" / "result.json").read_text())
    assert a["singles"].keys() == b["singles"].keys() and len(a["pairs"]) == len(b["pairs"]) >= 1
    for name, value in a["singles"].items():
        assert b["singles"][name] == pytest.approx(value, rel=1e-6, abs=1e-9)
    for x, y in zip(a["pairs"], b["pairs"]):
        assert (x["older"], x["newer"]) == (y["older"], y["newer"])
        assert y["objective"] == pytest.approx(x["objective"], rel=1e-6, abs=1e-9)
