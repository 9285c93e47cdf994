"""How many evaluations does ``watch.warm_start`` save? The previous pair's chosen λ as an extra
initial point of the next pair's search, on the embedded trajectory (``model=embedded``, the default).

For each adjacent pair of the trajectory (5 pairs of its 6 checkpoints), in order, as ``action=watch``
searches them:

1. a **dense sweep** of λ (``--dense`` points over [α, 1]) whose best gain over the newest checkpoint
   alone (λ=1) is the pair's reference (the best of the sweep and of every search's evaluations);
2. per seed, the pair's search (``search=bo``, ``--budget`` evaluations, started as ``src/main.py``
   starts it, noise told as the trial loop tells it) **cold** (the paper's λ=α, λ=1) and **warm** in
   each placement of :mod:`ckptmerge.watch.warm` (``first``: the previous pair's point, then λ=α, λ=1;
   ``replace_first``: the point, then λ=1; ``last``: λ=α, λ=1, then the point). A warm chain runs as a
   watch does: the first pair has no previous pair and is searched cold, each later pair gets the point
   its own chain's previous search chose (``search.select=posterior_mean``);
3. per search, the number of evaluations after which its best gain first reaches 90% and 99% of the
   reference; the table gives the median over every (seed, pair) after the first (``>B`` for a search
   that never got there, counted as B+1), the mean saving against cold, and the median gain at the
   full budget.

Every evaluation is real (lm-eval on the merged resident model, ``ckptmerge_dev_bpb``, the default
objective; ``--limit`` documents) and cached keyed by the pair and λ rounded to ``--decimals`` decimals
(the search is told the λ it proposed, scored at the rounded one), on disk in ``--cache`` so that a
rerun with the same settings evaluates nothing again.

    python benchmarks/watch_warm_start.py --seeds 0 1 2 3 4   # cold vs first (docs/watch.md's table)
    python benchmarks/watch_warm_start.py --seeds 0 --places first replace_first last   # where the point goes

The first run evaluates ~240 points (~8 s each at load average ~11 on 2 cores, ~2 s idle); the searches'
own GP fitting is most of the rest (~40 s per search under that load). A rerun evaluates nothing again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
from sample_efficiency import evaluations_to  # noqa: E402  (the same measure as the spaces' benchmark)


class PairObjective:
    """f(pair, λ) on the resident model of the whole trajectory: real evaluations, cached by the pair and
    λ rounded, with the bootstrap draws a search uses to tell its GP each point's noise."""

    def __init__(self, session, resident, n: int, decimals: int, cache_file: Path | None, tag: str) -> None:  # type: ignore[no-untyped-def]
        self.session, self.resident, self.n, self.decimals = session, resident, n, decimals
        self.cache_file, self.tag = cache_file, tag
        self.cache: dict[str, tuple[float, list[float]]] = {}
        if cache_file is not None and cache_file.is_file():
            stored = json.loads(cache_file.read_text())
            self.cache = {k: (v[0], v[1]) for k, v in stored.get(tag, {}).items()}
        self.evaluations = 0

    def key(self, pair: int, lam: float) -> str:
        return f"{pair}:{round(lam, self.decimals):.{self.decimals}f}"

    def evaluate(self, pair: int, lam: float) -> tuple[float, np.ndarray]:
        key = self.key(pair, lam)
        if key not in self.cache:
            lam_r = round(lam, self.decimals)
            weights = [0.0] * self.n
            weights[pair], weights[pair + 1] = 1.0 - lam_r, lam_r
            self.resident.apply(weights)
            metrics, scores = self.session.evaluate_with_scores("dev")
            draws = self.session.bootstrap.objective_draws(self.session.objective, scores)
            self.cache[key] = (float(self.session.objective(metrics)), [float(d) for d in draws])
            self.evaluations += 1
            if self.evaluations % 10 == 0:
                self.save()
        y, d = self.cache[key]
        return y, np.asarray(d)

    def save(self) -> None:
        if self.cache_file is None:
            return
        stored = json.loads(self.cache_file.read_text()) if self.cache_file.is_file() else {}
        stored[self.tag] = {k: [v[0], v[1]] for k, v in self.cache.items()}
        tmp = self.cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        os.replace(tmp, self.cache_file)


