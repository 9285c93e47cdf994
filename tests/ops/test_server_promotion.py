"""A real `mlflow server` (PostgreSQL store when available, artifacts proxied to a local folder):
two searches register two candidates, `action=promote` runs three times (first / kept / promoted),
and `models:/NAME@champion` loads with mlflow.pyfunc and generates text. The first search and the
first promotion go through `mlflow run` (MLproject), whose run must be the one top-level run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN, REPO

pytestmark = pytest.mark.slow

NAME = "ops-merge"
EXPERIMENT = "ops-server"
STEP_TIMEOUT = 300


def run_clean(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python src/main.py ARGS`` without any MLflow run/store inherited from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    return subprocess.run(
        [sys.executable, str(MAIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT
    )


def mlflow_run(entry: str, overrides: list[str], url: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mlflow run REPO -e ENTRY --env-manager local -P overrides=...`` with MLFLOW_TRACKING_URI=url."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=url,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )  # `python` = this one
    words = " ".join(shlex.quote(o) for o in overrides)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-e",
            entry,
            "--env-manager",
            "local",
            "--experiment-name",
            EXPERIMENT,
            "-P",
            f"overrides={words}",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )


def search(url: str, cache: Path, pair: int, run_dir: Path) -> list[str]:
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={cache}",
        f"model.pair={pair}",
        "search.budget=2",
        "eval.limit=4",
        "eval.test_tasks=[ckptmerge_test_bpb]",
        f"tracking.uri={url}",
        f"tracking.experiment={EXPERIMENT}",
        f"registry.name={NAME}",
        "registry.require_significant_gain=false",
        f"hydra.run.dir={run_dir}",
    ]


def promote(url: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        "action=promote",
        f"registry.name={NAME}",
        f"tracking.uri={url}",
        f"tracking.experiment={EXPERIMENT}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def round_trip(tracking_server, tmp_path_factory, traj_cache, tiny_trajectory):
    """search pair 0 → promote (first) → search pair 1 → promote, margin 1000 (kept) → promote (promoted)
    → promote (already champion)."""
    url = tracking_server["url"]
    work = tmp_path_factory.mktemp("round-trip")
    steps: dict[str, dict] = {}
    client = MlflowClient(url)
    # Under `mlflow run`, MLFLOW_TRACKING_URI and the run's experiment apply: no tracking.* overrides.
    drop = ("tracking.uri=", "tracking.experiment=")
    plan = [
        ("search1", "main", [a for a in search(url, traj_cache, 0, work / "search1") if not a.startswith(drop)]),
        ("promote1", "promote", [a for a in promote(url, work / "promote1")[1:] if not a.startswith(drop)]),
        ("search2", None, search(url, traj_cache, 1, work / "search2")),
        ("promote2", None, promote(url, work / "promote2", "registry.promote_margin=1000")),
        ("promote3", None, promote(url, work / "promote3")),
        ("promote4", None, promote(url, work / "promote4")),  # the candidate is the champion now
    ]
    for step, entry, args in plan:
        t0 = time.perf_counter()
        proc = mlflow_run(entry, args, url, work) if entry else run_clean(args, work)
        print(f"{step}: {time.perf_counter() - t0:.1f} s")
        assert proc.returncode == 0, (
            f"{step} failed:\n{proc.stderr[-4000:]}\n{tracking_server['log'].read_text()[-2000:]}"
        )
        steps[step] = json.loads((work / step / "result.json").read_text())
        steps[step]["_stdout"] = proc.stdout
        if step.startswith("promote"):  # a version's promotion.* tags hold its latest decision: keep each
            version = steps[step]["candidate"]["version"]
            steps[step]["_tags"] = dict(client.get_model_version(NAME, version).tags)
            steps[step]["_champion"] = client.get_model_version_by_alias(NAME, "champion").version
    return {"url": url, "client": client, "steps": steps, **tracking_server}


def test_searches_log_and_register_through_the_server(round_trip):
    client, steps = round_trip["client"], round_trip["steps"]
    for step, version in (("search1", "1"), ("search2", "2")):
        result = steps[step]
        assert result["mlflow"]["tracking_uri"] == round_trip["url"]
        assert result["registered_model"] == {"name": NAME, "version": version, "alias": "candidate"}
        parent = client.get_run(result["mlflow"]["run_id"])
        assert parent.info.status == "FINISHED"
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert len(children) == 2
        mv = client.get_model_version(NAME, version)
        assert mv.run_id == parent.info.run_id
    exp = client.get_experiment_by_name(EXPERIMENT)
    # Proxied artifacts: clients hold mlflow-artifacts: URIs, the server wrote the files.
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    files = {p.name for p in round_trip["artifacts"].rglob("*") if p.is_file()}
    assert {"config.yaml", "result.json", "MLmodel", "model.safetensors"} <= files
    # The logged models belong to the search's experiment (MLflow 3 would otherwise file them under Default).
    assert list((round_trip["artifacts"] / exp.experiment_id / "models").glob("m-*/artifacts/MLmodel"))
    assert not (round_trip["artifacts"] / "0").exists()


def test_mlflow_run_is_the_single_top_level_run(round_trip):
    """`mlflow run -e main` opened the search's parent run; `-e promote` opened the promotion run."""
    client, steps = round_trip["client"], round_trip["steps"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    search1 = client.get_run(steps["search1"]["mlflow"]["run_id"])
    assert search1.data.tags["mlflow.project.entryPoint"] == "main"
    assert search1.data.tags["mlflow.source.type"] == "PROJECT"
    assert search1.data.tags["mlflow.runName"].startswith("search-")
    assert "model.pair=0" in search1.data.params["overrides"] and search1.data.params["model.pair"] == "0"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    under_search1 = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search1.info.run_id]
    assert len(under_search1) == 2
    # One top-level run per command: 2 searches + 4 promotions, nothing else.
    assert sorted(r.data.tags.get("ckptmerge.kind") for r in top) == ["promotion"] * 4 + ["search"] * 2
    assert len(runs) == len(top) + 4
    promote1 = client.get_run(steps["promote1"]["mlflow"]["run_id"])
    assert promote1.data.tags["mlflow.project.entryPoint"] == "promote" and promote1.info.status == "FINISHED"


