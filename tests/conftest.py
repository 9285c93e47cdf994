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
# OpenMP threads with no work sleep rather than spin. The suite runs 4 workers, each with subprocesses of
# 2 torch threads, on CI's 2 cores: there libgomp's default spin-wait burned about half the CPU (three
# concurrent pilots on this 2-core machine: 68-84 s CPU and 35-43 s wall as default, 39 s and 20 s
# passive, the same numbers to the last digit; one pilot alone: 12.6-13.5 s CPU either way). Set before
# torch loads anywhere: every subprocess, Ray's daemons and workers included, inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Under pytest-xdist (configured in pyproject.toml: -n 4 --dist loadfile --no-loadscope-reorder) each
# module runs on one worker, so its module fixtures run once. These modules share one session fixture
# (``e2e_search``): they run on one worker together, so that search runs once per session, as serially.
E2E_SEARCH_MODULES = (
    "tests/integration/test_main_e2e.py",
    "tests/integration/test_ecosystem.py",
    "tests/integration/test_mlflow_ui_browser.py",
)
# The modules that take longest (about a minute or more each in CI's --durations), longest first: under
# xdist they start first, so that they do not start last and leave the other workers idle at the end.
# A name missing here only costs the order, never a test.
LONGEST_MODULES = (
    "tests/integration/test_ray.py",
    "tests/integration/test_ray_local.py",
    "tests/integration/test_raced_search.py",
    "tests/integration/test_finish_signals.py",
    "tests/integration/test_native_checkpoints.py",
    "tests/integration/test_dcp_sharded.py",
    "tests/ops/test_server_promotion.py",
    "tests/integration/test_deepspeed.py",
    "tests/integration/test_wheel_install.py",
    "tests/integration/test_watch.py",
    "tests/integration/test_output_ownership.py",
    "tests/integration/test_signals.py",
    "tests/ops/test_server_outage.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_promotion_gate.py",
    "tests/integration/test_store_safety.py",
    "tests/integration/test_resume.py",
    "tests/integration/test_study_resume.py",
    "tests/integration/test_converged_search.py",
    "tests/unit/test_strict_config.py",
)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: ignored when xdist is not installed
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the ``E2E_SEARCH_MODULES`` as one unit of work. (xdist's own way to
    group, ``--dist loadgroup``, renames node ids, which pytest 9 no longer lets it do.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "e2e-search" if module in E2E_SEARCH_MODULES else module

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Under xdist, workers take the modules in collection order (``--no-loadscope-reorder``): the longest
    first, then the other end-to-end (``slow``) ones, then the rest; each module's tests keep their order.
    A run without xdist keeps pytest's own order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    module_of = {id(item): item.nodeid.split("::", 1)[0] for item in items}
    slow_modules = {module_of[id(item)] for item in items if item.get_closest_marker("slow") is not None}

    def rank(item) -> tuple[int, int]:
        module = module_of[id(item)]
        if module in LONGEST_MODULES:
            return 0, LONGEST_MODULES.index(module)
        if module in E2E_SEARCH_MODULES:  # one unit of work, placed by its first test: keep them adjacent
            return 1, 0
        return (2 if module in slow_modules else 3), 0

    items.sort(key=rank)  # stable


@pytest.fixture(scope="session")
def traj_cache(tmp_path_factory) -> Path:
    """One cache folder for the session's tiny trajectories (CKPTMERGE_TEST_CACHE reuses one across runs)."""
    env = os.environ.get("CKPTMERGE_TEST_CACHE")
    if env:
        return Path(env)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Under pytest-xdist each worker has its own basetemp (.../pytest-N/popen-gwK): the run's folder
        # above them is shared, so the workers train each trajectory once (build_trajectory holds a file
        # lock per spec while one of them builds it; the others wait and then read the finished folder).
        shared = tmp_path_factory.getbasetemp().parent / "trajectories"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("trajectories")


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


def start_main(
    args: list[str], cwd: Path, env_extra: dict | None = None, capture: bool = False, from_terminal: bool = False
):
    """Start ``python src/main.py ARGS`` in the background, for a test that signals or kills it midway;
    returns the Popen. ``capture``: stdout and stderr as text pipes (else discarded, so a long run never
    blocks on a full pipe). ``from_terminal``: SIGHUP at its default action, as from a terminal (a run
    started under nohup, CI's included, inherits it ignored, and ckptmerge deliberately keeps it so)."""
    import signal
    import subprocess

    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, str(MAIN), *args],
        cwd=cwd,
        stdout=out,
        stderr=out,
        text=capture,
        env={**os.environ, **(env_extra or {})},
        preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)) if from_terminal else None,
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
