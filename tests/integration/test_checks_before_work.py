"""Every check that can fail runs before the first evaluation, and its message points at a fix that works.

Each case used to fail only after the work (compare's calibration text after five methods; a long output
name after every trial), to be accepted silently (a run folder inside a checkpoint), or to advise what
would still be refused. Here each ends at once: one ``error:`` line, exit 2, no MLflow run, nothing written.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_main

pytestmark = pytest.mark.slow


def _runs(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def _fails_at_once(proc: subprocess.CompletedProcess, db: Path, *expected: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for e in expected:
        assert e in lines[0], lines[0]
    assert _runs(db) == 0, "an MLflow run was started before the check failed"
    return lines[0]


@pytest.fixture(scope="module")
def pair(tiny_trajectory, tmp_path_factory) -> list[Path]:
    """Copies of the last two checkpoints: a case that the old code got wrong may write into them."""
    root = tmp_path_factory.mktemp("inputs")
    return [Path(shutil.copytree(c, root / c.name)) for c in tiny_trajectory.checkpoints[-2:]]


def _local(traj, pair) -> list[str]:
    return [
        "model=local",
        f"model.checkpoints=[{pair[0]},{pair[1]}]",
        "eval.tasks=[ckptmerge_dev_bpb]",
        f"eval.include_path={traj.tasks_dir}",
        "eval.limit=4",
        "search.budget=2",
        "tracking.log_plots=false",
    ]


def test_compare_without_calibration_text_fails_before_any_method(tmp_path, tiny_trajectory, pair):
    db = tmp_path / "mlflow.db"
    proc = run_main(
        [
            "action=compare",
            *_local(tiny_trajectory, pair),
            "compare.methods=[newest,uniform,fisher]",
            f"tracking.uri=sqlite:///{db}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    _fails_at_once(proc, db, "compare.calibration_path", "fisher")
    assert not (tmp_path / "run" / "compare.md").exists()


def _writing_to(out, action, tmp_path, tiny_trajectory, pair):
    """``action`` (search or merge) of the pair with ``merge.output_dir=out``: the process and its store."""
    db = tmp_path / "mlflow.db"
    extra = ["action=merge", "merge.weights=[0.5,0.5]"] if action == "merge" else []
    proc = run_main(
        [
            *_local(tiny_trajectory, pair),
            *extra,
            f"merge.output_dir={out}",
            f"tracking.uri=sqlite:///{db}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    return proc, db


@pytest.mark.parametrize("action", ["search", "merge"])
def test_an_output_name_too_long_for_its_partial_folder_fails_at_once(action, tmp_path, tiny_trajectory, pair):
    # 250 characters fit the file system (255) but ".NAME.partial-HOST-PID-XXXXXXXX" beside it does not
    out = tmp_path / ("m" * 250)
    proc, db = _writing_to(out, action, tmp_path, tiny_trajectory, pair)
    _fails_at_once(proc, db, "merge.output_dir", "255")
    assert not out.exists() and not list(tmp_path.glob(".m*.partial-*"))


def test_a_run_folder_inside_an_input_checkpoint_is_refused(tmp_path, tiny_trajectory, pair):
    before = sorted(p.name for p in pair[1].iterdir())
    db = tmp_path / "mlflow.db"
    proc = run_main(
        [*_local(tiny_trajectory, pair), f"tracking.uri=sqlite:///{db}", f"hydra.run.dir={pair[1] / 'run'}"],
        cwd=tmp_path,
    )
    _fails_at_once(proc, db, "hydra.run.dir", "inside the checkpoint folder", str(pair[1]))
    assert sorted(p.name for p in pair[1].iterdir()) == before  # nothing written into the checkpoint


@pytest.mark.parametrize("action", ["search", "merge"])
def test_output_equal_to_an_input_does_not_advise_overwrite(action, tmp_path, tiny_trajectory, pair):
    proc, db = _writing_to(pair[1], action, tmp_path, tiny_trajectory, pair)
    line = _fails_at_once(proc, db, "is the input checkpoint")
    assert "overwrite" not in line  # merge.overwrite=true would still be refused


def test_unquoted_unicode_in_an_override_is_one_line_saying_how_to_quote(tmp_path):
    db = tmp_path / "mlflow.db"
    proc = run_main(
        ["tracking.experiment=essai-é", f"tracking.uri=sqlite:///{db}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    _fails_at_once(proc, db, "tracking.experiment='essai-é'", "quote")


def test_promoting_a_version_whose_files_were_deleted_names_them(tmp_path, tiny_trajectory):
    """A registered version whose artifacts were removed from the store after it was registered."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    artifacts = tmp_path / "artifacts"
    register = (
        "import sys, mlflow\n"
        "from mlflow.tracking import MlflowClient\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from ckptmerge.tracking.registry import log_and_register\n"
        "uri, art, ckpt = sys.argv[1:4]\n"
        "mlflow.set_tracking_uri(uri)\n"
        "c = MlflowClient(uri)\n"
        "e = c.create_experiment('registered', artifact_location='file://' + art)\n"
        "r = c.create_run(e)\n"
        "log_and_register(r.info.run_id, AutoModelForCausalLM.from_pretrained(ckpt),"
        " AutoTokenizer.from_pretrained(ckpt), 'gone', 'candidate', {}, 'test', uri)\n"
        "c.set_terminated(r.info.run_id)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", register, uri, str(artifacts), str(tiny_trajectory.checkpoints[-1])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = [p for p in artifacts.rglob("MLmodel")]
    assert models, "the registered model's files are not where the test expects them"
    for m in models:  # the files are deleted from the store (a cleanup job, a person)
        shutil.rmtree(m.parent)
    out = run_main(
        [
            "action=promote",
            "registry.name=gone",
            f"tracking.uri={uri}",
            "tracking.experiment=promotions",
            "eval.test_tasks=[ckptmerge_test_bpb]",
            f"eval.include_path={tiny_trajectory.tasks_dir}",
            "eval.limit=4",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "models:/gone/1" in lines[0] and "MLmodel" in lines[0] and "missing" in lines[0], lines[0]
    assert "flavors" not in lines[0]
