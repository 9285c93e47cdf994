"""Why two Ray workers give less than 2x the trials per minute of one: the two parts that can cap it.

``benchmarks/parallel_trials.py`` measures the end result (trials per minute of ``runtime=ray
runtime.workers=2``, each worker 1 torch thread, against one in-process model of 2 threads). This script
takes it apart, on the same embedded trajectory, for the search's resident model (the newest pair) and
the pilot's (every checkpoint):

**(a) Compute.** One trial's evaluation (``session/executor.py:evaluate_weights``: the in-place merge,
then lm-eval on the dev tasks), in one process, at 1 and at 2 torch threads, alternated ``--repeats``
times after a warm-up. If 2 threads are already ``k`` times faster than 1, two 1-thread workers can give at
most ``2/k`` times the rate of one 2-thread worker. That ceiling assumes the two workers do not slow
each other down; the same evaluation is therefore also run in **two processes at once** (1 thread each,
started together on a barrier), as two Ray workers would run it, without Ray and without a driver: the
rate of the two together against the 2-thread process is the ceiling on this machine (memory bandwidth
and caches shared).

**(b) The driver.** A serial search (``runtime=cpu runtime.threads=2``, ``--budget`` trials, the real
sqlite MLflow store, plots off as in parallel_trials.py) run in this process with timers around the
trial loop's driver steps: ``_propose`` (the convergence check and the GP's ask, given the points in
flight), ``_begin`` (the child run opened: params, datasets), ``_conclude`` (the objective, its bootstrap,
the searcher told), ``_close`` (metrics, tags, the per-document scores artifact, the child run closed),
and the evaluation itself. In an asynchronous search a worker that has finished waits while the driver
concludes its trial, proposes the next and opens its run: those seconds (``d``) are added to the
worker's cycle. ``_close`` runs after the freed worker has its next trial (session/trials.py), so
the worker does not wait for it; it still takes the driver's CPU, which on 2 cores the workers share.

Together they predict the ratio: ``2 * (e2 + d) / (e1' + d)``, with ``e2`` one evaluation at 2 threads,
``e1'`` one at 1 thread while the other process evaluates too, ``d`` the driver's seconds per trial (the
same in both: the serial search pays them between its trials too). The script prints each part, that
prediction, and the load average before and after (on a shared machine the timings are noisy: run it
quiet).

    python benchmarks/parallel_breakdown.py --cache ~/.cache/ckptmerge/trajectories           # ~5 min on 2 cores
    python benchmarks/parallel_breakdown.py --cache /tmp/traj --repeats 1 --budget 2 --limit 20  # a check only
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TARGET = 1.6


LIMIT: int | None = None  # eval.limit (--limit): fewer documents per evaluation, for a quick check only


def config(cache: Path, **sections: Any) -> Any:
    from ckptmerge.config import config_from_dict

    data: dict[str, Any] = {"model": {"trajectory": {"cache_dir": str(cache)}}}
    if LIMIT is not None:
        data["eval"] = {"limit": LIMIT}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_from_dict(data)


def build(cache: Path, which: str, threads: int) -> tuple[Any, Any, list[float]]:
    """The resident model and session a search (``which=search``: the newest pair) or a pilot (every
    checkpoint) evaluates trials on, as the driver and each Ray worker build it; and the weights of one
    trial (the pair at λ=0.5; the pilot's newest pair at its λ)."""
    from ckptmerge.runtime import seed_everything
    from ckptmerge.session.evaluation import EvalSession
    from ckptmerge.session.setup import resolve_search_sources, resolve_sources

    cfg = config(cache, runtime={"threads": threads})
    seed_everything(cfg.search.seed, threads)
    if which == "search":
        sources = resolve_search_sources(cfg.model, cfg.eval, cfg.search.space, progress=False, check=False)
    else:
        sources = resolve_sources(cfg.model, cfg.eval, all_checkpoints=True, progress=False, check=False)
    session, resident = EvalSession.with_resident(cfg.eval, cfg.search.seed, cfg.runtime, cfg.merge, sources)
    k = len(resident.cset)
    lam = 0.5 if which == "search" else float(cfg.pilot.lam)
    weights = [0.0] * k
    weights[-2], weights[-1] = 1.0 - lam, lam
    return resident, session, weights


def one(resident: Any, session: Any, weights: list[float]) -> tuple[float, float, float]:
    """One trial's evaluation: (total, merge, lm-eval) seconds."""
    from ckptmerge.session.executor import evaluate_weights

    t0 = time.perf_counter()
    ev = evaluate_weights(resident, session, weights)
    if ev.error:
        raise SystemExit(f"the evaluation failed: {ev.error}")
    return time.perf_counter() - t0, ev.merge_seconds or 0.0, ev.eval_seconds or 0.0


def _concurrent_worker(cache: Path, which: str, repeats: int, limit: int | None, barrier: Any, out: Any) -> None:
    import torch

    global LIMIT
    LIMIT = limit  # a spawned process starts from the module's defaults

    resident, session, weights = build(cache, which, 1)
    torch.set_num_threads(1)
    one(resident, session, weights)  # warm-up, before the common start
    barrier.wait()
    start = time.time()
    times = [one(resident, session, weights) for _ in range(repeats)]
    out.put((start, time.time(), times))


def thread_scaling(cache: Path, which: str, repeats: int) -> dict[str, float]:
    import torch

    resident, session, weights = build(cache, which, 2)
    runs: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
    for threads in (1, 2):  # warm-up at each
        torch.set_num_threads(threads)
        one(resident, session, weights)
    for _ in range(repeats):  # alternated, so a change of load hits both alike
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs[threads].append(one(resident, session, weights))
    del resident, session
    med = {t: [statistics.median(x[i] for x in runs[t]) for i in range(3)] for t in runs}
    # two processes of 1 thread at once, as two Ray workers (spawned: no torch state shared with this one)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_concurrent_worker, args=(cache, which, repeats, LIMIT, barrier, out)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    got = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    both = [t for _, _, ts in got for t in ts]
    span = max(end for _, end, _ in got) - min(start for start, _, _ in got)
    return {
        "e1": med[1][0],
        "e1_merge": med[1][1],
        "e1_eval": med[1][2],
        "e2": med[2][0],
        "e2_merge": med[2][1],
        "e2_eval": med[2][2],
        "e1_concurrent": statistics.median(t[0] for t in both),
        "e1c_merge": statistics.median(t[1] for t in both),
        "e1c_eval": statistics.median(t[2] for t in both),
        "rate_two": 60 * len(both) / span,  # evaluations per minute of the two processes together
        "rate_one": 60 / med[2][0],  # of one 2-thread process
    }


def driver_time(cache: Path, budget: int, work: Path) -> dict[str, float]:
    """A serial search in this process, its trial loop's driver steps timed (seconds per trial, medians)."""
    from ckptmerge.actions.search import SearchRun
    from ckptmerge.session import executor as executor_mod
    from ckptmerge.session import trials as trials_mod

    spent: dict[str, list[float]] = {"propose": [], "begin": [], "conclude": [], "close": [], "evaluation": []}

    def timed(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label].append(time.perf_counter() - t0)

        setattr(owner, name, wrapper)

    timed(trials_mod.TrialLoop, "_propose", "propose")
    timed(trials_mod.TrialLoop, "_begin", "begin")
    timed(trials_mod.TrialLoop, "_conclude", "conclude")
    timed(trials_mod.TrialLoop, "_close", "close")
    timed(executor_mod, "evaluate_weights", "evaluation")  # the in-process executor's call
    cfg = config(
        cache,
        runtime={"threads": 2},
        search={"budget": budget, "stop": "budget", "resume": "never"},
        tracking={"uri": f"sqlite:///{work / 'mlflow.db'}", "log_plots": False},
        registry={"enabled": False},
    )
    SearchRun(cfg, work / "run", work).run()
    out = {k: statistics.median(v) for k, v in spent.items() if v}
    out["driver"] = out["propose"] + out["begin"] + out["conclude"]  # what a freed worker waits for
    out["trials"] = len(spent["close"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=None, help="the embedded trajectory's cache (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=5, help="evaluations at each thread count (after a warm-up)")
    ap.add_argument("--budget", type=int, default=8, help="trials of the timed serial search")
    ap.add_argument("--only", choices=["search", "pilot"], default=None)
    ap.add_argument(
        "--limit", type=int, default=None, help="eval.limit: a quick check of the script, not a measurement"
    )
    args = ap.parse_args()
    global LIMIT
    LIMIT = args.limit
    work = Path(tempfile.mkdtemp(prefix="parallel-breakdown-"))
    cache = (args.cache or work / "trajectory").resolve()
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory

    build_trajectory(TrajectorySpec.default(), cache, progress=False)
    print(f"{os.cpu_count()} cores; load average before: {tuple(round(x, 2) for x in os.getloadavg())}", flush=True)
    d = driver_time(cache, args.budget, work / "search")
    print(
        f"(b) driver, per trial of a serial search ({d['trials']:.0f} trials, medians): propose {d['propose']:.3f} s, "
        f"open the child run {d['begin']:.3f} s, conclude (objective, tell) {d['conclude']:.3f} s: a freed worker "
        f"waits {d['driver']:.3f} s; then log and close {d['close']:.3f} s (the worker busy again); "
        f"against {d['evaluation']:.3f} s of evaluation",
        flush=True,
    )
    for which in [args.only] if args.only else ["search", "pilot"]:
        s = thread_scaling(cache, which, args.repeats)
        k = s["e1"] / s["e2"]
        print(
            f"(a) {which}: one evaluation at 1 thread {s['e1']:.3f} s (merge {s['e1_merge']:.3f}, lm-eval "
            f"{s['e1_eval']:.3f}), at 2 threads {s['e2']:.3f} s (merge {s['e2_merge']:.3f}, lm-eval "
            f"{s['e2_eval']:.3f}): 2 threads are {k:.2f}x faster, so two 1-thread workers give at most {2 / k:.2f}x",
            flush=True,
        )
        print(
            f"    two 1-thread processes at once: {s['e1_concurrent']:.3f} s each (merge {s['e1c_merge']:.3f}, "
            f"lm-eval {s['e1c_eval']:.3f}); together {s['rate_two']:.1f} evaluations/min against "
            f"{s['rate_one']:.1f} of one 2-thread process: {s['rate_two'] / s['rate_one']:.2f}x (no Ray, no driver)",
            flush=True,
        )
        dd = d["driver"] if which == "search" else 0.0  # a pilot's driver logs one metric per evaluation
        predicted = 2 * (s["e2"] + dd) / (s["e1_concurrent"] + dd)
        print(
            f"    predicted {which} ratio with the driver's {dd:.3f} s per trial: {predicted:.2f}x "
            f"(target {TARGET}x; parallel_trials.py measures the real one)",
            flush=True,
        )
    print(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
