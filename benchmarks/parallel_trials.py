"""Trials per minute with parallel workers (``runtime=ray``) against one worker, on this machine's CPU.

Runs, as a user would (``src/main.py``), on the embedded trajectory (the default preset, built once
into ``--cache``):

* **1 worker**: ``runtime=cpu runtime.threads=N`` (today's in-process trials, all N cores for one model;
  ``--ray-one`` adds ``runtime=ray runtime.workers=1 runtime.threads=N`` as well);
* **N workers**: ``runtime=ray runtime.workers=N`` (each worker 1 torch thread: its share of the cores);

for a search at ``search.budget=8`` (``search.stop=budget``: every run does 8 trials), a pilot (every
checkpoint alone and every pair: 21 evaluations on the 6 checkpoints) and a compare (its baselines and
each of its searches' trials, at the same budget). The rate is the steady one: (evaluations - 1) /
(last completion - first completion), from the MLflow timestamps of the trials' child runs (search;
compare adds its method runs) or of the pilot's metrics; the end-to-end wall time of each command
(Ray's start and the workers' model builds included) is printed too. The machine's load average is
printed before and after: on a shared machine the ratio is noisy.

    python benchmarks/parallel_trials.py                      # N = 2 (the target: >= 1.6x)
    python benchmarks/parallel_trials.py --workers 2 --ray-one --cache /tmp/traj
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

TARGET = 1.6


def run(name: str, action: str, runtime: list[str], cache: Path, work: Path, budget: int) -> dict:
    folder = work / f"{action}-{''.join(c if c.isalnum() else '-' for c in name)}"
    folder.mkdir(parents=True)
    db = folder / "mlflow.db"
    cmd = [
        sys.executable,
        str(REPO / "src" / "main.py"),
        f"action={action}",
        f"model.trajectory.cache_dir={cache}",
        *runtime,
        f"search.budget={budget}",
        "search.stop=budget",
        f"tracking.uri=sqlite:///{db}",
        "tracking.log_plots=false",
        "registry.enabled=false",
        "search.resume=never",
        f"hydra.run.dir={folder / 'run'}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{action} {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ends = completions(db, action)
    rate = 60 * (len(ends) - 1) / (ends[-1] - ends[0])
    print(
        f"  {action:<7} {name:<28} {len(ends):>3} evaluations  {rate:7.1f} /min  (end to end {wall:6.1f} s)", flush=True
    )
    return {"rate": rate, "wall": wall, "n": len(ends)}


def completions(db: Path, action: str) -> list[float]:
    """When each evaluation finished (seconds), sorted: trial child runs' end times, or pilot metrics'."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ckptmerge")
    if action in ("search", "compare"):  # compare: its baselines' method runs and its searches' trials
        kinds = ["trial"] + (["method"] if action == "compare" else [])
        runs = [
            r
            for kind in kinds
            for r in client.search_runs([exp.experiment_id], f"tags.`ckptmerge.kind` = '{kind}'", max_results=1000)
        ]
        return sorted(r.info.end_time / 1000 for r in runs)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`ckptmerge.kind` = 'pilot'")
    keys = [k for k in parent.data.metrics if k.endswith(".objective")]
    return sorted(client.get_metric_history(parent.info.run_id, k)[0].timestamp / 1000 for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--cache", type=Path, default=None, help="the embedded trajectory's cache (default: a temp dir)")
    ap.add_argument("--ray-one", action="store_true", help="also measure runtime=ray with one worker")
    ap.add_argument("--actions", default="search,pilot,compare")
    args = ap.parse_args()
    n = args.workers
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="parallel-trials-"))
    cache = (args.cache or work / "trajectory").resolve()
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory

    build_trajectory(TrajectorySpec.default(), cache, progress=False)
    print(f"{cores} cores; load average before: {tuple(round(x, 2) for x in os.getloadavg())}", flush=True)
    configs = [(f"1 worker x {cores} threads (cpu)", ["runtime=cpu", f"runtime.threads={cores}"])]
    if args.ray_one:
        configs.append(
            (f"ray 1 worker x {cores} threads", ["runtime=ray", "runtime.workers=1", f"runtime.threads={cores}"])
        )
    configs.append((f"ray {n} workers x {max(1, cores // n)} thr", ["runtime=ray", f"runtime.workers={n}"]))
    ratios = {}
    for action in args.actions.split(","):
        got = {name: run(name, action, rt, cache, work, args.budget) for name, rt in configs}
        base, par = got[configs[0][0]], got[configs[-1][0]]
        ratios[action] = (par["rate"] / base["rate"], base["wall"] / par["wall"])
    print(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")
    for action, (rate, wall) in ratios.items():
        verdict = "meets" if rate >= TARGET else "misses"
        print(
            f"{action}: {n} workers give {rate:.2f}x the trials per minute of one ({verdict} the {TARGET}x target); "
            f"end to end {wall:.2f}x faster"
        )


if __name__ == "__main__":
    main()
