"""Faults with real processes and real signals: a kill while the best merge is written, a failing trial."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from tests.conftest import MAIN, run_main

pytestmark = pytest.mark.slow


def _args(work, traj_cache, run_dir, budget=3):
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={budget}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.name=fault-test",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        "eval.limit=8",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to deliver SIGKILL at the swap")
def test_sigkill_while_the_best_merge_replaces_an_existing_one(tmp_path, traj_cache, tiny_trajectory):
    """The riskiest moment of writing: the finished merge is being swapped for the previous one."""
    out = tmp_path / "out"
    shutil.copytree(tiny_trajectory.checkpoints[0], out)  # a previous merge the user asked to overwrite
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = _args(tmp_path, traj_cache, tmp_path / "run1") + [f"merge.output_dir={out}", "merge.overwrite=true"]
    # strace delivers SIGKILL on the first rename touching the target: mid-swap, after the merge is written
    cmd = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-P",
        str(out),
        "-e",
        "trace=rename,renameat,renameat2",
        "-e",
        "inject=rename,renameat,renameat2:signal=SIGKILL",
        sys.executable,
        str(MAIN),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not (tmp_path / "run1" / "result.json").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old merge is intact, nothing half in place
    partial = list(tmp_path.glob(".out.partial-*"))
    assert partial and (partial[0] / "config.json").is_file(), "the kill did not happen while writing"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []  # nothing registered
    exp = client.get_experiment_by_name("ckptmerge")
    parent = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'search'")[0]
    assert parent.info.status == "RUNNING"  # died, never finished

    proc = run_main(
        args[:-3] + [f"hydra.run.dir={tmp_path / 'run2'}", f"merge.output_dir={out}", "merge.overwrite=true"],
        cwd=tmp_path,
    )  # the same command again
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "run2" / "result.json").read_text())
    assert res["mlflow"]["run_id"] == parent.info.run_id and res["registered_model"]["version"] == "1"
    trials = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'trial'")
    assert len([t for t in trials if t.info.status == "FINISHED"]) == 3  # no trial evaluated twice
    assert json.loads((out / "ckptmerge.json").read_text())["lambda"] == res["lambda"]  # the new merge is in place


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, tiny_trajectory):
    old, new = tiny_trajectory.checkpoints[-2], tiny_trajectory.checkpoints[-1]
    broken = tmp_path / "broken"
    shutil.copytree(old, broken)
    state = load_file(str(broken / "model.safetensors"))
    key = next(k for k in state if k.endswith("attention.dense.weight"))
    # Finite on disk (the content checks refuse NaN/Inf before any trial), but past float16's range: in a
    # float16 resident model any merge that gives it weight is Inf, and its objective NaN.
    state[key] = torch.full_like(state[key], 1e9)
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_main(
        [
            "model=local",
            f"model.checkpoints=[{broken},{new}]",
            "eval.tasks=[ckptmerge_dev_bpb]",
            f"eval.include_path={tiny_trajectory.tasks_dir}",
            "search.budget=4",
            "eval.limit=8",
            "runtime.dtype=float16",
            f"tracking.uri={uri}",
            "registry.name=nan-test",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    failed = [t for t in res["trials"] if t.get("error")]
    ok = [t for t in res["trials"] if not t.get("error")]
    assert len(res["trials"]) == 4 and [t["lambda"] for t in ok] == [1.0]  # only the newest alone is finite
    assert len(failed) == 3 and all("not finite" in t["error"] for t in failed)
    assert res["lambda"] == 1.0
    client = MlflowClient(uri)
    runs = client.search_runs(
        [res["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{res['mlflow']['run_id']}'"
    )
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED", "FAILED", "FAILED", "FINISHED"]
    for r in runs:
        if r.info.status == "FAILED":
            assert "not finite" in r.data.tags["ckptmerge.error"] and "objective" not in r.data.metrics


def test_a_dev_task_whose_code_raises_stops_the_search_at_the_first_trial(tmp_path, tiny_trajectory):
    """A task's process_results that raises fails every λ alike: one line after one trial, not the budget."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    src = (tiny_trajectory.tasks_dir / "ckptmerge_dev_mc.yaml").read_text()
    (tasks / "broken_mc.yaml").write_text(
        src.replace("task: ckptmerge_dev_mc", "task: broken_mc") + "process_results: !function broken.process_results\n"
    )
    (tasks / "broken.py").write_text("def process_results(doc, results):\n    raise KeyError('label_text')\n")
    a, b = tiny_trajectory.checkpoints[-2], tiny_trajectory.checkpoints[-1]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_main(
        [
            "model=local",
            f"model.checkpoints=[{a},{b}]",
            "eval.tasks=[broken_mc]",
            f"eval.include_path={tasks}",
            "search.budget=6",
            "eval.limit=8",
            f"tracking.uri={uri}",
            "registry.name=broken-task",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "fail on the first trial" in lines[0] and "label_text" in lines[0], proc.stderr[-2000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ckptmerge")
    trials = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'trial'")
    assert len(trials) == 1 and trials[0].info.status == "FAILED"
    assert client.search_registered_models() == []
    assert not (tmp_path / "run" / "merged").exists()


def test_a_checkpoint_folder_deleted_during_the_search_is_named_in_one_line(tmp_path, tiny_trajectory):
    """Not a symptom (the written merge "does not load"): the folder that went away, and nothing written."""
    import os
    import signal as _signal
    import time

    from tests.helpers import running_trial

    inputs = []
    for c in tiny_trajectory.checkpoints[-2:]:
        inputs.append(tmp_path / "ckpts" / c.name)
        shutil.copytree(c, inputs[-1])
    args = [
        "model=local",
        f"model.checkpoints=[{inputs[0]},{inputs[1]}]",
        "eval.tasks=[ckptmerge_dev_bpb]",
        f"eval.include_path={tiny_trajectory.tasks_dir}",
        "eval.limit=8",
        "eval.batch_size=2",
        "search.budget=3",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "registry.name=fault-test",
        "tracking.log_plots=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    p = subprocess.Popen(
        [sys.executable, str(MAIN), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 400
    while time.time() < deadline and p.poll() is None and running_trial(tmp_path / "mlflow.db") is None:
        time.sleep(0.05)
    assert p.poll() is None, "the search ended before its first trial"
    shutil.rmtree(inputs[1])  # the trainer's cleanup removes the newer checkpoint mid-search
    try:
        _, err = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, _signal.SIGKILL)
        raise
    assert p.returncode == 2, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: checkpoint folder {inputs[1]} disappeared during the search"
    )
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "merged").exists() and not (tmp_path / "run" / "result.json").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
