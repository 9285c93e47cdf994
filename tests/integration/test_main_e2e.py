"""`python src/main.py` end to end on a tiny real trajectory, checked against what MLflow holds."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import E2E_BUDGET, E2E_SECRETS, run_main

pytestmark = pytest.mark.slow

BUDGET = E2E_BUDGET
SECRETS = E2E_SECRETS


@pytest.fixture(scope="module")
def search_run(e2e_search):
    return e2e_search


def test_summary_is_printed(search_run):
    _, _, proc, result = search_run
    out = proc.stdout
    assert f"best λ = {result['lambda']:.4f}" in out
    assert "dev gain over" in out and "95% CI [" in out
    assert "decision: registered" in out and (result["gain"]["significant"] or "NOT significant" in out)
    assert result["mlflow"]["run_id"] in out
    assert "registered model tiny-merge version 1" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out


def test_one_child_run_per_trial_with_lambda_objective_and_gp_state(search_run, tiny_trajectory):
    _, uri, _, result = search_run
    old, new = (p.name for p in tiny_trajectory.checkpoints[-2:])
    client = MlflowClient(uri)
    parent = result["mlflow"]["run_id"]
    children = client.search_runs([result["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == BUDGET == len(result["trials"])
    by_lambda = {float(c.data.params["lambda"]): c for c in children}
    assert len(by_lambda) == BUDGET  # never the same λ twice
    for t in result["trials"]:
        child = by_lambda[t["lambda"]]
        assert child.data.metrics["objective"] == pytest.approx(t["objective"], abs=1e-9)
        assert set(child.data.params) >= {"lambda", f"weight.{old}", f"weight.{new}", "proposed_by"}
        assert float(child.data.params[f"weight.{old}"]) == pytest.approx(1 - t["lambda"])
        assert any(k.startswith("ckptmerge_dev_bpb/") for k in child.data.metrics)
        assert any(k.startswith("ckptmerge_dev_mc/") for k in child.data.metrics)
    lams = [t["lambda"] for t in result["trials"]]
    assert lams[0] == 0.0 and lams[1] == 1.0
    gp_child = by_lambda[lams[-1]]  # after three observations the GP state is logged
    assert "gp.mean_at_lambda" in gp_child.data.metrics and "gp.std_at_lambda" in gp_child.data.metrics
    assert any(k.startswith("gp.kernel.") for k in gp_child.data.metrics)
    assert gp_child.data.tags.get("gp.next_acquisition") in ("EI", "LCB", "PI")
    arts = [a.path for a in client.list_artifacts(gp_child.info.run_id)]
    assert "gp_posterior.png" in arts


def test_result_json_agrees_with_mlflow_and_registry(search_run, tiny_trajectory):
    work, uri, _, result = search_run
    old, new = (p.name for p in tiny_trajectory.checkpoints[-2:])
    client = MlflowClient(uri)
    parent = client.get_run(result["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED"
    history = client.get_metric_history(parent.info.run_id, "best_objective")
    assert len(history) == BUDGET
    assert max(h.value for h in history) == pytest.approx(max(t["objective"] for t in result["trials"]))
    chosen = next(t for t in result["trials"] if t["lambda"] == result["lambda"])
    assert result["objective"] == chosen["objective"] and result["selected_by"] in ("posterior_mean", "observed")
    assert set(result["gain"]) == {"value", "ci_low", "ci_high", "p_value", "significant", "confidence"}
    assert result["gain"]["ci_low"] <= result["gain"]["value"] <= result["gain"]["ci_high"]
    assert parent.data.metrics["gain_over_newest.ci_low"] == pytest.approx(result["gain"]["ci_low"])
    assert set(result["test_gains"]) == set(result["test_metrics"])
    assert all(t["objective_se"] > 0 for t in result["trials"])
    assert parent.data.metrics["best_lambda"] == pytest.approx(result["lambda"])
    assert result["weights"] == {old: pytest.approx(1 - result["lambda"]), new: pytest.approx(result["lambda"])}
    assert result["rescored_objective"] == pytest.approx(result["objective"], abs=1e-6)
    assert set(result["test_metrics"]) >= {"ckptmerge_test_bpb/bits_per_byte", "ckptmerge_test_mc/acc"}
    assert set(result["test_metrics_by_checkpoint"]) == {old, new}
    assert parent.data.params["search.budget"] == str(BUDGET)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "checkpoints.json", "result.json", "test_doc_scores.json"} <= arts
    reg = result["registered_model"]
    assert reg == {"name": "tiny-merge", "version": "1", "alias": "candidate"}
    mv = client.get_model_version_by_alias("tiny-merge", "candidate")
    assert str(mv.version) == "1" and mv.run_id == parent.info.run_id
    assert float(mv.tags["lambda"]) == pytest.approx(result["lambda"], abs=1e-6)
    assert mv.tags["search_run_id"] == parent.info.run_id
    better = result["gain"]["significant"] and result["gain"]["value"] > 0  # a significant improvement
    assert mv.tags["significant"] == str(better).lower() and "ci_low" in mv.tags["gain"]
    assert str(tiny_trajectory.checkpoints[-1]) in mv.tags["sources"]
    out = work / "run" / "merged"
    assert out.is_dir() and (out / "config.json").is_file() and str(out) == result["output_dir"]


def test_registered_model_loads_and_generates(search_run):
    import mlflow

    _, uri, _, _ = search_run
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/tiny-merge@candidate")
    out = model.predict(["Return the"])
    assert isinstance(out[0], str) and out[0].startswith("Return the")


def test_local_checkpoints_with_own_tasks(tmp_path, tiny_trajectory):
    """Contract: model=local with folders and our own lm-eval YAML tasks; grid search for comparison."""
    a, b = tiny_trajectory.checkpoints[0], tiny_trajectory.checkpoints[1]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_main(
        [
            "model=local",
            f"model.checkpoints=[{a},{b}]",
            "eval.tasks=[ckptmerge_dev_bpb]",
            f"eval.include_path={tiny_trajectory.tasks_dir}",
            "search=grid",
            "search.budget=3",
            f"tracking.uri={uri}",
            "registry.enabled=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [t["lambda"] for t in result["trials"]] == [0.0, 1.0, 0.5]
    assert set(result["weights"]) == {a.name, b.name}
    assert result["registered_model"] is None
    assert result["objective_definition"] == "-1·ckptmerge_dev_bpb/bits_per_byte"
    assert result["objective"] == pytest.approx(-result["metrics"]["ckptmerge_dev_bpb/bits_per_byte"])


def test_no_secret_reaches_the_store_or_artifacts(search_run):
    work, _, _, _ = search_run
    files = [work / "mlflow.db", *[p for p in (work / "mlartifacts").rglob("*") if p.is_file()]]
    assert len(files) > 10
    for f in files:
        data = f.read_bytes()
        for secret in SECRETS.values():
            assert secret.encode() not in data, f"{secret} found in {f}"
