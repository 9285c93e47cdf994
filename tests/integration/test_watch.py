"""action=watch on real files, a real sqlite MLflow store, real lm-eval and real signals.

A simulated trainer writes the tiny trajectory's checkpoints into a folder one at a time, in chunks
with a pause mid-file; the watcher is SIGKILLed mid-search and started again with the same command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN, run_main
from tests.helpers import count_finished_trials

pytestmark = pytest.mark.slow

BUDGET = 4


def _args(work: Path, traj, watch: Path, idle_exit_s: float | None, run_dir: Path, budget: int = BUDGET) -> list[str]:
    return [
        "action=watch",
        "model=local",
        f"watch.dir={watch}",
        "watch.poll_s=0.3",
        "watch.settle_s=1",
        f"watch.idle_exit_s={'null' if idle_exit_s is None else idle_exit_s}",
        "eval.tasks=[ckptmerge_dev_bpb]",
        f"eval.include_path={traj.tasks_dir}",
        "eval.limit=12",
        f"search.budget={budget}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.name=watch-test",
        "tracking.log_plots=false",
        f"hydra.run.dir={run_dir}",
    ]


def _write_slowly(src: Path, dst: Path, pause_s: float) -> float:
    """Write a checkpoint as a trainer does, file by file, the weights in chunks with a pause mid-file;
    returns the time the last byte was written."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    data = (src / "model.safetensors").read_bytes()
    with open(dst / "model.safetensors", "wb") as fh:
        for i in range(4):
            fh.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
            fh.flush()
            os.fsync(fh.fileno())
            time.sleep(pause_s if i == 1 else 0.1)  # longer than watch.settle_s: only the length check can tell
    for f in sorted(src.iterdir()):
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, dst / f.name)
    return time.time()


def _searches(client, exp_id):
    return client.search_runs([exp_id], "tags.`ckptmerge.kind` = 'search'")


def _history(client, run_id, metric) -> dict[int, float]:
    """A metric's values by step; a step logged twice fails here (the timeline logs each pair once)."""
    history = client.get_metric_history(run_id, metric)
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), (metric, steps)
    return {m.step: m.value for m in history}


