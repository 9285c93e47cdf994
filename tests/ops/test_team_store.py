"""A team on one tracking store: an `mlflow server` on a sqlite database, and what its users may do to it.

- an experiment deleted in the UI (MLflow's ``delete_experiment``), then a search into it: one line with
  the fix, exit 2, before any work;
- a search that reaches the server's database directly (``sqlite:///`` on the file the server serves):
  refused in one line, since its artifacts are the server's to write and its lock would not be theirs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main
from tests.ops.conftest import mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``(server URL, its sqlite database)``: the server proxies artifacts, as docker/compose.yaml's does."""
    root = tmp_path_factory.mktemp("team-store")
    db = root / "server.db"
    with mlflow_server(f"sqlite:///{db}", root / "artifacts", root / "server.log") as url:
        yield url, db


def _search(work: Path, uri: str, experiment: str, traj_cache: Path) -> object:
    return run_main(
        [
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            "search.budget=2",
            "eval.limit=4",
            "tracking.log_plots=false",
            f"tracking.uri={uri}",
            f"tracking.experiment={experiment}",
            f"hydra.run.dir={work / 'run'}",
        ],
        cwd=work,
        timeout=600,
    )


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def _runs(db: Path, experiment_id: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("select count(*) from runs where experiment_id = ?", (int(experiment_id),)).fetchone()[0]
    finally:
        con.close()


def test_a_search_into_a_deleted_experiment_says_how_to_restore_it(served, tmp_path, traj_cache, tiny_trajectory):
    url, db = served
    client = MlflowClient(url)
    exp = client.create_experiment("deleted-in-the-ui")
    client.delete_experiment(exp)
    line = _one_error_line(_search(tmp_path, url, "deleted-in-the-ui", traj_cache))
    assert "tracking.experiment=deleted-in-the-ui was deleted" in line, line
    assert f"mlflow experiments restore --experiment-id {exp}" in line and "another experiment" in line, line
    assert client.get_experiment(exp).lifecycle_stage == "deleted"  # left as the team left it
    assert _runs(db, exp) == 0


def test_a_direct_sqlite_uri_on_a_served_database_is_refused(served, tmp_path, traj_cache, tiny_trajectory):
    url, db = served
    client = MlflowClient(url)
    exp = client.create_experiment("served")  # the team's experiment, made through the server
    direct = f"sqlite:///{db}"
    line = _one_error_line(_search(tmp_path, direct, "served", traj_cache))
    assert f"tracking.uri={direct} is a database that an mlflow server serves" in line, line
    assert "use that server's URL" in line
    assert _runs(db, exp) == 0  # no parent run left RUNNING (nor any other)
    # a new experiment through the direct URI is refused too: the server's Default experiment says it
    line = _one_error_line(_search(tmp_path, direct, "fresh", traj_cache))
    assert "an mlflow server serves" in line
