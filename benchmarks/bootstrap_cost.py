"""What the statistics add to a search trial: the bootstrap standard error against the trial itself.

A trial of ``python src/main.py`` merges in place and evaluates the embedded trajectory's dev task with
lm-eval (per-document scores kept). Each trial then computes its objective's bootstrap standard error
(``eval.bootstrap`` resamples over the documents). This measures, in the same run:

* the median trial time (merge + evaluation with per-document scores) on the embedded trajectory;
* the median time of the bootstrap standard error for 10,000 documents × 1,000 resamples (a larger
  dev set than the embedded one: the target's size), after the first (which draws the resamples once
  per run and caches them), and the first one too;

and prints their ratio (target: <= 2% of a trial).

    python benchmarks/bootstrap_cost.py          # ~1 min once the embedded trajectory is cached
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def trial_seconds(lambdas: list[float]) -> list[float]:
    """Merge + evaluate (with per-document scores) on the embedded trajectory, as a search trial does."""
    from ckptmerge.checkpoints.checkpoint_set import CheckpointSet
    from ckptmerge.evaluation.harness import TaskSuite, make_lm
    from ckptmerge.resident import SingleResidentModel
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory, default_cache_dir

    traj = build_trajectory(TrajectorySpec.default(), default_cache_dir())
    cset = CheckpointSet.from_refs([str(p) for p in traj.checkpoints[-2:]])
    resident = SingleResidentModel(cset, device="cpu", dtype="float32")
    suite = TaskSuite(list(traj.dev_tasks), [traj.tasks_dir])
    lm = make_lm(resident.model, resident.tokenizer, 16, traj.max_length, "cpu")
    out = []
    for lam in lambdas:
        t0 = time.perf_counter()
        resident.apply([1 - lam, lam])
        suite.evaluate_with_scores(lm)
        out.append(time.perf_counter() - t0)
        print(f"trial λ={lam:.2f}: {out[-1]:.2f} s", flush=True)
    return out


def bootstrap_seconds(docs: int, resamples: int, repeats: int) -> list[float]:
    from ckptmerge.evaluation.doc_scores import MetricScores
    from ckptmerge.evaluation.objective import Objective, ObjectiveTerm
    from ckptmerge.evaluation.uncertainty import Bootstrap

    rng = np.random.default_rng(0)
    objective = Objective((ObjectiveTerm("dev", "bits_per_byte", 1.0, False),))
    boot = Bootstrap(resamples, 0.95, seed=0)
    out = []
    for _ in range(repeats):
        nbytes = rng.integers(50, 2000, size=docs).astype(float)
        scores = {
            "dev/bits_per_byte": MetricScores(
                "bits_per_byte", np.arange(docs), -nbytes * rng.uniform(1, 2, docs), nbytes
            )
        }
        t0 = time.perf_counter()
        boot.standard_error(objective, scores)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    trials = trial_seconds([0.0, 1.0, 0.5, 0.25, 0.75])
    boots = bootstrap_seconds(args.docs, args.resamples, repeats=6)
    trial = statistics.median(trials[1:])
    boot = statistics.median(boots[1:])
    print(f"\nmedian trial (embedded, merge + eval with per-document scores): {trial:.2f} s")
    print(
        f"bootstrap s.e. ({args.docs} documents x {args.resamples} resamples): first {boots[0]:.3f} s "
        f"(draws the resamples), then median {boot:.3f} s"
    )
    print(f"bootstrap / trial = {100 * boot / trial:.2f}% (first: {100 * boots[0] / trial:.2f}%)  target <= 2%")


if __name__ == "__main__":
    main()