def search_pair(cfg, pair: int, f: PairObjective, initial) -> tuple[list[float], list[str], tuple[float, ...]]:  # type: ignore[no-untyped-def]
    """One pair's search as src/main.py runs it: each evaluation's objective and proposer, and the chosen point."""
    from ckptmerge.evaluation.uncertainty import relative_standard_errors
    from ckptmerge.search.searchers import make_searcher
    from ckptmerge.session.setup import search_space

    space, _ = search_space(cfg.search, cfg.compare, 2)
    searcher = make_searcher(cfg.search, space, initial)
    ys, sources, draws = [], [], []
    for _ in range(cfg.search.budget):
        p = searcher.ask()
        y, d = f.evaluate(pair, p.lam)
        draws.append(d)
        relative = relative_standard_errors(draws)  # as TrialLoop tells it: noise relative to the other trials
        searcher.ses[:] = relative[:-1]
        searcher.tell(p.x, y, relative[-1])
        ys.append(y)
        sources.append(p.source)
    index, _ = searcher.select(cfg.search.select)  # type: ignore[misc]
    return ys, sources, searcher.xs[index]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=10, help="search.budget (the default)")
    ap.add_argument("--dense", type=int, default=21, help="sweep points over [alpha, 1] per pair")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--places", nargs="+", default=["first"], help="warm placements to measure")
    ap.add_argument("--limit", type=int, default=30, help="eval.limit: a seeded sample of the dev documents")
    ap.add_argument("--decimals", type=int, default=2, help="λ is scored rounded to this many decimals")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ckptmerge-watch-warm-start.json"))
    ap.add_argument("--json", type=Path, default=None, help="also write the raw runs here")
    a = ap.parse_args()

    from ckptmerge.config import config_from_dict
    from ckptmerge.runtime import seed_everything
    from ckptmerge.session.evaluation import EvalSession
    from ckptmerge.session.setup import resolve_sources, search_space
    from ckptmerge.watch.warm import with_previous

    cfg = config_from_dict(
        {
            "eval": {"tasks": ["ckptmerge_dev_bpb"], "limit": a.limit},  # the default objective, bpb alone
            "search": {"budget": a.budget},
            "registry": {"enabled": False},
        }
    )
    seed_everything(0)
    t0 = time.perf_counter()
    sources = resolve_sources(cfg.model, cfg.eval, progress=False, all_checkpoints=True)
    session, resident = EvalSession.with_resident(cfg.eval, cfg.search.seed, cfg.runtime, cfg.merge, sources)
    names = sources.cset.names
    n = len(names)
    tag = f"{sources.trajectory_root.name if sources.trajectory_root else 'embedded'}:limit={a.limit}"
    f = PairObjective(session, resident, n, a.decimals, a.cache, tag)
    print(f"embedded trajectory {names}; objective {session.objective.describe()}, eval.limit={a.limit}", flush=True)

    alpha = float(cfg.search.alpha)
    space, _ = search_space(cfg.search, cfg.compare, 2)
    pairs = list(range(n - 1))
    newest = {p: f.evaluate(p, 1.0)[0] for p in pairs}
    dense: dict[int, list[tuple[float, float]]] = {}
    for p in pairs[1:]:  # the first pair has no previous one: it is only searched, to start the chains
        dense[p] = [(float(x), f.evaluate(p, float(x))[0]) for x in np.linspace(alpha, 1.0, a.dense)]
        print(
            f"pair {names[p]}→{names[p + 1]}: dense sweep done ({f.evaluations} evaluations, "
            f"{time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    f.save()

    variants = ["cold", *a.places]
    runs: dict[str, dict[int, dict[int, dict]]] = {v: {} for v in variants}  # variant -> seed -> pair -> run
    for seed in a.seeds:
        scfg = replace(cfg, search=replace(cfg.search, seed=seed))
        first = search_pair(scfg, 0, f, None)
        for v in variants:
            runs[v][seed] = {0: {"ys": first[0], "sources": first[1], "chosen": first[2]}}
            prev = first[2]
            for p in pairs[1:]:
                initial = None if v == "cold" else with_previous(space, None, prev, cfg.search.min_distance, v)
                ys, srcs, chosen = search_pair(scfg, p, f, initial)
                runs[v][seed][p] = {"ys": ys, "sources": srcs, "chosen": chosen, "previous": prev}
                prev = chosen
        f.save()
        print(f"seed {seed} done ({f.evaluations} evaluations, {time.perf_counter() - t0:.0f} s)", flush=True)

    B = a.budget
    reference, best_lam = {}, {}
    for p in pairs[1:]:
        seen = [y for _, y in dense[p]] + [y for v in variants for s in a.seeds for y in runs[v][s][p]["ys"]]
        reference[p] = max(seen) - newest[p]
        best_lam[p] = max(dense[p], key=lambda t: t[1])[0]

    def hits(v: str, s: int, p: int) -> tuple[int, int]:
        gains = [y - newest[p] for y in runs[v][s][p]["ys"]]
        ref = reference[p]
        out = []
        for q in (0.9, 0.99):
            h = evaluations_to(gains, q * ref if ref > 0 else 0.0)
            out.append(h if h is not None else B + 1)
        return out[0], out[1]

    print("\n| pair | dense best λ | reference gain | previous pair's chosen λ (seed 0, first) |")
    print("|---|---:|---:|---:|")
    for p in pairs[1:]:
        prev = runs[a.places[0]][a.seeds[0]][p]["previous"][0] if a.places else float("nan")
        print(f"| {names[p]}→{names[p + 1]} | {best_lam[p]:.2f} | {reference[p]:+.5f} | {prev:.3f} |")

    def shown(m: float) -> str:
        return f"{m:g}" if m <= B else f">{B}"

    print(
        f"\n| start | evals to 90% (median) | evals to 99% (median) | saved vs cold, 90% / 99% (mean) | "
        f"gain at {B} (median) | searches reaching 99% |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    cold = {(s, p): hits("cold", s, p) for s in a.seeds for p in pairs[1:]}
    for v in variants:
        h = {(s, p): hits(v, s, p) for s in a.seeds for p in pairs[1:]}
        med = [statistics.median(x[i] for x in h.values()) for i in (0, 1)]
        saved = [statistics.mean(cold[k][i] - h[k][i] for k in h) for i in (0, 1)]
        at_b = statistics.median(max(runs[v][s][p]["ys"]) - newest[p] for s in a.seeds for p in pairs[1:])
        reached = sum(x[1] <= B for x in h.values())
        label = "cold (λ=α, λ=1)" if v == "cold" else f"warm, {v}"
        print(
            f"| {label} | {shown(med[0])} | {shown(med[1])} | "
            f"{'—' if v == 'cold' else f'{saved[0]:+.2f} / {saved[1]:+.2f}'} | {at_b:+.5f} | {reached}/{len(h)} |"
        )
    print("\nper pair, median evals to 90% / 99% over seeds:")
    for p in pairs[1:]:
        cells = []
        for v in variants:
            h = [hits(v, s, p) for s in a.seeds]
            cells.append(f"{v} {shown(statistics.median(x[0] for x in h))}/{shown(statistics.median(x[1] for x in h))}")
        print(f"  {names[p]}→{names[p + 1]}: " + ", ".join(cells))
    print(f"\n{f.evaluations} new evaluations ({len(f.cache)} cached) in {time.perf_counter() - t0:.0f} s")
    if a.json:
        a.json.write_text(
            json.dumps({"newest": newest, "reference": reference, "dense": dense, "runs": runs}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
