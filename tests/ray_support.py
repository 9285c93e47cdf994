"""What the runtime=ray test modules share: the search's arguments, and finding and ending the processes
a test's Ray instance or cluster started (bounded waits)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

BUDGET = 4
RAY = str(Path(sys.executable).parent / "ray")
# Ray 2.60's `ray start` turns token authentication on; a process joining the cluster needs the same mode
# (the token itself is ~/.ray/auth_token, which `ray start` wrote).
AUTH = {"RAY_AUTH_MODE": "token"}


def ray_args(work: Path, traj_cache: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        "runtime=ray",
        "runtime.workers=2",
        f"search.budget={BUDGET}",
        "search.stop=budget",  # every trial of the budget runs
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.name=ray-test",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        "eval.limit=12",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def process_tree(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def stop_processes(procs: list[psutil.Process]) -> None:
    """End these processes (ours: the cluster this module started), SIGTERM then SIGKILL, bounded."""
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def trial_runs(work: Path) -> list:
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge")
    return client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'trial'", max_results=1000)


def check_counted_once(work: Path, result: dict) -> None:
    """Every trial of the budget ran once: unique indices 0..BUDGET-1 in result.json and in MLflow."""
    assert sorted(t["trial"] for t in result["trials"]) == list(range(BUDGET))
    finished = [r for r in trial_runs(work) if r.info.status == "FINISHED"]
    assert sorted(int(r.data.params["trial"]) for r in finished) == list(range(BUDGET))


def close_numbers(a: float | None, b: float | None) -> bool:
    """The same number up to a worker's 1-thread summation order (or both absent)."""
    return (a is None and b is None) or (a is not None and b == pytest.approx(a, rel=1e-6, abs=1e-9))


class socket_closed:
    """A local port where nothing listens (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


def descendants(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def gone(pids: set[int], timeout: float = 30) -> list[int]:
    """The pids still alive (not zombies) after waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)
