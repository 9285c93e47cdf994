"""runtime=ray with the tool's own local Ray instance (each test's command starts and stops one, as a
user's does): two trials at once and every Ray process stopped at the end; a watch whose pairs search
on the workers gives the serial watch's records; SIGTERM leaves no MLflow run RUNNING and no Ray process
of ours; ZeRO with Ray and an unreachable address are one line before any work.
(tests/integration/test_ray.py: a joined ``ray start`` cluster.)"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from ckptmerge.config import config_from_dict
from ckptmerge.errors import ConfigError
from tests.conftest import MAIN, run_main
from tests.helpers import count_finished_trials
from tests.ray_support import (
    check_counted_once,
    close_numbers,
    descendants,
    gone,
    ray_args,
    socket_closed,
    trial_runs,
)

pytestmark = pytest.mark.slow


def test_ray_with_zero_partitioning_is_refused():
    with pytest.raises(ConfigError, match="runtime.deepspeed_config"):
        config_from_dict({"runtime": {"name": "ray", "backend": "ray", "deepspeed_config": "ds.json"}})
    with pytest.raises(ConfigError, match="runtime.workers is read by runtime=ray only"):
        config_from_dict({"runtime": {"workers": 2}})


def test_unreachable_address_is_one_line_before_any_work(tmp_path, traj_cache, tiny_trajectory):
    with socket_closed() as port:
        proc = run_main(
            ray_args(tmp_path, traj_cache, tmp_path / "run", f"runtime.address=127.0.0.1:{port}"),
            cwd=tmp_path,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "runtime.address=127.0.0.1" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()  # no tracking store touched, no run created
    assert not (tmp_path / "run" / "result.json").exists()


def _start_search(tmp_path, traj_cache) -> subprocess.Popen:
    """The runtime=ray search as a user starts it (its own local instance), stderr kept for the asserts."""
    return subprocess.Popen(
        [sys.executable, str(MAIN), *ray_args(tmp_path, traj_cache, tmp_path / "run")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_local_instance_search_keeps_two_workers_busy(tmp_path, traj_cache, tiny_trajectory):
    """The tool starts its own Ray, runs two trials at once, and stops every Ray process it started."""
    p = _start_search(tmp_path, traj_cache)
    seen: set[int] = set()
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        seen |= descendants(p.pid)
        time.sleep(0.5)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    assert len(seen) >= 3, "a local Ray instance starts processes of its own (gcs, raylet, workers)"
    assert gone(seen) == [], "every Ray process the search started is stopped at its end"
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["runtime"]["backend"] == "ray" and result["runtime"]["workers"] == 2
    check_counted_once(tmp_path, result)
    pending = {int(r.data.params["trial"]): int(r.data.params["pending_at_proposal"]) for r in trial_runs(tmp_path)}
    assert pending[0] == 0 and pending[1] == 1, pending  # the initial design went out at once
    assert all(t["pending_at_proposal"] == pending[t["trial"]] for t in result["trials"])
    assert result["registered_model"] is not None


def test_sigterm_leaves_nothing_running(tmp_path, traj_cache, tiny_trajectory):
    p = _start_search(tmp_path, traj_cache)
    seen: set[int] = set()
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        seen |= descendants(p.pid)
        if count_finished_trials(tmp_path / "mlflow.db") >= 1:
            seen |= descendants(p.pid)
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.1)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert gone(seen) == [], "SIGTERM stops every Ray process the search started"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert running == [], [r.info.run_name for r in running]


def test_watch_on_workers_searches_the_serial_pairs(tmp_path, tiny_trajectory):
    """action=watch under runtime=ray over a folder that holds the trajectory, on the tool's own local
    instance (one for the whole watch): each pair's search runs its trials on the workers, and the watch
    ends with the serial watch's searches and records. (Here rather than beside the joined cluster's
    tests, so that the two Ray modules take about as long.)"""
    from tests.integration.test_watch import _args as watch_args

    watch = tmp_path / "ckpts"
    watch.mkdir()
    for c in tiny_trajectory.checkpoints:
        shutil.copytree(c, watch / c.name)
    results = {}
    for name, extra, env in (
        ("serial", ["runtime=cpu"], {}),
        ("ray", ["runtime=ray", "runtime.workers=2"], {}),
    ):
        work = tmp_path / name  # a store each: the same watch key in one store would skip the searched pairs
        work.mkdir()
        proc = run_main(
            [*watch_args(work, tiny_trajectory, watch, 1, work / "run", budget=2), *extra],
            cwd=work,
            env_extra=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((work / "run" / "result.json").read_text())
    a, b = results["serial"], results["ray"]
    assert a["searched_by_this_process"] == b["searched_by_this_process"] and len(a["searched_by_this_process"]) == 2
    assert [r["step"] for r in a["pairs"]] == [r["step"] for r in b["pairs"]]
    for label in sorted(p.name for p in (tmp_path / "serial" / "run" / "pairs").iterdir()):
        x = json.loads((tmp_path / "serial" / "run" / "pairs" / label / "result.json").read_text())
        y = json.loads((tmp_path / "ray" / "run" / "pairs" / label / "result.json").read_text())
        assert (x["runtime"]["backend"], y["runtime"]["backend"], y["runtime"]["workers"]) == ("single", "ray", 2)
        assert close_numbers(x["lambda"], y["lambda"]) and close_numbers(x["objective"], y["objective"]), label
        tx = sorted(x["trials"], key=lambda t: t["trial"])
        ty = sorted(y["trials"], key=lambda t: t["trial"])
        assert [t["weights"] for t in tx] == [t["weights"] for t in ty]
        assert all(close_numbers(s["objective"], t["objective"]) for s, t in zip(tx, ty)), label
        assert sorted(t["pending_at_proposal"] for t in ty) == [0, 1]  # both trials at once on the workers
        assert (x["registered_model"] is None) == (y["registered_model"] is None), label
