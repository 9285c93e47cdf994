"""A search killed with SIGKILL resumes with the same command: nothing evaluated twice, same result."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main, start_main
from tests.helpers import count_finished_trials, sigkill_when

pytestmark = pytest.mark.slow

BUDGET = 5


def _args(work, traj_cache, run_dir):
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={BUDGET}",
        "search.stop=budget",  # counts every trial of the budget
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.name=resume-test",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        "eval.limit=12",
        f"hydra.run.dir={run_dir}",
    ]


def _finished_trials(client, exp_id):
    runs = client.search_runs([exp_id], "tags.`ckptmerge.kind` = 'trial'")
    return [r for r in runs if r.info.status == "FINISHED"]


def test_sigkill_then_same_command_resumes(tmp_path, traj_cache, tiny_trajectory):
    # the reference: the same search, never interrupted
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    proc = run_main(_args(ref_dir, traj_cache, ref_dir / "run"), cwd=ref_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = json.loads((ref_dir / "run" / "result.json").read_text())

    work = tmp_path / "killed"
    work.mkdir()
    kill_after = random.Random(os.getpid()).randint(1, BUDGET - 2)  # a random trial
    p = start_main(_args(work, traj_cache, work / "run1"), cwd=work)
    sigkill_when(p, lambda: count_finished_trials(work / "mlflow.db") >= kill_after, 300, poll=0.2)
    assert p.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    done_before = len(_finished_trials(client, exp.experiment_id))
    assert done_before < BUDGET
    assert not (work / "run1" / "result.json").exists()
    assert MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_registered_models() == []

    proc = run_main(_args(work, traj_cache, work / "run2"), cwd=work)  # the same command again
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((work / "run2" / "result.json").read_text())
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    parents = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'search'")
    assert len(parents) == 1 and parents[0].info.run_id == res["mlflow"]["run_id"]  # the same search continued
    finished = _finished_trials(client, exp.experiment_id)
    assert len(finished) == BUDGET  # each trial evaluated (to completion) once
    lams = [float(r.data.params["lambda"]) for r in finished]
    assert len(set(lams)) == BUDGET
    # the same λ sequence and the same result as the search that was never interrupted
    assert [t["lambda"] for t in res["trials"]] == [t["lambda"] for t in ref["trials"]]
    assert [t["objective"] for t in res["trials"]] == pytest.approx([t["objective"] for t in ref["trials"]], abs=1e-12)
    assert res["lambda"] == ref["lambda"] and res["objective"] == pytest.approx(ref["objective"], abs=1e-12)
    assert res["registered_model"]["version"] == "1"
    assert "Resumed" in proc.stdout + proc.stderr


def test_resume_with_a_different_config_is_refused(tmp_path, traj_cache, tiny_trajectory):
    work = tmp_path
    proc = run_main(_args(work, traj_cache, work / "run1") + ["search.budget=2", "registry.enabled=false"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = json.loads((work / "run1" / "result.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    client.update_run(run_id, status="FAILED")  # as if it had died after its trials
    proc = run_main(_args(work, traj_cache, work / "run2") + [f"search.resume={run_id}", "search.alpha=0.3"], cwd=work)
    assert proc.returncode == 2
    assert "search.alpha was 0.0, now 0.3" in proc.stderr
