"""How sample-efficient is the search with 1, 2 and 4 workers, in evaluations and in wall-clock rounds?

The asynchronous trial loop replayed in simulated time: each trial takes one duration unit, jittered by
a seeded uniform factor in [1 − j, 1 + j] (``--jitter``) so that completions interleave. At time 0 every
worker gets a proposal (each one asked with the earlier ones pending); whenever a worker frees, its
result is told (with the relative standard errors, as TrialLoop tells them) and the searcher proposes the
next point with the other workers' points pending, until ``--budget`` trials have been started.

Per run, after how many completed evaluations and at what time (in trial durations: "rounds") the best
observed gain first reaches 90% and 99% of the reference, the best gain over the newest checkpoint of
the space's dense sweep and of every run of this benchmark and of the cache in the space (the
convention of ``sample_efficiency.py``). The table shows medians over ``--seeds`` (``>B`` when a run
never got there within its budget, counted as B+1; a missed time counts as the run's last completion
plus one). ``--liars`` compares how ``bo`` lies about pending points (``BayesSearcher.LIARS``; workers > 1).

Every evaluation is real (lm-eval on the merged resident model) and cached by weights (``--cache``, the
file ``sample_efficiency.py`` writes for the same trajectory, ``--last`` and ``--limit``).

    python benchmarks/parallel_efficiency.py --traj-seed 0 --limit 50 --spaces pair --cache /tmp/pe0.pkl
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from sample_efficiency import Objective, bench_setup, evaluations_to, for_space  # noqa: E402


def run_async(
    cfg: Any, k: int, space_name: str, seed: int, workers: int, jitter: float, f: Objective
) -> list[tuple[float, float, int]]:
    """(objective, completion time, trials pending at its proposal) per evaluation, in completion order,
    of one ``bo`` search at ``cfg.search.budget`` trials kept on ``workers`` workers."""
    import numpy as np

    from ckptmerge.evaluation.uncertainty import relative_standard_errors
    from ckptmerge.search.searchers import make_searcher
    from ckptmerge.session.setup import search_space

    cfg = for_space(cfg, space_name)
    space, initial = search_space(cfg.search, cfg.compare, k, cfg.search.space.name)
    searcher = make_searcher(replace(cfg.search, kind="bo", seed=seed, stop="budget"), space, initial)
    durations = np.random.default_rng([seed, workers, 22])  # the same run's durations for every liar
    pad = [0.0] * (f.resident_k - k)
    inflight: list[tuple[float, int, tuple[float, ...], int]] = []  # (finish, start order, point, pending)
    started = 0

    def start(now: float) -> None:
        nonlocal started
        pending = [x for _, _, x, _ in inflight]
        p = searcher.ask(pending)
        d = 1.0 + float(durations.uniform(-jitter, jitter))
        heapq.heappush(inflight, (now + d, started, p.x, len(pending)))
        started += 1

    while started < min(workers, cfg.search.budget):
        start(0.0)
    out: list[tuple[float, float, int]] = []
    draws: list[Any] = []
    while inflight:
        t, _, x, pending = heapq.heappop(inflight)
        y, d = f.evaluate(pad + space.weights(x))
        draws.append(d)
        relative = relative_standard_errors(draws)
        searcher.ses[:] = relative[:-1]
        searcher.tell(x, y, relative[-1])
        out.append((y, t, pending))
        if started < cfg.search.budget:
            start(t)
    return out


def time_to(gains: list[float], times: list[float], target: float) -> float | None:
    """The completion time after which the best gain so far reaches ``target``."""
    hit = evaluations_to(gains, target)
    return times[hit - 1] if hit else None


def tabulate(records: list[dict[str, Any]], budget: int) -> list[str]:
    """The table's lines from the benchmark's records (``--jsonl``): one ``space`` record (the newest's
    objective and the dense sweep) per space, then one ``run`` record per search; runs not yet made are
    left out, so a partial file gives a partial table."""
    B, lines = budget, []
    lines.append(
        "| space | workers | lie | evals to 90% | rounds to 90% | evals to 99% | rounds to 99% | "
        f"gain at {B} | reference | per seed: evals/rounds to 90%, to 99% |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    spaces = [r for r in records if r["kind"] == "space"]
    for sp in spaces:
        runs = [r for r in records if r["kind"] == "run" and r["space"] == sp["space"]]
        newest = sp["newest"]
        ref = max(sp["sweep"] + [y for r in runs for y, _, _ in r["run"]]) - newest
        configs: dict[tuple[int, str], list[list[Any]]] = {}
        for r in runs:
            configs.setdefault((r["workers"], r["liar"]), []).append(r["run"])
        for (w, liar), rs in configs.items():
            per = []
            for run in rs:
                gains, times = [y - newest for y, _, _ in run], [t for _, t, _ in run]
                cells: list[float] = []
                for q in (0.9, 0.99):
                    e, t = evaluations_to(gains, q * ref), time_to(gains, times, q * ref)
                    cells += [e if e else B + 1, round(t, 2) if t is not None else round(times[-1] + 1, 2)]
                per.append((cells, max(gains)))
            med = [statistics.median(c[i] for c, _ in per) for i in range(4)]
            shown = [f"{m:g}" if m <= B else f">{B}" for m in med[::2]]
            seeds = ", ".join(
                f"{c[0] if c[0] <= B else f'>{B}'}/{c[1]:g} {c[2] if c[2] <= B else f'>{B}'}/{c[3]:g}" for c, _ in per
            )
            gain = statistics.median(g for _, g in per)
            lines.append(
                f"| {sp['space']} | {w} | {liar if w > 1 else '-'} | {shown[0]} | {med[1]:.2f} | {shown[1]} | "
                f"{med[3]:.2f} | {gain:+.5f} | {ref:+.5f} | {seeds} ({len(per)} seeds) |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traj-seed", type=int, default=7, help="trajectory seed (the embedded default is 0)")
    ap.add_argument("--last", type=int, default=4, help="checkpoints the families cover")
    ap.add_argument("--budget", type=int, default=10, help="trials per search, whatever the workers")
    ap.add_argument("--dense", type=int, default=21, help="sweep points over a one-coordinate space")
    ap.add_argument("--spaces", nargs="+", default=["pair", "decay"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="in this order")
    ap.add_argument("--liars", nargs="+", default=None, help="bo's lies to compare (default: BayesSearcher.LIAR)")
    ap.add_argument("--liars-for", type=int, nargs="+", default=None, help="compare the lies only at these workers")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--jitter", type=float, default=0.2, help="trial durations uniform in [1-j, 1+j]")
    ap.add_argument("--limit", type=int, default=None, help="eval.limit: a seeded sample of the task's documents")
    ap.add_argument("--cache", type=Path, default=None, help="evaluations kept across runs (sample_efficiency.py's)")
    ap.add_argument("--jsonl", type=Path, default=None, help="append every run here as it finishes")
    ap.add_argument("--tabulate", type=Path, default=None, help="only print the table of a --jsonl file")
    a = ap.parse_args()
    if a.tabulate:
        print("\n".join(tabulate([json.loads(line) for line in a.tabulate.read_text().splitlines()], a.budget)))
        return

    cfg, session, f, ckpts, newest = bench_setup(a.traj_seed, a.last, a.budget, a.limit, a.cache)
    import os

    import numpy as np

    from ckptmerge.search.searchers import BayesSearcher
    from ckptmerge.session.setup import search_space

    liars = a.liars or [BayesSearcher.LIAR]
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []

    def record(r: dict[str, Any]) -> None:
        records.append(r)
        if a.jsonl:
            with a.jsonl.open("a") as out:
                out.write(json.dumps(r) + "\n")

    for name in a.spaces:
        k = 2 if name == "pair" else len(ckpts)
        scfg = for_space(cfg, name)
        space, initial = search_space(scfg.search, scfg.compare, k, scfg.search.space.name)
        pad = [0.0] * (len(ckpts) - k)
        ((lo, hi),) = space.bounds()
        sweep = [(float(x),) for x in np.linspace(lo, hi, a.dense)] + [p.x for p in (initial or [])]
        record(
            {
                "kind": "space",
                "space": name,
                "newest": newest,
                "sweep": [f.evaluate(pad + space.weights(x))[0] for x in sweep],
            }
        )
        for w in a.workers:
            compare = w > 1 and (a.liars_for is None or w in a.liars_for)
            for liar in liars if compare else liars[:1]:
                BayesSearcher.LIAR = liar
                for s in a.seeds:
                    run = run_async(cfg, k, name, s, w, a.jitter, f)
                    record({"kind": "run", "space": name, "workers": w, "liar": liar, "seed": s, "run": run})
                print(
                    f"{name}: {w} workers, {liar}: {len(a.seeds)} seeds ({f.evaluations} evaluations, "
                    f"{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    print(f"\n{f.evaluations} distinct evaluations in {time.perf_counter() - t0:.0f} s; load {os.getloadavg()}\n")
    print("\n".join(tabulate(records, a.budget)))


if __name__ == "__main__":
    main()
