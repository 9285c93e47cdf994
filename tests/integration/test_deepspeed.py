"""runtime=deepspeed: two ranks started by the ``deepspeed`` launcher (CPU accelerator, gloo) run the
same search as one process: rank 0 searches and tracks, each rank merges its ZeRO-3 partition in place
and evaluates half of the requests, lm-eval gathers the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ckptmerge.runtime.distributed import free_port
from tests.conftest import run_main

pytestmark = pytest.mark.slow

BUDGET = 4


def _args(work: Path, traj_cache: Path, name: str) -> list[str]:
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={BUDGET}",
        f"tracking.uri=sqlite:///{work / (name + '.db')}",
        "tracking.experiment=ds",
        "registry.name=ds-merge",
        "registry.require_significant_gain=false",
        f"hydra.run.dir={work / name}",
    ]


def run_deepspeed(args: list[str], cwd: Path, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """As docs/deepspeed.md says to: every rank is ``python -u -m ckptmerge`` (the installed package)."""
    launcher = Path(sys.executable).parent / "deepspeed"
    cmd = [str(launcher), "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module", "ckptmerge", *args]
    return subprocess.run(cmd, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def both(tmp_path_factory, traj_cache, tiny_trajectory):
    work = tmp_path_factory.mktemp("ds")
    single = run_main(_args(work, traj_cache, "single"), cwd=work)
    assert single.returncode == 0, single.stderr[-3000:]
    ds = run_deepspeed(["runtime=deepspeed", *_args(work, traj_cache, "ds")], cwd=work)
    assert ds.returncode == 0, (ds.stdout + ds.stderr)[-5000:]
    load = lambda name: json.loads((work / name / "result.json").read_text())  # noqa: E731
    return work, load("single"), load("ds"), ds


def test_two_ranks_run_the_same_trials_as_one_process(both):
    _, single, ds, _ = both
    assert ds["runtime"]["backend"] == "deepspeed" and ds["runtime"]["world_size"] == 2
    assert single["runtime"]["world_size"] == 1
    assert len(ds["trials"]) == len(single["trials"]) == BUDGET
    for a, b in zip(single["trials"], ds["trials"]):
        assert b["lambda"] == pytest.approx(a["lambda"], abs=1e-9)
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-9, abs=1e-12)
        for k, v in a["metrics"].items():
            assert b["metrics"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert ds["objective"] == pytest.approx(single["objective"], rel=1e-9)
    # the written merge, re-scored by loading it into the partitions, reproduces the objective
    assert ds["rescored_objective"] == pytest.approx(ds["objective"], rel=1e-9)
    for k, v in single["test_metrics"].items():
        assert ds["test_metrics"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_each_rank_evaluated_half_of_the_requests(both):
    _, _, _, proc = both
    out = proc.stdout + proc.stderr
    assert "partitioned over 2 ranks (ZeRO-3" in out
    # rank 0 logs the size of its own share: 80 of the 160 multiple-choice requests (one line per
    # evaluation, with or without progress bars)
    assert "rank 0 of 2: 80 loglikelihood requests" in out and ": 160 loglikelihood requests" not in out


def test_rank_zero_alone_tracks_and_registers(both):
    work, _, ds, _ = both
    client = MlflowClient(f"sqlite:///{work / 'ds.db'}")
    runs = client.search_runs([ds["mlflow"]["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 1 + BUDGET
    versions = client.search_model_versions("name='ds-merge'")
    assert [str(v.version) for v in versions] == ["1"]
    assert ds["registered_model"]["version"] == "1"
    # only rank 0 wrote a Hydra run folder (mlartifacts is MLflow's artifact store)
    assert {p.name for p in work.iterdir() if p.is_dir()} == {"ds", "single", "mlartifacts"}
    assert (work / "ds" / ".hydra").is_dir()


def test_launched_without_runtime_deepspeed_is_refused(tmp_path, traj_cache, tiny_trajectory):
    proc = run_deepspeed(_args(tmp_path, traj_cache, "x"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert (
        "error: started as 2 processes (a distributed launcher) but runtime=cpu runs in one; use runtime=deepspeed"
        in proc.stderr
    )
    assert not (tmp_path / "x" / "result.json").exists()