def test_first_candidate_becomes_champion(round_trip):
    client, p1 = round_trip["client"], round_trip["steps"]["promote1"]
    assert p1["decision"] == "first" and p1["champion"] is None
    assert p1["candidate"]["version"] == "1"
    # The test tasks come from the candidate's search run (its logged config), with the limit it used.
    assert p1["test_tasks"] == ["ckptmerge_test_bpb"] and p1["limit"] == 4
    assert p1["score_definition"] == "-1·ckptmerge_test_bpb/bits_per_byte"
    # Evaluated afresh from the registry, it reproduces the test metric the search reported.
    search1 = round_trip["steps"]["search1"]
    key = "ckptmerge_test_bpb/bits_per_byte"
    assert p1["candidate"]["metrics"][key] == pytest.approx(search1["test_metrics"][key], rel=1e-5)
    tags = p1["_tags"]
    assert p1["_champion"] == "1" and tags["promotion.decision"] == "first"
    assert float(tags["promotion.candidate_score"]) == pytest.approx(p1["candidate"]["score"], abs=1e-6)
    assert tags["promotion.margin"] == "0" and tags["promotion.champion_score"] == ""
    assert tags["promotion.run_id"] == p1["mlflow"]["run_id"]
    run = client.get_run(p1["mlflow"]["run_id"])
    assert run.data.tags["ckptmerge.kind"] == "promotion" and run.data.tags["promotion.decision"] == "first"
    assert run.data.metrics["candidate_score"] == pytest.approx(p1["candidate"]["score"])
    assert "promotion.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "decision: first" in p1["_stdout"]
    # Nothing to compare with: no gain, no interval.
    assert p1["gain"] is None and p1["task_gains"] == {} and p1["regressions"] == []
    assert (
        p1["reason"] == "first candidate v1 becomes champion (there was none to compare with)"
        and p1["reason"] in p1["_stdout"]
    )
    assert tags["promotion.gain"] == "" and tags["promotion.gain_ci_low"] == ""


def test_champion_kept_when_the_margin_is_not_met(round_trip):
    client, p2 = round_trip["client"], round_trip["steps"]["promote2"]
    assert p2["decision"] == "kept" and p2["margin"] == 1000
    assert (p2["candidate"]["version"], p2["champion"]["version"]) == ("2", "1")
    assert p2["new_champion"]["version"] == "1"
    tags = p2["_tags"]
    assert p2["_champion"] == "1"
    assert tags["promotion.decision"] == "kept" and tags["promotion.margin"] == "1000"
    assert tags["promotion.champion_version"] == "1"
    assert float(tags["promotion.candidate_score"]) == pytest.approx(p2["candidate"]["score"], abs=1e-6)
    assert float(tags["promotion.champion_score"]) == pytest.approx(p2["champion"]["score"], abs=1e-6)
    run = client.get_run(p2["mlflow"]["run_id"])
    assert run.data.metrics["score_gain"] == pytest.approx(p2["candidate"]["score"] - p2["champion"]["score"])
    # The gain comes with its paired interval, which is nowhere near the margin.
    gain = p2["gain"]
    assert gain["value"] == pytest.approx(p2["candidate"]["score"] - p2["champion"]["score"], abs=1e-9)
    assert gain["ci_low"] <= gain["value"] <= gain["ci_high"] < 1000
    assert run.data.metrics["score_gain.ci_low"] == pytest.approx(gain["ci_low"])
    assert float(tags["promotion.gain_ci_low"]) == pytest.approx(gain["ci_low"], abs=1e-6)
    assert p2["reason"].startswith("kept champion v1: candidate v2 gains ") and p2["reason"] in p2["_stdout"]
    assert run.data.params["registry.promote_margin"] == "1000"
    # The champion is scored afresh each time and scores the same: evaluation is deterministic.
    assert p2["champion"]["score"] == pytest.approx(round_trip["steps"]["promote1"]["candidate"]["score"], rel=1e-6)


