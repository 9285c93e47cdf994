"""Bad input: one clear line naming the problem, exit status 2, nothing registered, nothing written."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main
from tests.helpers import tiny_neox

pytestmark = pytest.mark.slow


def _cases(traj, tmp):
    a, b = traj.checkpoints[-2], traj.checkpoints[-1]
    other = tiny_neox(tmp / "other", hidden=16)
    local = ["model=local", "eval.tasks=[ckptmerge_dev_bpb]", f"eval.include_path={traj.tasks_dir}"]
    return {
        "missing path": (local + [f"model.checkpoints=[{tmp / 'nope'},{b}]"], "does not exist"),
        "mismatched checkpoints": (local + [f"model.checkpoints=[{other},{b}]"], "different architectures"),
        "budget below 2": (local + [f"model.checkpoints=[{a},{b}]", "search.budget=1"], "search.budget"),
        "alpha out of range": (local + [f"model.checkpoints=[{a},{b}]", "search.alpha=1.0"], "search.alpha"),
        "unknown task": (["model=local", f"model.checkpoints=[{a},{b}]", "eval.tasks=[ckptmerge_dev_bpx]",
                          f"eval.include_path={traj.tasks_dir}"], "did you mean 'ckptmerge_dev_bpb'"),
        "unknown metric": (local + [f"model.checkpoints=[{a},{b}]", "eval.metrics={ckptmerge_dev_bpb: acc}"],
                           "eval.metrics.ckptmerge_dev_bpb"),
        "test split as dev": (["model=local", f"model.checkpoints=[{a},{b}]", "eval.tasks=[ckptmerge_test_bpb]",
                               f"eval.include_path={traj.tasks_dir}"], "test split"),
        "unreachable tracking": (local + [f"model.checkpoints=[{a},{b}]", "tracking.uri=http://127.0.0.1:9"],
                                 "tracking.uri=http://127.0.0.1:9"),
        "local without checkpoints": (["model=local"], "model.checkpoints"),
    }


CASES = ["missing path", "mismatched checkpoints", "budget below 2", "alpha out of range", "unknown task",
         "unknown metric", "test split as dev", "unreachable tracking", "local without checkpoints"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly(case, tmp_path, tiny_trajectory):
    args, expected = _cases(tiny_trajectory, tmp_path)[case]
    db = tmp_path / "mlflow.db"
    has_uri = any(a.startswith("tracking.uri=") for a in args)
    args = args + ([] if has_uri else [f"tracking.uri=sqlite:///{db}"]) + [f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_main(args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert expected in lines[0]
    assert not (tmp_path / "run" / "merged").exists()
    assert not (tmp_path / "run" / "result.json").exists()
    if db.exists():
        assert MlflowClient(f"sqlite:///{db}").search_registered_models() == []