def test_watch_written_slowly_killed_mid_search_and_restarted(tmp_path, tiny_trajectory):
    src = tiny_trajectory.checkpoints  # step00030, step00060, step00090
    watch = tmp_path / "ckpts"
    watch.mkdir()
    args = _args(tmp_path, tiny_trajectory, watch, 4, tmp_path / "run")
    out1 = open(tmp_path / "watch1.out", "w")
    p = subprocess.Popen(
        [sys.executable, str(MAIN), *args], cwd=tmp_path, stdout=out1, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    deadline = time.time() + 240
    while "watching " not in (tmp_path / "watch1.out").read_text() and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)  # the watcher is looking before the trainer writes: it sees the files half-written
    done_writing: dict[str, float] = {}
    for c in src[:2]:
        done_writing[c.name] = _write_slowly(c, watch / c.name, pause_s=2.0)
    db = tmp_path / "mlflow.db"
    while count_finished_trials(db) < BUDGET and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)  # the first pair's search
    assert p.poll() is None, (tmp_path / "watch1.out").read_text()[-3000:]
    writer = threading.Thread(
        target=lambda: done_writing.__setitem__(src[2].name, _write_slowly(src[2], watch / src[2].name, 2.0))
    )
    writer.start()
    while count_finished_trials(db) < BUDGET + 1 and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)  # the second pair's search is under way
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    writer.join()
    out1.close()
    first = (tmp_path / "watch1.out").read_text()
    assert p.returncode == -signal.SIGKILL, first[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ckptmerge").experiment_id
    interrupted = [r for r in _searches(client, exp) if r.data.tags["ckptmerge.checkpoints"] == "step00060,step00090"]
    assert len(interrupted) == 1 and interrupted[0].info.status == "RUNNING"  # killed mid-search
    # the half-written weights were seen and waited for, with one line, never an error
    assert "waiting for step00030: model.safetensors has" in first, first[-3000:]
    assert "Traceback" not in first and not [ln for ln in first.splitlines() if ln.startswith("error")]

    proc = run_main(args, cwd=tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "pair step00030 → step00060: already searched" in proc.stdout
    assert "pair step00060 → step00090 (step 90): λ=" in proc.stdout
    assert "(watch.idle_exit_s=4); the watch ends" in proc.stdout

    searches = _searches(client, exp)
    by_pair = {r.data.tags["ckptmerge.checkpoints"]: r for r in searches}
    assert len(searches) == 2 and set(by_pair) == {"step00030,step00060", "step00060,step00090"}
    assert all(r.info.status == "FINISHED" for r in searches)
    assert by_pair["step00060,step00090"].info.run_id == interrupted[0].info.run_id  # resumed, not repeated
    # watch.warm_start: the second pair also started from the first pair's λ (unless it is λ=0 or λ=1,
    # evaluated anyway), and the restart replayed the same proposals under the same resume key
    first_run, second_run = by_pair["step00030,step00060"], by_pair["step00060,step00090"]
    first_lam = json.loads(Path(client.download_artifacts(first_run.info.run_id, "result.json")).read_text())["lambda"]
    assert second_run.data.tags["ckptmerge.watch.warm_from"] == first_run.info.run_id
    second_trials = sorted(
        (
            r.data.params
            for r in client.search_runs(
                [exp], f"tags.mlflow.parentRunId = '{second_run.info.run_id}' and attributes.status = 'FINISHED'"
            )
        ),
        key=lambda p: int(p["trial"]),
    )
    starts = [(float(p["lambda"]), p["proposed_by"]) for p in second_trials[:3]]
    if min(first_lam, 1 - first_lam) < 0.001:
        assert starts[:2] == [(0.0, "initial"), (1.0, "initial")], (first_lam, starts)
    else:
        assert starts == [(pytest.approx(first_lam), "warm:previous-pair"), (0.0, "initial"), (1.0, "initial")]
    assert "Resumed trial" not in proc.stdout + proc.stderr  # no recorded point differed from the proposal
    for pair, run in by_pair.items():
        newer = pair.split(",")[1]
        assert run.info.start_time >= done_writing[newer] * 1000, f"{pair} searched before {newer} was whole"
        trials = client.search_runs(
            [exp], f"tags.mlflow.parentRunId = '{run.info.run_id}' and attributes.status = 'FINISHED'"
        )
        assert len(trials) == BUDGET  # every trial evaluated to completion once

    watches = client.search_runs([exp], "tags.`ckptmerge.kind` = 'watch'")
    assert len(watches) == 1 and watches[0].info.status == "FINISHED"  # the restart continued the watch run
    wid = watches[0].info.run_id
    assert {r.data.tags["ckptmerge.watch.run_id"] for r in searches} == {wid}
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["state"] == "idle" and result["searched_by_this_process"] == ["step00060,step00090"]
    assert [row["step"] for row in result["pairs"]] == [60, 90]
    for metric in ("gain", "newest_objective", "merged_objective", "lambda", "gain.ci_low", "gain.ci_high"):
        assert sorted(_history(client, wid, metric)) == [60, 90], metric
    gains = _history(client, wid, "gain")
    for row in result["pairs"]:
        pair_result = by_pair[",".join(row["checkpoints"])]
        assert gains[row["step"]] == pytest.approx(row["gain"]["value"])
        assert row["search_run_id"] == pair_result.info.run_id
        assert row["merged_objective"] - row["newest_objective"] == pytest.approx(row["gain"]["value"], abs=1e-9)
        if row["steps_gained"] is None:
            assert row["steps_gained_undefined_because"]
        else:
            assert _history(client, wid, "steps_gained")[row["step"]] == pytest.approx(row["steps_gained"])


def test_two_watchers_on_one_folder_search_each_pair_once(tmp_path, tiny_trajectory):
    watch = tmp_path / "ckpts"
    watch.mkdir()
    for c in tiny_trajectory.checkpoints:  # DeepSpeed-style names this time
        shutil.copytree(c, watch / f"global_step{int(c.name[4:])}")
    procs = [
        subprocess.Popen(
            [sys.executable, str(MAIN), *_args(tmp_path, tiny_trajectory, watch, 3, tmp_path / f"run{i}", budget=3)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n-----\n".join(o[-2000:] for o in outs)
    assert all("Traceback" not in o for o in outs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge").experiment_id
    searches = _searches(client, exp)
    pairs = sorted(r.data.tags["ckptmerge.checkpoints"] for r in searches)
    assert pairs == ["global_step30,global_step60", "global_step60,global_step90"]  # one search each, no more
    assert all(r.info.status == "FINISHED" for r in searches)
    trials = client.search_runs([exp], "tags.`ckptmerge.kind` = 'trial' and attributes.status = 'FINISHED'")
    assert len(trials) == 2 * 3  # nothing evaluated twice
    results = [json.loads((tmp_path / f"run{i}" / "result.json").read_text()) for i in range(2)]
    assert sorted(p for r in results for p in r["searched_by_this_process"]) == pairs
    for r in results:  # each watch's timeline holds both pairs, whoever searched them
        assert [row["step"] for row in r["pairs"]] == [60, 90]
        assert sorted(_history(client, r["mlflow"]["run_id"], "gain")) == [60, 90]


def _start_watcher(watch, tmp_path, *settings):
    """``action=watch`` on ``watch`` as a process with piped output, once it has said it is watching."""
    p = subprocess.Popen(
        [
            sys.executable,
            str(MAIN),
            "action=watch",
            "model=local",
            f"watch.dir={watch}",
            *settings,
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    first = p.stdout.readline()
    assert first.startswith(f"watching {watch}"), first + p.stderr.read()
    return p


def test_sigterm_ends_the_watch_killed_with_one_line(tmp_path):
    watch = tmp_path / "ckpts"
    watch.mkdir()
    (watch / "checkpoint-10").mkdir()  # a folder the trainer has only started
    p = _start_watcher(watch, tmp_path, "watch.poll_s=0.3")
    assert p.stdout.readline().strip() == "waiting for checkpoint-10: config.json is missing"
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        "error: stopped by SIGTERM; run the same command again to resume"
    ]
    assert "Traceback" not in err
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("ckptmerge").experiment_id],
        "tags.`ckptmerge.kind` = 'watch'",
    )[0]
    assert run.info.status == "KILLED" and run.data.tags["ckptmerge.stopped_by"] == "SIGTERM"
    assert "waiting for checkpoint-10" not in rest  # said once, not every poll
    assert json.loads((tmp_path / "run" / "result.json").read_text())["state"] == "stopped by SIGTERM"


def test_a_missing_watch_dir_is_one_line(tmp_path):
    proc = run_main(
        [
            "action=watch",
            "model=local",
            f"watch.dir={tmp_path / 'nope'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: watch.dir={tmp_path / 'nope'} does not exist; create it (the trainer's output folder)"
    ]


def test_a_watch_under_mlflow_run_is_refused_with_one_line(tmp_path):
    proc = run_main(
        [
            "action=watch",
            "model=local",
            f"watch.dir={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env_extra={"MLFLOW_RUN_ID": "0123456789abcdef"},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "unset MLFLOW_RUN_ID" in errors[0]


def test_a_pair_search_starts_from_the_previous_pairs_point(tmp_path, tiny_trajectory):
    """The SearchRun a watch starts, given the previous pair's result.json: its point is the first trial
    (child run param proposed_by), in the budget, and in the resume key (the watch run above only reaches
    the case where that point is λ=1, which is left out)."""
    from ckptmerge.actions.search import SearchRun
    from ckptmerge.config import config_from_dict

    cfg = config_from_dict(
        {
            "model": {
                "name": "local",
                "source": "local",
                "checkpoints": [str(c) for c in tiny_trajectory.checkpoints[1:]],
            },
            "eval": {"tasks": ["ckptmerge_dev_bpb"], "include_path": str(tiny_trajectory.tasks_dir), "limit": 12},
            "search": {"budget": 3, "space": {"name": "pair", "last": 2, "warm_start": False}},
            "registry": {"enabled": False},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "log_plots": False},
        }
    )
    previous = {"lambda": 0.4, "space": {"name": "pair", "checkpoints": 2, "point": {"lambda": 0.4}}}
    result = SearchRun(cfg, tmp_path / "run", tmp_path, previous_result=previous).run()
    assert [(t["lambda"], t["proposed_by"]) for t in result["trials"]] == [
        (0.4, "warm:previous-pair"),
        (0.0, "initial"),
        (1.0, "initial"),
    ]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = result["mlflow"]["run_id"]
    first = client.search_runs(
        [result["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{run_id}' and params.trial = '0'"
    )
    assert [r.data.params["proposed_by"] for r in first] == ["warm:previous-pair"]
    key = json.loads(Path(client.download_artifacts(run_id, "resume_key.json")).read_text())
    assert key["search"]["previous_pair"] == [0.4]


def test_a_watch_dir_that_is_itself_a_checkpoint_gets_a_warning_naming_the_fix(tmp_path, tiny_trajectory):
    ckpt = tiny_trajectory.checkpoints[-1]  # read only: nothing is written into the watched folder
    proc = run_main(
        [
            "action=watch",
            "model=local",
            f"watch.dir={ckpt}",
            "watch.poll_s=0.3",
            "watch.idle_exit_s=1",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")] == [
        f"warning: watch.dir={ckpt} is itself a checkpoint folder (config.json and weights), not a folder of "
        f"checkpoints; watch the folder the trainer writes them into, e.g. watch.dir={ckpt.parent}"
    ]


def test_a_watch_dir_deleted_mid_watch_is_a_wait_and_one_warning(tmp_path):
    """Deleted (or unmounted) while the watcher runs: a warning, a wait, and the watch goes on when it is
    back; not a FileNotFoundError traceback and a FAILED watch run."""
    watch = tmp_path / "ckpts"
    watch.mkdir()
    p = _start_watcher(watch, tmp_path, "watch.poll_s=0.2", "watch.idle_exit_s=6")
    watch.rmdir()
    time.sleep(2)  # several polls while it is gone
    watch.mkdir()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith(("warning:", "error:"))] == [
        f"warning: watch.dir={watch} cannot be read (No such file or directory); waiting for it to come back "
        "(watch.idle_exit_s ends the watch if it does not)"
    ]
    assert f"{watch} can be read again" in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("ckptmerge").experiment_id], "tags.`ckptmerge.kind` = 'watch'"
    )[0]
    assert run.info.status == "FINISHED"


def test_a_renamed_checkpoint_folder_is_not_searched_again(tmp_path, tiny_trajectory):
    """A checkpoint is its weights, not its folder's name: step00090 renamed checkpoint-90 after its pair
    finished is the same pair, skipped, not a second search and a second version."""
    watch = tmp_path / "ckpts"
    watch.mkdir()
    for c in tiny_trajectory.checkpoints[-2:]:
        shutil.copytree(c, watch / c.name)
    args = _args(tmp_path, tiny_trajectory, watch, 1, tmp_path / "run", budget=2)
    first = run_main(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge").experiment_id
    (search,) = _searches(client, exp)

    newest = tiny_trajectory.checkpoints[-1].name
    (watch / newest).rename(watch / "checkpoint-90")
    again = run_main(args, cwd=tmp_path)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r.info.run_id for r in _searches(client, exp)] == [search.info.run_id]
    older = tiny_trajectory.checkpoints[-2].name
    assert (
        f"pair {older} → checkpoint-90: already searched (the same weights under other folder names) "
        f"(run {search.info.run_id}); skipped"
    ) in again.stdout
