"""`action=pilot` and `action=compare` end to end on the tiny trajectory."""

from __future__ import annotations

import csv
import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main

pytestmark = pytest.mark.slow


def test_pilot_evaluates_singles_and_pairs(tmp_path, traj_cache, tiny_trajectory):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_main(
        [
            "action=pilot",
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            f"tracking.uri={uri}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(tiny_trajectory.checkpoints)
    rows = list(csv.DictReader((tmp_path / "run" / "pilot.csv").open()))
    assert len(rows) == n * (n - 1) // 2
    assert sum(r["adjacent"] == "True" for r in rows) == n - 1
    for r in rows:
        assert float(r["gain"]) == pytest.approx(float(r["objective"]) - float(r["newer_objective"]))
    assert (tmp_path / "run" / "pilot.png").stat().st_size > 1000
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("ckptmerge").experiment_id])[0]
    assert run.data.tags["ckptmerge.kind"] == "pilot"
    assert len([k for k in run.data.metrics if k.startswith("single.")]) == n
    assert {"pilot_heatmap.png", "pilot.md", "pilot.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "gain" in proc.stdout and "adjacent" in proc.stdout
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["action"] == "pilot" and len(result["singles"]) == n and result["registered_model"] is None


def test_compare_runs_every_method_on_the_same_budget_and_registers_the_best(tmp_path, traj_cache, tiny_trajectory):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    methods = [
        "newest",
        "uniform",
        "lawa",
        "ema",
        "greedy",
        "fisher",
        "regmean",
        "bo",
        "bo_simplex",
        "bo_window",
        "random",
    ]
    budget = 3
    proc = run_main(
        [
            "action=compare",
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            f"compare.methods=[{','.join(methods)}]",
            f"search.budget={budget}",
            "+compare.settings.fisher.tokens=512",
            "+compare.settings.regmean.tokens=512",
            "+compare.settings.lawa.k=2",
            "compare.register=true",
            "registry.name=cmp",
            "eval.limit=10",
            f"tracking.uri={uri}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "run" / "compare.json").read_text())
    result = json.loads((tmp_path / "run" / "result.json").read_text())  # every action writes one
    assert result["action"] == "compare" and all(result[k] == v for k, v in out.items())
    by = {m["method"]: m for m in out["methods"]}
    assert list(by) == methods
    k = len(tiny_trajectory.checkpoints)  # compare.last=4 > 3 checkpoints: all of them
    assert by["greedy"]["evaluations"] == k + (k - 1)
    for m in ("bo", "bo_simplex", "bo_window", "random"):
        assert by[m]["evaluations"] == budget
    for m in ("newest", "uniform", "lawa", "ema", "fisher", "regmean"):
        assert by[m]["evaluations"] == 1
    assert by["uniform"]["weights"] == pytest.approx({n: 1 / k for n in out["checkpoints"]})
    assert by["lawa"]["weights"][out["checkpoints"][0]] == 0
    assert by["fisher"]["weights"] is None and by["regmean"]["weights"] is None
    # the searched methods start from the newest alone, so they are never worse than it
    for m in ("bo", "bo_simplex", "bo_window", "random"):
        assert by[m]["objective"] >= by["newest"]["objective"] - 1e-12
    # a search over the k checkpoints starts from the baselines it can express (newest, uniform, LAWA
    # here, with a budget of 3): at equal budget it never ends below them
    for m in ("bo_simplex", "bo_window"):
        assert by[m]["objective"] >= max(by[b]["objective"] for b in ("newest", "uniform", "lawa")) - 1e-12, m
    assert all(set(m["test_metrics"]) >= {"ckptmerge_test_bpb/bits_per_byte"} for m in out["methods"])
    rows = list(csv.DictReader((tmp_path / "run" / "compare.csv").open()))
    assert [r["method"] for r in rows] == methods
    client = MlflowClient(uri)
    parent = out["mlflow"]["run_id"]
    exp = out["mlflow"]["experiment_id"]
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(c.info.run_name for c in children) == sorted(methods)
    bo_run = next(c for c in children if c.info.run_name == "bo")
    assert len(client.search_runs([exp], f"tags.mlflow.parentRunId = '{bo_run.info.run_id}'")) == budget
    window_run = next(c for c in children if c.info.run_name == "bo_window")
    trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{window_run.info.run_id}'")
    assert sorted(t.data.params["proposed_by"] for t in trials) == ["warm:lawa", "warm:newest", "warm:uniform"]
    for t in trials:  # the family's own coordinate and the weights it gives every checkpoint
        assert 1 <= float(t.data.params["window"]) <= k
        assert sum(float(t.data.params[f"weight.{n}"]) for n in out["checkpoints"]) == pytest.approx(1)
    best = max(out["methods"], key=lambda m: m["objective"])
    assert out["best_method"] == best["method"]
    reg = out["registered_model"]
    mv = client.get_model_version_by_alias("cmp", "candidate")
    assert str(mv.version) == reg["version"] and mv.tags["method"] == best["method"]
    table = proc.stdout[proc.stdout.index("compare on ") :]
    assert all(m in table for m in methods) and "gain" in table and "95% CI" in table
    # every method's gain over newest is paired on the same documents, with its interval
    assert by["newest"]["gain"]["value"] == 0 and not by["newest"]["gain"]["significant"]
    for m in out["methods"]:
        g = m["gain"]
        assert g["ci_low"] <= g["value"] <= g["ci_high"]
        assert g["value"] == pytest.approx(m["objective"] - by["newest"]["objective"], abs=1e-9)
        assert set(m["test_gains"]) == set(m["test_metrics"])
    assert {"gain ci_low", "gain ci_high", "gain significant"} <= set(rows[0])
    assert "best: " in proc.stdout and "dev gain over newest" in proc.stdout
    # which won, paired on the same documents: the best against the runner-up and, when the best is not
    # a baseline, against the best baseline
    ranked = sorted(out["methods"], key=lambda m: m["objective"], reverse=True)
    head_to_head_results = out["best_against"]
    assert (
        head_to_head_results[0]["winner"] == best["method"] and head_to_head_results[0]["other"] == ranked[1]["method"]
    )
    baselines = {"newest", "uniform", "lawa", "ema", "greedy", "fisher", "regmean"}
    best_baseline = next(m["method"] for m in ranked if m["method"] in baselines)
    if best["method"] not in baselines:
        assert any(v["other"] == best_baseline and v["role"].endswith("best baseline") for v in head_to_head_results)
    for v in head_to_head_results:
        g = v["dev_gain"]
        assert g["value"] == pytest.approx(best["objective"] - by[v["other"]]["objective"], abs=1e-9)
        assert g["ci_low"] <= g["value"] <= g["ci_high"]
        assert set(v["test_gains"]) == set(best["test_metrics"])
        assert f"{best['method']} against the {v['role']}, {v['other']}: dev " in proc.stdout
    assert "Which won, paired on the same documents" in (tmp_path / "run" / "compare.md").read_text()
