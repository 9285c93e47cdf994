"""What a finished search leaves for the tools its users live in: MLflow's UI (experiment kind, run
description, dataset inputs, model version text), a Hugging Face model card and a mergekit config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_experiment_is_tagged_model_development_and_parent_has_description(e2e_search):
    _, uri, _, result = e2e_search
    client = MlflowClient(uri)
    exp = client.get_experiment(result["mlflow"]["experiment_id"])
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    note = client.get_run(result["mlflow"]["run_id"]).data.tags["mlflow.note.content"]
    old, new = (c["name"] for c in result["checkpoints"])
    assert f"`{old}` → `{new}`" in note
    assert result["objective_definition"] in note
    assert f"λ = {result['lambda']:.4f}" in note
    g = result["gain"]
    assert f"{g['value']:+.5f}" in note and f"[{g['ci_low']:+.5f}, {g['ci_high']:+.5f}]" in note
    assert f"**Decision**: {result['decision']}" in note
    assert "`tiny-merge` version 1 (alias `candidate`)" in note
    assert f"get-artifact?path=gp_posterior.png&run_uuid={result['mlflow']['run_id']}" in note
    assert "gp_posterior.png" in {a.path for a in client.list_artifacts(result["mlflow"]["run_id"])}


def _inputs(run) -> dict[str, tuple]:
    return {d.dataset.name: (d.dataset, {t.key: t.value for t in d.tags}) for d in run.inputs.dataset_inputs}


def test_tasks_are_dataset_inputs_of_the_runs_that_evaluated_them(e2e_search, tiny_trajectory):
    from ckptmerge.tracking.datasets import content_digest

    _, uri, proc, result = e2e_search
    # MLflow's hint about integer columns (model signatures) is not printed for logged inputs
    assert "Inferred schema contains integer column" not in proc.stderr
    client = MlflowClient(uri)
    parent = client.get_run(result["mlflow"]["run_id"])
    inputs = _inputs(parent)
    dev = {k.split("/")[0] for k in result["metrics"]}
    test = {k.split("/")[0] for k in result["test_metrics"]}
    assert dev and test and set(inputs) == dev | test
    for name, (ds, tags) in inputs.items():
        assert tags["mlflow.data.context"] == ("dev" if name in dev else "test")
        source = json.loads(ds.source)
        assert source["split"] in ("validation", "test")
        (data_file,) = source["data_files"].values()
        docs = [json.loads(line) for line in Path(data_file).read_text().splitlines() if line.strip()]
        # no eval.limit: every document was scored, and the digest is that of their content
        assert json.loads(ds.profile)["num_rows"] == len(docs) > 0
        assert ds.digest == content_digest(docs)
    children = client.search_runs(
        [result["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == len(result["trials"])
    for child in children:
        got = _inputs(child)
        assert set(got) == dev and all(tags["mlflow.data.context"] == "dev" for _, tags in got.values())
        assert {n: d.digest for n, (d, _) in got.items()} == {n: inputs[n][0].digest for n in dev}


def test_model_version_says_the_same_in_brief(e2e_search):
    _, uri, _, result = e2e_search
    mv = MlflowClient(uri).get_model_version_by_alias("tiny-merge", "candidate")
    assert result["mlflow"]["run_id"] in mv.description
    assert result["objective_definition"] in mv.description and f"{result['gain']['value']:+.5f}" in mv.description
    assert mv.tags["decision"] == result["decision"]
    assert mv.tags["checkpoints"] == ",".join(c["name"] for c in result["checkpoints"])


def test_merged_folder_has_a_model_card(e2e_search):
    from huggingface_hub import ModelCard

    _, _, _, result = e2e_search
    card = ModelCard.load(Path(result["output_dir"]) / "README.md")
    assert card.data.base_model == [c["folder"] for c in result["checkpoints"]]
    assert card.data.base_model_relation == "merge" and card.data.library_name == "transformers"
    got = {
        (r.dataset_name, r.metric_type, r.metric_name.endswith("(test)")): r.metric_value
        for r in card.data.eval_results
    }
    want = {
        **{(k.split("/")[0], k.split("/")[1], False): v for k, v in result["metrics"].items()},
        **{(k.split("/")[0], k.split("/")[1], True): v for k, v in result["test_metrics"].items()},
    }
    assert got == pytest.approx(want)
    for n, w in result["weights"].items():
        assert f"| {n} |" in card.text and f"{w:.6f}" in card.text
    assert f"{result['gain']['value']:+.5f}" in card.text and result["objective_definition"] in card.text
    assert "`tiny-merge` version 1" in card.text  # the card was completed after registration
    assert "mergekit-yaml mergekit_config.yml" in card.text and "action=merge" in card.text
    assert not [p for p in Path(result["output_dir"]).iterdir() if p.name.startswith(".")]  # no partial card left


def test_merged_folder_has_a_mergekit_config_that_mergekit_accepts(e2e_search):
    import yaml
    from mergekit.config import MergeConfiguration

    from ckptmerge.interop.mergekit import read_linear

    _, _, _, result = e2e_search
    path = Path(result["output_dir"]) / "mergekit_config.yml"
    config = MergeConfiguration.model_validate(yaml.safe_load(path.read_text()))
    assert config.merge_method == "linear"
    assert [str(m.model.model.path) for m in config.models] == [c["folder"] for c in result["checkpoints"]]
    assert [m.parameters["weight"] for m in config.models] == pytest.approx(list(result["weights"].values()), abs=0)
    recipe = read_linear(path)
    assert recipe.weights == tuple(result["weights"].values()) and recipe.dtype == "auto"


def test_summary_links_the_runs_page(e2e_search):
    """MLflow 3.17's UI opens an experiment on the GenAI overview unless the link names the workflow type."""
    _, _, proc, result = e2e_search
    exp = result["mlflow"]["experiment_id"]
    assert f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning" in proc.stdout
