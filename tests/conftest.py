"""Shared fixtures: a tiny real trajectory (built once per session) and offline settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "src" / "main.py"

# Tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def traj_cache(tmp_path_factory) -> Path:
    """One cache folder for the session's tiny trajectories (CKPTMERGE_TEST_CACHE reuses one across runs)."""
    env = os.environ.get("CKPTMERGE_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("trajectories")


@pytest.fixture(scope="session")
def tiny_trajectory(traj_cache):
    """The tiny preset of the embedded trajectory: real training, a few seconds."""
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory

    return build_trajectory(TrajectorySpec.tiny(), traj_cache, progress=False)


def run_main(args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 600):
    """Run ``python src/main.py ARGS`` as a user would; returns the CompletedProcess."""
    import subprocess

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(MAIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


E2E_BUDGET = 4
E2E_SECRETS = {"HF_TOKEN": "hf_e2eSecretToken123", "AWS_SECRET_ACCESS_KEY": "e2eAwsSecretKey/987"}


@pytest.fixture(scope="session")
def e2e_search(tmp_path_factory, traj_cache, tiny_trajectory):
    """One finished, registered search through ``src/main.py`` (sqlite store), shared by the tests that
    inspect what it left: MLflow, the registry, the merged folder, the UI in a browser.
    Returns ``(work dir, tracking uri, CompletedProcess, result.json)``."""
    import json

    work = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    proc = run_main(
        [
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            f"search.budget={E2E_BUDGET}",
            f"tracking.uri={uri}",
            "tracking.experiment=e2e",
            "registry.name=tiny-merge",
            "registry.require_significant_gain=false",
            f"hydra.run.dir={work / 'run'}",
        ],
        cwd=work,
        env_extra=E2E_SECRETS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((work / "run" / "result.json").read_text())
    return work, uri, proc, result
