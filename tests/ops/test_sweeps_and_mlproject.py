"""Hydra sweeps over adjacent pairs: joblib locally (a real 2-pair sweep), the SLURM launcher composed
and rendered. (`mlflow run` is tested against a real server in test_server_promotion.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MAIN, REPO

CONF = REPO / "conf"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


@pytest.mark.slow
def test_sweep_over_adjacent_pairs_lands_in_one_experiment(tmp_path, traj_cache, tiny_trajectory):
    """`-m model.pair=0,1` with the joblib launcher, two jobs at once on a fresh sqlite store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "multirun"
    proc = subprocess.run(
        [
            sys.executable,
            str(MAIN),
            "-m",
            "hydra/launcher=local",
            "hydra.launcher.n_jobs=2",
            "runtime.threads=1",
            "model.pair=0,1",
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            "search.budget=2",
            "eval.limit=4",
            "eval.test_tasks=[ckptmerge_test_bpb]",
            "registry.enabled=false",
            f"tracking.uri={uri}",
            "tracking.experiment=sweep",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = [p.name for p in tiny_trajectory.checkpoints]
    results = [json.loads((sweep_dir / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert [list(r["weights"]) for r in results] == [names[0:2], names[1:3]]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep")
    assert {r["mlflow"]["experiment_id"] for r in results} == {exp.experiment_id}
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_id for r in top) == sorted(r["mlflow"]["run_id"] for r in results)
    assert {r.data.params["model.pair"] for r in top} == {"0", "1"}
    assert {r.info.run_name for r in top} == {f"search-{names[0]}-{names[1]}", f"search-{names[1]}-{names[2]}"}
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 2 + 2 * 2


def _compose_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from ckptmerge.cli import store_schema

    store_schema()  # the schema's defaults, as the app registers them before composing
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_local_launcher_is_joblib_one_job_at_a_time():
    cfg = _compose_hydra(["hydra/launcher=local"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 1 and launcher.backend == "loky"


def test_slurm_launcher_composes_and_renders_an_sbatch_script(tmp_path, monkeypatch):
    """No SLURM here: compose the submitit config, then let submitit render the sbatch script it would
    submit. submitit refuses to build a SLURM executor without `srun` on PATH, so a stub `srun` that is
    never called stands in for that check only."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg = _compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params.pop("_target_") == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text("#!/bin/sh\nexit 0\n")
    (stub / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")
    # As hydra_submitit_launcher's SlurmLauncher.launch builds its executor:
    params.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path / "submitit", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params["name"] = "ckptmerge"
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python src/main.py", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --time=240",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --job-name=ckptmerge",
    ):
        assert line in script


def test_mlproject_runs_the_installed_package():
    """`mlflow run` starts `python -m ckptmerge` (an editable install, a wheel or the docker/ images),
    never a path into a checkout."""
    import yaml

    entry_points = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for name, ep in entry_points.items():
        assert ep["command"].startswith("eval exec python -m ckptmerge action="), name
        assert "main.py" not in ep["command"], name
    assert (REPO / "src" / "ckptmerge" / "__main__.py").is_file()
