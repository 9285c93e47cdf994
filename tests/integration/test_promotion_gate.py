"""The promotion gate end to end: real models in a real (sqlite) registry, `python src/main.py
action=promote` as a user runs it, real lm-eval on the tiny trajectory's test tasks.

Four versions are registered with the project's own ``log_and_register`` (in a child process, so that
MLflow's global state stays out of this one):

* v1: the tiny trajectory's middle checkpoint (step 60), the first champion;
* v2: its last (step 90) with heavy weight noise (half of each tensor's spread): about as good as v1 on
  held-out text, better on some documents and worse on others, a gain within noise;
* v3: step 90 itself: far better than v1;
* v4: step 90 trained further on Python code: much better on the out-of-domain code task, significantly
  worse on the docstring task; with the code task weighted 2 its total score still gains.

(A *nearly* identical copy will not do for "within noise": bits per byte is smooth enough that the paired
bootstrap sees even a 2% weight perturbation shift every document the same way, a real if tiny difference.)
Then, as searches would, the `candidate` alias moves v2 → v3 → v4 while promote decides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, run_main

pytestmark = pytest.mark.slow

NAME = "gate"
BPB, OOD = "ckptmerge_test_bpb", "ckptmerge_test_ood_bpb"
LIMIT = 20  # documents per task: enough for the intervals below to be decisive, and quick


def _register(uri: str, artifacts: Path, checkpoints: Path) -> None:
    """Register v1..v4 (see the module docstring) under NAME, each from its own finished run."""
    import inspect
    import json as json_module
    import shlex
    import string
    import textwrap

    import mlflow
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ckptmerge.tracking.registry import log_and_register

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("registered", artifact_location=artifacts.as_uri())

    def load(step: str):
        return (
            AutoModelForCausalLM.from_pretrained(checkpoints / step).eval(),
            AutoTokenizer.from_pretrained(checkpoints / step),
        )

    def noisy(model):  # independent noise on every weight: worse overall, not the same way on every document
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in model.parameters():
                if p.numel() > 1:
                    p.add_(0.5 * p.float().std() * torch.randn(p.shape, generator=gen))
        return model

    def on_code(model, tok):  # 30 AdamW steps on stdlib source: a code specialist
        torch.manual_seed(0)
        text = "".join(
            inspect.getsource(m) for m in (textwrap, shlex, string, json_module.decoder, json_module.encoder)
        )
        chunks = [text[i : i + 400] for i in range(0, len(text), 400)]
        tok.pad_token = tok.pad_token or tok.eos_token
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for step in range(30):
            batch = tok(
                chunks[4 * step : 4 * step + 4], return_tensors="pt", padding=True, truncation=True, max_length=128
            )
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            model(**batch, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        return model.eval()

    step90 = load("step00090")
    versions = [
        ("step 60", load("step00060")),
        ("step 90 + noise", (noisy(load("step00090")[0]), step90[1])),
        ("step 90", step90),
        ("step 90 + code", (on_code(*load("step00090")), step90[1])),
    ]
    for description, (model, tok) in versions:
        run = client.create_run(experiment, run_name=description)
        log_and_register(run.info.run_id, model, tok, NAME, "candidate", {}, description, uri)
        client.set_terminated(run.info.run_id)


def _promote(work: Path, uri: str, tasks_dir: Path, step: str, tasks: list[str], *extra: str) -> dict:
    proc = run_main(
        [
            "action=promote",
            f"registry.name={NAME}",
            f"tracking.uri={uri}",
            "tracking.experiment=promotions",
            f"eval.test_tasks=[{','.join(tasks)}]",
            f"eval.include_path={tasks_dir}",
            f"eval.limit={LIMIT}",
            "eval.max_length=128",
            f"hydra.run.dir={work / step}",
            *extra,
        ],
        cwd=work,
    )
    assert proc.returncode == 0, f"{step} failed:\n{proc.stderr[-4000:]}"
    client = MlflowClient(uri)
    result = json.loads((work / step / "result.json").read_text())
    result["_stdout"] = proc.stdout
    result["_tags"] = dict(client.get_model_version(NAME, result["candidate"]["version"]).tags)
    result["_champion"] = str(client.get_model_version_by_alias(NAME, "champion").version)
    result["_run"] = client.get_run(result["mlflow"]["run_id"])
    return result


@pytest.fixture(scope="module")
def gate_steps(tmp_path_factory, tiny_trajectory):
    work = tmp_path_factory.mktemp("promotion-gate")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.test_promotion_gate",
            uri,
            str(work / "artifacts"),
            str(tiny_trajectory.checkpoints[0].parent),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(uri)
    assert [str(mv.version) for mv in client.search_model_versions(f"name='{NAME}'", order_by=["version_number"])] == [
        "1",
        "2",
        "3",
        "4",
    ]
    client.set_registered_model_alias(NAME, "champion", "1")
    tasks_dir = tiny_trajectory.tasks_dir
    steps: dict[str, dict] = {}
    weights = f"eval.weights={{{OOD}:2}}"
    plan = [
        ("noise", "2", [BPB], ()),
        ("better", "3", [BPB], ()),
        ("tradeoff", "4", [BPB, OOD], (weights,)),
        ("tradeoff_allowed", "4", [BPB, OOD], (weights, "registry.allow_task_regression=true")),
    ]
    for step, candidate, tasks, extra in plan:
        client.set_registered_model_alias(NAME, "candidate", candidate)  # as a search that registered it would
        steps[step] = _promote(work, uri, tasks_dir, step, tasks, *extra)
    return {"client": client, "steps": steps}


def test_a_candidate_within_noise_of_the_champion_is_not_promoted(gate_steps):
    r = gate_steps["steps"]["noise"]
    assert (r["candidate"]["version"], r["champion"]["version"]) == ("2", "1")
    gain = r["gain"]
    # Its point score is higher: the old rule (score difference >= margin 0) promoted it ...
    assert gain["value"] > 0 and r["candidate"]["score"] > r["champion"]["score"]
    assert gain["value"] == pytest.approx(r["candidate"]["score"] - r["champion"]["score"], abs=1e-9)
    # ... but by less than the documents can tell apart.
    assert not gain["significant"] and gain["ci_low"] <= 0 <= gain["ci_high"] and gain["p_value"] > 0.05, gain
    assert r["decision"] == "kept" and r["_champion"] == "1" and r["new_champion"]["version"] == "1"
    line = next(ln for ln in r["_stdout"].splitlines() if ln.startswith("kept champion v1"))
    assert line.startswith("kept champion v1: candidate v2 gains +") and line.endswith(": within noise")
    assert "95% CI [-" in line and ", p=" in line and line == r["reason"]
    tags = r["_tags"]
    assert tags["promotion.decision"] == "kept" and tags["promotion.gain_significant"] == "false"
    assert float(tags["promotion.gain"]) == pytest.approx(gain["value"], abs=1e-6)
    assert float(tags["promotion.gain_ci_low"]) == pytest.approx(gain["ci_low"], abs=1e-6)
    assert float(tags["promotion.gain_ci_high"]) == pytest.approx(gain["ci_high"], abs=1e-6)
    assert tags["promotion.regressions"] == "" and tags["promotion.reason"] == r["reason"]
    run = r["_run"]
    assert run.data.tags["promotion.decision"] == "kept"
    assert run.data.metrics["score_gain.ci_low"] == pytest.approx(gain["ci_low"])
    assert run.data.metrics["score_gain.significant"] == 0.0
    # One scored metric: its own gain is the score's (bits per byte enters negated, and so is its gain oriented).
    assert r["task_gains"][f"{BPB}/bits_per_byte"]["value"] == pytest.approx(gain["value"], abs=1e-9)
    assert r["limit"] == LIMIT and r["bootstrap"] == {"resamples": 1000, "confidence": 0.95, "seed": 0}


def test_a_clearly_better_candidate_is_promoted(gate_steps):
    r = gate_steps["steps"]["better"]
    assert (r["candidate"]["version"], r["champion"]["version"]) == ("3", "1")
    gain = r["gain"]
    assert gain["significant"] and gain["ci_low"] > 0 and gain["p_value"] < 0.05, gain
    assert r["decision"] == "promoted" and r["_champion"] == "3" and r["regressions"] == []
    assert list(r["task_gains"]) == [f"{BPB}/bits_per_byte"]
    tags = r["_tags"]
    assert tags["promotion.decision"] == "promoted" and tags["promotion.gain_significant"] == "true"
    assert r["reason"].startswith("promoted candidate v3 over champion v1: gains +") and "95% CI [+" in r["reason"]
    assert r["reason"] in r["_stdout"] and "decision: promoted" in r["_stdout"]
    metrics = r["_run"].data.metrics
    assert metrics["score_gain.significant"] == 1.0 and metrics["regressions"] == 0.0
    assert metrics[f"task_gain.{BPB}/bits_per_byte.ci_high"] == pytest.approx(
        r["task_gains"][f"{BPB}/bits_per_byte"]["ci_high"]
    )
    assert gate_steps["client"].get_model_version(NAME, "1").tags["promotion.replaced_by"] == "3"


def test_a_significant_regression_on_one_test_task_keeps_the_champion(gate_steps):
    r = gate_steps["steps"]["tradeoff"]
    assert (r["candidate"]["version"], r["champion"]["version"]) == ("4", "3")
    assert r["score_definition"] == f"-1·{BPB}/bits_per_byte -2·{OOD}/bits_per_byte"
    gain, tasks = r["gain"], r["task_gains"]
    # Better in total (the code task counts twice), and significantly so ...
    assert gain["significant"] and gain["ci_low"] > 0, gain
    assert tasks[f"{OOD}/bits_per_byte"]["ci_low"] > 0
    # ... but significantly worse on the docstrings: not promoted, and the line names the task.
    assert tasks[f"{BPB}/bits_per_byte"]["ci_high"] < 0
    assert r["regressions"] == [f"{BPB}/bits_per_byte"]
    assert r["decision"] == "kept" and r["_champion"] == "3"
    line = next(ln for ln in r["_stdout"].splitlines() if ln.startswith("kept champion v3"))
    assert line.startswith("kept champion v3: candidate v4 gains +")
    assert f": regresses on {BPB}/bits_per_byte (-" in line and line.endswith("])") and line.count("95% CI [") == 2
    assert r["_tags"]["promotion.regressions"] == f"{BPB}/bits_per_byte"
    assert r["_tags"]["promotion.allow_task_regression"] == "false"
    assert r["_run"].data.metrics["regressions"] == 1.0
    assert r["_run"].data.tags["promotion.regressions"] == f"{BPB}/bits_per_byte"


def test_allow_task_regression_accepts_the_trade_off(gate_steps):
    r, before = gate_steps["steps"]["tradeoff_allowed"], gate_steps["steps"]["tradeoff"]
    assert r["allow_task_regression"] is True
    assert r["decision"] == "promoted" and r["_champion"] == "4"
    assert r["regressions"] == [f"{BPB}/bits_per_byte"]  # still reported
    assert "allowed by registry.allow_task_regression=true: regresses on" in r["reason"]
    assert r["_tags"]["promotion.allow_task_regression"] == "true"
    # The same documents and resamples give the same interval as the refused run.
    assert r["gain"] == before["gain"] and r["task_gains"] == before["task_gains"]
    assert gate_steps["client"].get_model_version(NAME, "3").tags["promotion.replaced_by"] == "4"


if (
    __name__ == "__main__"
):  # the fixture's child: python -m tests.integration.test_promotion_gate URI ARTIFACTS CHECKPOINTS
    _register(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
