"""How much of the dense-grid gain does a budget-8 BO search capture, on checkpoints and tasks it has
never seen?

Builds a trajectory with a different seed than the embedded default (new weights, new document
split), writes a new lm-eval task over text the project never selects on (held-out docstrings and
stdlib code, as a validation split), then for each adjacent pair of the last checkpoints runs, through
``src/main.py`` as a user would:

* ``search=grid search.budget=G`` — the dense grid, the reference optimum;
* ``search=bo search.budget=8`` for several seeds.

It prints, per pair and seed, the gain over the newest checkpoint alone and the captured fraction
``(best_bo - f(1)) / (best_grid - f(1))`` (a BO point better than every grid point counts above 1).

    python benchmarks/search_vs_grid.py                 # ~10 min on 2 cores
    python benchmarks/search_vs_grid.py --grid 21 --pairs 1 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from unseen import make_task, unseen_trajectory  # noqa: E402


def run(args: list[str], cwd: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "main.py"), *args], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"main.py failed: {proc.stderr[-2000:]}")
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir="))
    result = json.loads((Path(run_dir) / "result.json").read_text())
    result["_seconds"] = time.perf_counter() - t
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traj-seed", type=int, default=7, help="trajectory seed (the embedded default is 0)")
    ap.add_argument("--grid", type=int, default=41, help="dense grid size over [alpha, 1]")
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=2, help="how many of the last adjacent pairs")
    ap.add_argument("--first-pair", type=int, default=0, help="skip this many of the last pairs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()

    traj = unseen_trajectory(a.traj_seed)
    work = a.work or Path(tempfile.mkdtemp(prefix="ckptmerge-bench-"))
    tasks = make_task(traj, work / "tasks")
    ckpts = traj.checkpoints
    rows = []
    for p in range(a.first_pair, a.first_pair + a.pairs):
        old, new = ckpts[-2 - p], ckpts[-1 - p]
        common = [
            "model=local",
            f"model.checkpoints=[{old},{new}]",
            "eval.tasks=[bench_unseen_bpb]",
            f"eval.include_path={tasks}",
            f"eval.max_length={traj.max_length}",
            "registry.enabled=false",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
            "tracking.experiment=search-vs-grid",
            "tracking.log_plots=false",
        ]
        grid = run(common + ["search=grid", f"search.budget={a.grid}", f"hydra.run.dir={work / f'grid-{p}'}"], work)
        f1 = next(t["objective"] for t in grid["trials"] if t["lambda"] == 1.0)
        gain_grid = grid["objective"] - f1
        for seed in a.seeds:
            bo = run(
                common
                + [
                    "search=bo",
                    f"search.budget={a.budget}",
                    f"search.seed={seed}",
                    f"hydra.run.dir={work / f'bo-{p}-{seed}'}",
                ],
                work,
            )
            gain_bo = bo["objective"] - f1
            frac = gain_bo / gain_grid if gain_grid > 0 else float("nan")
            rows.append(
                (
                    f"{old.name}->{new.name}",
                    seed,
                    grid["lambda"],
                    gain_grid,
                    bo["lambda"],
                    gain_bo,
                    frac,
                    grid["_seconds"],
                    bo["_seconds"],
                )
            )
            print(
                f"pair {old.name}->{new.name} seed {seed}: grid λ*={grid['lambda']:.3f} gain={gain_grid:.5f} | "
                f"bo λ={bo['lambda']:.3f} gain={gain_bo:.5f} | captured {frac:.1%}",
                flush=True,
            )
    print("\n| pair | BO seed | grid λ* | grid gain | BO λ | BO gain | captured |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.5f} | {r[4]:.3f} | {r[5]:.5f} | {r[6]:.1%} |")
    fracs = [r[6] for r in rows]
    print(
        f"\nminimum captured: {min(fracs):.1%}; mean: {sum(fracs) / len(fracs):.1%} "
        f"(grid of {a.grid} vs BO budget {a.budget}); work folder {work}"
    )


if __name__ == "__main__":
    main()
