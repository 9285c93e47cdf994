"""A search that converges before its budget: it says so in one line, records ``stopped``, bills every
document it scored (``cost`` = the sum of its child runs' figures), and, killed after it converged,
resumes to the same result without evaluating another trial."""

from __future__ import annotations

import json
import signal

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main, start_main
from tests.helpers import count_finished_trials, sigkill_when

pytestmark = pytest.mark.slow

BUDGET = 8
LIMIT = 12  # documents per dev task; the tiny trajectory has two dev tasks


def _args(work, traj_cache, run_dir):
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={BUDGET}",
        f"eval.limit={LIMIT}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def converged(tmp_path_factory, traj_cache, tiny_trajectory):
    work = tmp_path_factory.mktemp("converged")
    proc = run_main(_args(work, traj_cache, work / "run"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc, json.loads((work / "run" / "result.json").read_text())


def _children(uri, result):
    client = MlflowClient(uri)
    parent = result["mlflow"]["run_id"]
    return client, client.search_runs([result["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'")


def test_it_stops_after_the_initial_design_and_says_so_in_one_line(converged):
    _, proc, result = converged
    stopped = result["stopped"]
    n = len(result["trials"])
    assert stopped["reason"] == "converged" and stopped["of"] == BUDGET and stopped["after"] == n
    assert stopped["rule"] == "converged"  # search.stop=auto on the pair: the converged stop applied
    assert 3 < n < BUDGET  # never inside the initial design (λ=0, 1, ½), and before the budget
    crit = stopped["criterion"]
    assert crit["max_expected_improvement_in_se"] < crit["stop_margin"] and crit["streak"] == crit["patience"]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("converged after")]
    assert len(lines) == 1 and lines[0].startswith(f"converged after {n} of {BUDGET} evaluations"), proc.stdout
    assert result["stopped_early"] and "converged" in result["stopped_early"]  # the older key still says it


def test_cost_adds_up_to_the_child_runs(converged):
    work, proc, result = converged
    client, children = _children(f"sqlite:///{work / 'mlflow.db'}", result)
    cost = result["cost"]
    assert cost["evaluations"] == len(children) == len(result["trials"])
    docs = [c.data.metrics["docs_evaluated"] for c in children]
    assert docs == [2 * LIMIT] * len(children)  # every trial scored every dev document
    assert cost["documents"] == sum(docs)
    assert cost["tokens"] == sum(c.data.metrics["tokens_evaluated"] for c in children) > 0
    assert cost["seconds"] == pytest.approx(sum(c.data.metrics["eval_seconds"] for c in children), abs=0.01)
    for c in children:  # the evaluation is part of the trial
        assert 0 < c.data.metrics["eval_seconds"] <= c.data.metrics["trial_seconds"]
    assert cost["saved_fraction"] == pytest.approx(1 - sum(docs) / (BUDGET * 2 * LIMIT), abs=1e-4)
    assert cost["saved_fraction"] > 0  # it converged before the budget
    parent = client.get_run(result["mlflow"]["run_id"])
    assert parent.data.metrics["cost.documents"] == cost["documents"]
    assert parent.data.metrics["cost.evaluations"] == cost["evaluations"]
    assert parent.data.tags["ckptmerge.stopped"] == f"converged after {len(children)} of {BUDGET}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("cost:"))
    assert f"{cost['evaluations']} evaluations, {cost['documents']:,} documents, {cost['tokens']:,} tokens" in line
    assert sum(t["docs_evaluated"] for t in result["trials"]) == cost["documents"]  # result.json agrees


def test_killed_after_it_converged_the_same_command_runs_no_more_trials(tmp_path, traj_cache, converged):
    _, _, ref = converged
    n = len(ref["trials"])
    p = start_main(_args(tmp_path, traj_cache, tmp_path / "run1"), cwd=tmp_path)
    # converged: it is writing the merge now
    sigkill_when(p, lambda: count_finished_trials(tmp_path / "mlflow.db") >= n, 400)
    assert p.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    assert not (tmp_path / "run1" / "result.json").exists()

    proc = run_main(_args(tmp_path, traj_cache, tmp_path / "run2"), cwd=tmp_path)  # the same command
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run2" / "result.json").read_text())
    assert "Resumed" in proc.stdout + proc.stderr
    _, children = _children(f"sqlite:///{tmp_path / 'mlflow.db'}", res)
    assert len(children) == len(res["trials"]) == n  # not one trial past the convergence stop
    assert res["stopped"]["reason"] == "converged" and res["stopped"]["after"] == n
    assert [t["lambda"] for t in res["trials"]] == [t["lambda"] for t in ref["trials"]]
    assert res["lambda"] == ref["lambda"]
    assert res["cost"]["documents"] == ref["cost"]["documents"]  # read back from the child runs, counted once
