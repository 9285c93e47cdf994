"""Only what this process wrote is ever replaced or removed; finishing a search again is idempotent.

Real processes, real signals and a real sqlite MLflow store: a folder that appears at the output path
while a search runs is left as it was; two merges into one folder cannot both "win"; a search killed
after its merge is in place, or after it registered, ends with exactly one registered version when the
same command is run again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN, run_main
from tests.helpers import count_finished_trials

pytestmark = pytest.mark.slow


def _args(work, traj_cache, run_dir, out, budget=3):
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={budget}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.name=own-test",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        "eval.limit=8",
        f"merge.output_dir={out}",
        f"hydra.run.dir={run_dir}",
    ]


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def test_a_folder_created_at_the_output_path_during_the_search_is_never_deleted(tmp_path, traj_cache, tiny_trajectory):
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, str(MAIN), *_args(tmp_path, traj_cache, tmp_path / "run", out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and count_finished_trials(tmp_path / "mlflow.db") < 1:
        time.sleep(0.2)
    assert p.poll() is None, "the search ended before the folder could be created"
    out.mkdir()
    (out / "notes.txt").write_text("the user's notes")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 2, stderr[-2000:]
    lines = _error_lines(stderr)
    assert len(lines) == 1 and "already exists" in lines[0] and str(out) in lines[0], stderr[-2000:]
    assert sorted(x.name for x in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert not list(tmp_path.glob(".out.*"))  # our partial folder is gone
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
    exp = client.get_experiment_by_name("ckptmerge")
    parent = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'search'")[0]
    assert parent.info.status == "FAILED" and "already exists" in parent.data.tags["ckptmerge.error"]


def test_two_merges_into_one_folder_one_wins_the_other_says_so(tmp_path, tiny_trajectory):
    a, b = tiny_trajectory.checkpoints[-2], tiny_trajectory.checkpoints[-1]
    out = tmp_path / "out"
    procs = {}
    for w in ("0.25", "0.75"):
        args = [
            "action=merge",
            "model=local",
            f"model.checkpoints=[{a},{b}]",
            f"merge.weights=[{w},{1 - float(w)}]",
            f"merge.output_dir={out}",
            f"hydra.run.dir={tmp_path / ('run' + w)}",
        ]
        procs[w] = subprocess.Popen(
            [sys.executable, str(MAIN), *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
    done = {w: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for w, p in procs.items()}
    winners = [w for w, (rc, _, _) in done.items() if rc == 0]
    assert len(winners) == 1, {w: (rc, err[-500:]) for w, (rc, _, err) in done.items()}
    loser = next(w for w in done if w not in winners)
    rc, stdout, stderr = done[loser]
    assert rc == 2 and "already exists" in _error_lines(stderr)[0] and "merged" not in stdout
    written = json.loads((out / "ckptmerge.json").read_text())["weights"]
    assert list(written.values())[0] == pytest.approx(float(winners[0]))
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to deliver SIGKILL when the merge is reloaded")
def test_killed_after_the_merge_is_in_place_or_registered_the_same_command_ends_with_one_version(
    tmp_path, traj_cache, tiny_trajectory
):
    out = tmp_path / "out"
    args = _args(tmp_path, traj_cache, tmp_path / "run1", out)
    # SIGKILL when the written merge is first opened for the re-score: it is complete and in place.
    cmd = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-P",
        str(out / "model.safetensors"),
        "-e",
        "trace=openat,open",
        "-e",
        "inject=openat,open:signal=SIGKILL",
        sys.executable,
        str(MAIN),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert (out / "model.safetensors").is_file(), "the kill did not happen after the merge was in place"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    parent = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'search'")[0]
    assert parent.info.status == "RUNNING" and client.search_registered_models() == []
    assert json.loads((out / "ckptmerge.json").read_text())["owner"] == f"search:{parent.info.run_id}"

    rerun = args[:-1] + [f"hydra.run.dir={tmp_path / 'run2'}"]
    proc = run_main(rerun, cwd=tmp_path)  # the same command: resumes, replaces its own folder, registers once
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "run2" / "result.json").read_text())
    assert res["mlflow"]["run_id"] == parent.info.run_id and res["registered_model"]["version"] == "1"

    # The state a SIGKILL leaves between registering and closing the run: version 1 exists, the parent
    # is RUNNING and its process is gone. (A pid that has exited stands for the killed process.)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = client.get_run(parent.info.run_id).data.tags["ckptmerge.owner"].rpartition(":")[0]
    client.set_tag(parent.info.run_id, "ckptmerge.owner", f"{host}:{int(dead.stdout)}")
    client.update_run(parent.info.run_id, status="RUNNING")
    proc = run_main(args[:-1] + [f"hydra.run.dir={tmp_path / 'run3'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "run3" / "result.json").read_text())
    assert res["mlflow"]["run_id"] == parent.info.run_id
    versions = client.search_model_versions("name='own-test'")
    assert [str(v.version) for v in versions] == ["1"] and res["registered_model"]["version"] == "1"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert str(client.get_model_version_by_alias("own-test", "candidate").version) == "1"


def test_an_output_disk_too_small_for_the_merge_fails_before_any_trial(tmp_path, traj_cache, tiny_trajectory):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        proc = run_main(_args(tmp_path, traj_cache, tmp_path / "run", mnt / "merged"), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = _error_lines(proc.stderr)
        assert len(lines) == 1 and "not enough disk space" in lines[0], proc.stderr[-2000:]
        assert count_finished_trials(tmp_path / "mlflow.db") == 0
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
