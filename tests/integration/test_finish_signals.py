"""A stop signal at any moment of a search's finish (write, re-score, test report, registration, summary,
shutdown) ends in one of two states, and the same command run again ends with exactly one version.

*finished*: the search run FINISHED, its result.json, at most one registered version, whose run is that
FINISHED run; exit 0 with a line saying the search had finished. *stopped*: the run KILLED, no version and
no alias, no merged folder or result.json, exit 128+signal with the line saying to rerun. Never a RUNNING
run, never a version behind a KILLED run. The moments are found by polling the store and the run folder
as the search goes, as tests/integration/test_signals.py does.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main, start_main
from tests.helpers import query_store

pytestmark = pytest.mark.slow

REGISTRY = "finish-test"


def _args(work: Path, traj_cache: Path) -> list[str]:
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        "search.budget=3",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        f"registry.name={REGISTRY}",
        "registry.require_significant_gain=false",  # the tiny trajectory's gain is noise: register anyway
        "tracking.log_plots=false",
        "eval.limit=8",
        f"hydra.run.dir={work / 'run'}",
    ]


_SEARCH_STATUS = (
    "select r.status from runs r join tags t on r.run_uuid = t.run_uuid "
    "where t.key = 'ckptmerge.kind' and t.value = 'search'"
)

# moment → whether it has come, seen from outside the process
MOMENTS = {
    # the merge is in place: being reloaded and re-scored, the test report, the model logged
    "written": lambda work: (work / "run" / "merged").is_dir(),
    # the version exists: its alias, the card, the run's note and result artifact, the run's end
    "registered": lambda work: bool(query_store(work / "mlflow.db", "select 1 from model_versions")),
    # the run is FINISHED: the summary, result.json
    "run-finished": lambda work: ("FINISHED",) in query_store(work / "mlflow.db", _SEARCH_STATUS),
    # result.json is written: Hydra's shutdown
    "result-written": lambda work: (work / "run" / "result.json").is_file(),
}


def _state(work: Path, proc_rc: int, err: str, sig: signal.Signals) -> str:
    """Which of the two allowed states the search ended in; fails on anything else."""
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == [], err[-3000:]
    (search,) = [r for r in runs if r.data.tags.get("ckptmerge.kind") == "search"]
    versions = client.search_model_versions(f"name='{REGISTRY}'")
    assert "Traceback" not in err, err[-3000:]
    if search.info.status == "FINISHED":
        assert proc_rc == 0, err[-3000:]
        assert [v.run_id for v in versions] == [search.info.run_id]
        res = json.loads((work / "run" / "result.json").read_text())
        assert res["mlflow"]["run_id"] == search.info.run_id and res["registered_model"]["version"] == "1"
        assert (work / "run" / "merged" / "config.json").is_file()
        assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [], err[-3000:]
        if "arrived after" in err:  # the signal came while the process was still there to hear it
            assert f"{sig.name} arrived after the search had finished" in err
        return "finished"
    assert search.info.status == "KILLED", (search.info.status, err[-3000:])
    assert proc_rc == 128 + sig.value, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: stopped by {sig.name}; run the same command again to resume"], err[-3000:]
    assert versions == []  # no version, so no alias either
    assert not (work / "run" / "result.json").exists() and not (work / "run" / "merged").exists()
    return "stopped"


@pytest.mark.parametrize(
    "moment,sig",
    [
        ("written", signal.SIGTERM),
        ("registered", signal.SIGTERM),
        ("run-finished", signal.SIGTERM),
        ("result-written", signal.SIGTERM),
        ("registered", signal.SIGINT),
        ("run-finished", signal.SIGHUP),
    ],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_a_stop_during_the_finish_then_the_same_command_ends_with_one_version(
    tmp_path, traj_cache, tiny_trajectory, moment, sig
):
    args = _args(tmp_path, traj_cache)
    p = start_main(args, cwd=tmp_path, capture=True, from_terminal=True)
    came = MOMENTS[moment]
    deadline = time.time() + 400
    while time.time() < deadline and p.poll() is None and not came(tmp_path):
        time.sleep(0.01)
    assert came(tmp_path), f"the search ended before the moment {moment!r}"
    if p.poll() is None:
        p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    _state(tmp_path, p.returncode, err, sig)

    proc = run_main(args, cwd=tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _state(tmp_path, proc.returncode, proc.stderr, sig) == "finished"
