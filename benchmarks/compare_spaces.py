"""Do our searches beat every baseline at the same budget, on checkpoints and a task the project never saw?

Builds (or reuses) the embedded trajectory with ``--traj-seed`` (default 7; the project's default is 0),
splits a task over text the project never selects on (its held-out docstrings and stdlib code, every
other document) into a dev half and a test half, then runs, as a user would,

    python src/main.py action=compare model.trajectory.seed=SEED search.budget=8 \\
        'eval.tasks=[unseen_dev_bpb]' 'eval.test_tasks=[unseen_test_bpb]' eval.include_path=TASKS

over the last ``compare.last`` (4) checkpoints with every baseline and every ``bo_*`` space, and prints
the table (dev objective with paired intervals against the newest, test bits per byte) and whether the
best of our ``bo_*`` methods is at least as good as every baseline on dev and within ``--test-margin``
of the best baseline on test.

    python benchmarks/compare_spaces.py                  # ~15 min on 2 cores
    python benchmarks/compare_spaces.py --traj-seed 0    # the embedded default trajectory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from unseen import split_tasks, unseen_trajectory  # noqa: E402

from ckptmerge.merge import baseline_names  # noqa: E402

BASELINES = tuple(baseline_names())  # every registered compare baseline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traj-seed", type=int, default=7)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--test-margin", type=float, default=0.001, help="bits per byte")
    ap.add_argument("--limit", type=int, default=None, help="eval.limit: a seeded sample of each task's documents")
    ap.add_argument("--methods", default=",".join([*BASELINES, "bo", "bo_simplex", "bo_ema", "bo_window", "bo_decay"]))
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    traj = unseen_trajectory(a.traj_seed)
    work = a.work or Path(tempfile.mkdtemp(prefix="ckptmerge-compare-spaces-"))
    tasks = split_tasks(traj, work / "tasks")
    run_dir = work / "run"
    cmd = [
        sys.executable,
        str(REPO / "src" / "main.py"),
        "action=compare",
        f"model.trajectory.seed={a.traj_seed}",
        f"search.budget={a.budget}",
        "eval.tasks=[unseen_dev_bpb]",
        "eval.test_tasks=[unseen_test_bpb]",
        f"eval.include_path={tasks}",
        f"compare.methods=[{a.methods}]",
        *([f"eval.limit={a.limit}"] if a.limit else []),
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "tracking.log_plots=false",
        f"hydra.run.dir={run_dir}",
    ]
    print("$ " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compare failed: {proc.stderr[-3000:]}")
    print((run_dir / "compare.md").read_text())
    out = json.loads((run_dir / "compare.json").read_text())
    by = {m["method"]: m for m in out["methods"]}
    test_key = next(k for k in by["newest"]["test_metrics"] if k.endswith("bits_per_byte"))
    ours = {m: r for m, r in by.items() if m.startswith("bo")}
    best_ours = max(ours.values(), key=lambda r: r["objective"])
    base = {m: by[m] for m in BASELINES if m in by}
    best_base_dev = max(base.values(), key=lambda r: r["objective"])
    best_base_test = min(r["test_metrics"][test_key] for r in base.values())
    dev_ok = best_ours["objective"] >= best_base_dev["objective"] - 1e-12
    test_ok = best_ours["test_metrics"][test_key] <= best_base_test + a.test_margin
    print(
        f"best of ours: {best_ours['method']} dev {best_ours['objective']:.5f} test "
        f"{best_ours['test_metrics'][test_key]:.5f}; "
        f"best baseline on dev: {best_base_dev['method']} {best_base_dev['objective']:.5f}; best baseline test "
        f"{best_base_test:.5f}"
    )
    print(f"dev: ours >= every baseline: {dev_ok}; test: ours within {a.test_margin} of the best baseline: {test_ok}")
    print(f"work folder {work}")


if __name__ == "__main__":
    main()
