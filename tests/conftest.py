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
    return subprocess.run([sys.executable, str(MAIN), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
