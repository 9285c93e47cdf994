"""A search over an averaging family (search/space=decay) end to end: the space's checkpoints, its warm
start, its coordinate and weights per trial, its GP plot, and the gain over the newest checkpoint."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main

pytestmark = pytest.mark.slow


def test_a_family_search_covers_the_newest_checkpoints_and_starts_from_the_baselines(
    tmp_path, traj_cache, tiny_trajectory
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    budget = 5
    proc = run_main(
        [
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            "search/space=decay",
            f"search.budget={budget}",
            "search.stop=budget",  # counts every trial of the budget
            "eval.limit=10",
            "registry.enabled=false",
            f"tracking.uri={uri}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    names = [c.name for c in tiny_trajectory.checkpoints][-4:]  # search.space.last=4; the tiny one has 3
    assert list(result["weights"]) == names
    trials = result["trials"]
    # the decay family expresses the newest alone and the uniform soup (LAWA over 3 of 3 is the same);
    # EMA it only comes close to, which is left to the GP
    assert [t["proposed_by"] for t in trials[:3]] == ["warm:newest", "warm:uniform", trials[2]["proposed_by"]]
    assert not trials[2]["proposed_by"].startswith("warm")
    assert trials[0]["weights"] == {n: (1.0 if n == names[-1] else 0.0) for n in names}
    assert all(t["lambda"] is None for t in trials)  # λ is the pair's; a family has its own coordinate
    # the gain is measured against the newest alone, which the warm start evaluated first
    assert result["baseline_objective"] == trials[0]["objective"]
    assert result["gain"]["value"] == pytest.approx(result["objective"] - trials[0]["objective"], abs=1e-9)
    client = MlflowClient(uri)
    runs = client.search_runs(
        [result["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{result['mlflow']['run_id']}'"
    )
    assert len(runs) == budget
    for r in runs:
        newest = float(r.data.params["newest_weight"])
        assert 1 / len(names) <= newest <= 1 and "lambda" not in r.data.params
        assert float(r.data.params[f"weight.{names[-1]}"]) == pytest.approx(newest, abs=1e-6)
        assert sum(float(r.data.params[f"weight.{n}"]) for n in names) == pytest.approx(1)
    last = max(runs, key=lambda r: int(r.data.params["trial"]))
    assert "gp_posterior.png" in {a.path for a in client.list_artifacts(last.info.run_id)}
    assert "gp.mean_at_newest_weight" in last.data.metrics


def test_a_budget_smaller_than_the_warm_start_says_which_baselines_it_leaves_out(tmp_path, traj_cache, tiny_trajectory):
    """The simplex over the tiny trajectory's 3 checkpoints warm-starts from newest, uniform and ema (lawa
    over 3 of 3 is the uniform soup): a budget of 2 cannot hold them, and "never below the baselines"
    does not hold for those it leaves out."""
    proc = run_main(
        [
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            "search/space=simplex",
            "search.budget=2",
            "eval.limit=8",
            "registry.enabled=false",
            "tracking.log_plots=false",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    evaluated = [t["proposed_by"].removeprefix("warm:") for t in result["trials"]]
    assert evaluated == ["newest", "uniform"]
    assert result["warm_start_dropped"] == ["ema"]
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: search.budget=2")]
    assert warnings == [
        "warning: search.budget=2 cannot hold the warm start of search/space=simplex (3 points): baselines ema "
        "are left out and the result is not checked against them; set search.budget>=3 to evaluate them"
    ]