def test_candidate_promoted_when_its_gain_clears_the_margin_with_significance(round_trip):
    client, p3 = round_trip["client"], round_trip["steps"]["promote3"]
    # Pair 1 (the two newest checkpoints) beats pair 0 on held-out bits per byte by more than the
    # documents' noise: the interval's lower bound is above the margin 0.
    gain = p3["gain"]
    assert gain["significant"] and gain["ci_low"] > 0, (
        f"the newer pair is not significantly better ({gain}); the trajectory changed?"
    )
    assert p3["regressions"] == [] and list(p3["task_gains"]) == ["ckptmerge_test_bpb/bits_per_byte"]
    assert p3["reason"].startswith("promoted candidate v2 over champion v1: gains +") and p3["reason"] in p3["_stdout"]
    assert p3["_tags"]["promotion.gain_significant"] == "true"
    assert p3["decision"] == "promoted" and p3["new_champion"]["version"] == "2"
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    assert client.get_model_version_by_alias(NAME, "candidate").version == "2"
    assert p3["_champion"] == "2" and p3["_tags"]["promotion.decision"] == "promoted"
    assert client.get_model_version(NAME, "2").tags["promotion.decision"] == "promoted"  # the latest decision
    assert client.get_model_version(NAME, "1").tags["promotion.replaced_by"] == "2"
    assert p3["candidate"]["score"] == pytest.approx(round_trip["steps"]["promote2"]["candidate"]["score"], rel=1e-6)


def test_promoting_the_champion_again_changes_nothing(round_trip):
    client, p4 = round_trip["client"], round_trip["steps"]["promote4"]
    assert p4["decision"] == "already-champion" and p4["candidate"]["score"] is None  # nothing evaluated
    assert p4["gain"] is None and p4["regressions"] == []
    assert p4["_champion"] == "2"
    # The version keeps the tags of the decision that made it champion.
    assert p4["_tags"]["promotion.decision"] == "promoted"
    assert p4["_tags"]["promotion.run_id"] == round_trip["steps"]["promote3"]["mlflow"]["run_id"]
    assert client.get_run(p4["mlflow"]["run_id"]).data.tags["promotion.decision"] == "already-champion"


def test_champion_loads_with_pyfunc_and_generates(round_trip):
    import mlflow

    mlflow.set_tracking_uri(round_trip["url"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(["Return the"])
    assert isinstance(out[0], str) and out[0].startswith("Return the") and len(out[0]) > len("Return the")


def test_promote_of_an_unknown_model_is_one_line(round_trip, tmp_path):
    proc = run_clean(
        [
            "action=promote",
            "registry.name=no-such-model",
            f"tracking.uri={round_trip['url']}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: registry.name=no-such-model: no such registered model")
    assert not (tmp_path / "run" / "result.json").exists()


def test_mlflow_run_marks_a_failed_search_failed(round_trip, tmp_path):
    """Bad input under `mlflow run`: one `error:` line, exit 2 inside, and MLflow closes its run FAILED."""
    client = round_trip["client"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=round_trip["url"], PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO),
            "-e",
            "main",
            "--env-manager",
            "local",
            "--experiment-name",
            "ops-failed",
            "-P",
            f"overrides=search.budget=1 hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    assert proc.returncode != 0
    assert "error: search.budget must be an integer >= 2" in proc.stderr
    runs = client.search_runs([client.get_experiment_by_name("ops-failed").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "search.budget=1 hydra.run.dir=" in runs[0].data.params["overrides"]


def test_a_stale_or_foreign_mlflow_run_id_is_refused(round_trip, tmp_path, monkeypatch):
    """MLFLOW_RUN_ID left in a shell: a finished run, or one the store does not hold, stops at once."""
    from ckptmerge.config import TrackingConfig
    from ckptmerge.errors import TrackingError
    from ckptmerge.tracking.mlflow_run import SearchTracker

    cfg = TrackingConfig(uri=round_trip["url"])
    finished = round_trip["steps"]["search2"]["mlflow"]["run_id"]
    monkeypatch.setenv("MLFLOW_RUN_ID", finished)
    with pytest.raises(TrackingError, match=f"MLFLOW_RUN_ID={finished} names a FINISHED run"):
        SearchTracker(cfg, tmp_path)
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef0123456789abcdef")
    with pytest.raises(TrackingError, match="MLFLOW_RUN_ID=0123456789abcdef0123456789abcdef is not a run in http"):
        SearchTracker(cfg, tmp_path)
