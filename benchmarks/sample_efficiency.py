"""How many evaluations does each search space and searcher need to find (most of) its space's best gain?

On a trajectory the project never searched on (``--traj-seed``, default 7) and a task built from text
it never selects on (held-out docstrings and stdlib code, as in ``search_vs_grid.py``), for each space:

1. a **dense sweep** of the space (``--dense`` points over its one coordinate, plus its warm-start
   points), whose best gain over the newest checkpoint alone is the reference;
2. each searcher (``bo``, ``random``) at ``--budget`` evaluations for each of ``--seeds``, started as
   ``python src/main.py`` starts it (the pair at λ=α and λ=1, every other space warm-started);
3. per run, the number of evaluations after which its best observed gain first reaches 90% and 99%
   of the reference, and after which its best observed point is within one paired bootstrap standard
   error of the reference point (what the evaluations can tell apart at all: on 50 documents 1% of the
   gain is about one such error, docs/search-spaces.md); the table shows the median over seeds (``>B``
   when a run never got there within its budget, which counts as B+1 in the median), and the best gain
   each searcher reached at the full budget (median).

Every evaluation is real (lm-eval on the merged resident model) and cached by weights, so a point two
runs share (the warm start) is evaluated once. The simplex has no dense sweep (3 coordinates); its row
uses the best gain any run or sweep found over the same checkpoints as the reference (for the other
spaces: the best of their sweep and of every run in them).

    python benchmarks/sample_efficiency.py --limit 100           # ~40 min on 2 idle cores
    python benchmarks/sample_efficiency.py --traj-seed 0 --spaces pair ema --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from unseen import make_task, unseen_trajectory  # noqa: E402


class Objective:
    """f(weights) on the resident model: real lm-eval evaluations, cached by weights, with the bootstrap
    draws a search uses to tell its GP each point's noise and the per-document scores (from which a
    raced evaluation, which scores the documents chunk by chunk, is replayed exactly: racing.py)."""

    def __init__(self, session, resident, k: int, store: Path | None = None) -> None:  # type: ignore[no-untyped-def]
        self.session, self.resident, self.resident_k = session, resident, k
        # weights -> (objective, bootstrap draws, per-document scores)
        self.cache: dict[tuple[float, ...], tuple[float, Any, Any]] = {}
        self.evaluations = 0
        # --cache: evaluations kept across runs of the benchmark (same trajectory, task and limit), so
        # a changed searcher re-evaluates only the points it newly proposes. An entry of an older cache
        # without per-document scores is evaluated again.
        self.store = store
        if store is not None and store.exists():
            self.cache = {k: v for k, v in pickle.loads(store.read_bytes()).items() if len(v) == 3}

    def _save(self) -> None:
        if self.store is not None:
            tmp = self.store.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(self.cache))
            tmp.replace(self.store)

    def full(self, weights: list[float]) -> tuple[float, Any, Any]:
        """(objective, bootstrap draws, per-document scores) of the merge with ``weights``."""
        key = tuple(round(w, 9) for w in weights)
        if key not in self.cache:
            self.resident.apply(list(weights))
            metrics, scores = self.session.evaluate_with_scores("dev")
            draws = self.session.bootstrap.objective_draws(self.session.objective, scores)
            self.cache[key] = (float(self.session.objective(metrics)), draws, scores)
            self.evaluations += 1
            self._save()
        return self.cache[key]

    def evaluate(self, weights: list[float]) -> tuple[float, Any]:
        y, draws, _ = self.full(weights)
        return y, draws

    def __call__(self, weights: list[float]) -> float:
        return self.evaluate(weights)[0]


def evaluations_to(gains: list[float], target: float) -> int | None:
    """1-based number of evaluations after which the best gain so far reaches ``target``."""
    best = float("-inf")
    for i, g in enumerate(gains, 1):
        best = max(best, g)
        if best >= target - 1e-12:
            return i
    return None


def evaluations_within_se(run: list[tuple[float, Any]], reference: tuple[float, Any]) -> int | None:
    """1-based number of evaluations after which the best observed point of ``run`` ((objective, bootstrap
    draws) per evaluation) is at most one paired standard error below ``reference``: the draws share
    their resamples, so the error of a difference is the spread of the draws' differences."""
    import numpy as np

    best: tuple[float, Any] | None = None
    for i, (y, draws) in enumerate(run, 1):
        if best is None or y > best[0]:
            best = (y, draws)
        se = float(np.std(np.asarray(reference[1]) - np.asarray(best[1]), ddof=1))
        if reference[0] - best[0] <= se + 1e-12:
            return i
    return None


def for_space(cfg, name: str):  # type: ignore[no-untyped-def]
    """``cfg`` with ``search/space=name``; ``pair-warm`` is the pair started from the baselines (λ=1, λ=½)
    instead of the paper's λ=α, λ=1."""
    space = (
        {"name": "pair", "last": 2, "warm_start": True}
        if name == "pair-warm"
        else {"name": name, "last": 2 if name == "pair" else cfg.search.space.last, "warm_start": name != "pair"}
    )
    return replace(cfg, search=replace(cfg.search, space=type(cfg.search.space)(**space)))


def run_searcher(
    cfg, k: int, space_name: str, kind: str, seed: int, f: Objective, trace: list | None = None
) -> list[tuple[float, Any]]:  # type: ignore[no-untyped-def]
    """The objective and bootstrap draws of each evaluation, in order, of one search as src/main.py would run it
    at its whole budget (``search.stop=budget``). ``trace``, if given, gets per evaluation the stop rule's
    criterion checked before it was proposed (None while it does not apply) and, after it was told, the
    index of the point ``select`` would return: what any ``search.stop=converged`` setting would have done
    is then read off the full run (its trials are a prefix of this run's; stop_study)."""
    from ckptmerge.evaluation.uncertainty import relative_standard_errors
    from ckptmerge.search.searchers import make_searcher
    from ckptmerge.session.setup import search_space

    cfg = for_space(cfg, space_name)
    space, initial = search_space(cfg.search, cfg.compare, k, cfg.search.space.name)
    searcher = make_searcher(replace(cfg.search, kind=kind, seed=seed, stop="budget"), space, initial)
    ys, draws = [], []
    for _ in range(cfg.search.budget):
        criterion = searcher.improvement_criterion()
        p = searcher.ask()
        y, d = f.evaluate([0.0] * (f.resident_k - k) + space.weights(p.x))
        draws.append(d)
        relative = relative_standard_errors(draws)  # as TrialLoop tells it: noise relative to the other trials
        searcher.ses[:] = relative[:-1]
        searcher.tell(p.x, y, relative[-1])
        ys.append((y, d))
        if trace is not None:
            picked = searcher.select(cfg.search.select)
            trace.append((criterion, picked[0] if picked else len(ys) - 1))
    return ys


def run_setting(cfg, k: int, space_name: str, seed: int, f: Any, stop: str, race: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One bo search as TrialLoop runs it with ``search.stop=stop`` and racing on or off; a raced trial is
    replayed from its point's cached per-document scores by evaluation/racing.py (the tool's own code):
    scoring chunk by chunk gives each document the score a full evaluation gives it.

    ``f``: an :class:`Objective`, or ``stopping.PureNoise`` (its ``full``, ``session`` and ``resident_k``).
    Returns the pick (objective and draws of the point ``select`` returns, always fully scored), the
    documents scored, the evaluations and how many were raced out."""

    from ckptmerge.evaluation.uncertainty import relative_standard_errors
    from ckptmerge.search.searchers import make_searcher
    from ckptmerge.session.setup import search_space

    session = f.session
    cfg = for_space(cfg, space_name)
    space, initial = search_space(cfg.search, cfg.compare, k, cfg.search.space.name)
    searcher = make_searcher(replace(cfg.search, seed=seed, stop=stop), space, initial)
    if race:
        searcher.newest_first()  # as TrialLoop does under eval.race
    told: list[tuple[float, Any, float | None, bool]] = []  # objective, full draws, raced se, raced out
    full: list[tuple[float, Any]] = []  # the full evaluation of each told point (the pick's figures)
    best: tuple[float, Any] | None = None  # the incumbent: objective and per-document scores
    docs = raced = 0
    for _ in range(cfg.search.budget):
        check = searcher.check_convergence()
        if check is not None and check.converged:
            break
        p = searcher.ask()
        weights = [0.0] * (f.resident_k - k) + space.weights(p.x)
        y, draws, scores = f.full(weights)
        full.append((y, draws))
        # TrialLoop._incumbent: the newest is never raced
        scored, out = race_or_score(session, cfg, scores, best if race and weights[-1] != 1.0 else None)
        docs += scored
        if out is not None and out.raced_out:
            raced += 1
            told.append((float(out.estimate), None, out.estimate_se, True))  # type: ignore[arg-type]
        else:
            told.append((y, draws, None, False))
            if best is None or y > best[0]:
                best = (y, scores)
        rel = relative_standard_errors([d for _, d, _, _ in told])  # as TrialLoop._tell
        rel = [se if r else v for (_, _, se, r), v in zip(told, rel)]
        searcher.ses[:] = rel[:-1]
        searcher.tell(p.x, told[-1][0], rel[-1], eligible=not told[-1][3])
    index, _ = searcher.select(cfg.search.select)  # type: ignore[misc]
    return {"pick": full[index], "documents": docs, "evaluations": len(told), "raced": raced}


def race_or_score(session, cfg, scores, incumbent):  # type: ignore[no-untyped-def]
    """One trial's dev evaluation replayed from its per-document ``scores``: raced against ``incumbent``
    (objective, per-document scores) chunk by chunk as the tool races, or, with no incumbent to race
    against, scored in full. Returns (documents scored, the race's outcome or None)."""
    from ckptmerge.evaluation import racing

    if incumbent is None:
        return racing.documents(scores), None
    out = racing.race(
        racing.replayed_chunk(scores),
        session.chunk_plan(),
        racing.Incumbent(*incumbent),
        session.bootstrap,
        session.objective,
        float(cfg.eval.race.confidence),
    )
    return out.docs, out


def race_study(a, cfg, f, reference: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """Four settings (today, converged stop, racing, both) per space and seed: documents, the pick's gain
    as a fraction of the dense-sweep best, its distance from today's pick, the registration decision."""
    import numpy as np
    import stopping

    newest = f.evaluate([0.0] * (f.resident_k - 1) + [1.0])
    settings = {
        "today": ("budget", False),
        "stop": ("converged", False),
        "race": ("budget", True),
        "both": ("converged", True),
    }
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in reference:
        k = 2 if name.startswith("pair") else f.resident_k
        rows[name] = {s: [run_setting(cfg, k, name, seed, f, *settings[s]) for seed in a.seeds] for s in settings}
        print(f"{name}: four settings done ({f.evaluations} evaluations)", flush=True)
    per_eval = sum(len(v) for v in f.session.dev.doc_ids().values())
    print(
        f"\nracing and stopping (bo, budget {a.budget}, {len(a.seeds)} seeds, {per_eval} documents per full "
        f"evaluation, eval.race.chunks={cfg.eval.race.chunks}, confidence {cfg.eval.race.confidence}):\n"
    )
    for line in stopping.settings_table(rows, reference, newest, f.session.bootstrap):
        print(line)
    # A pure-noise objective under both: every merge is the newest alone plus per-document noise of the
    # paired standard error a real merge has against it (the median over the evaluated pairs), scored and
    # raced from those synthetic per-document scores by the same code.
    pair = [v for key, v in f.cache.items() if key[:-2] == (0.0,) * (len(key) - 2) and key[-1] != 1.0]
    se = float(statistics.median(float(np.std(v[1] - newest[1], ddof=1)) for v in pair))
    noise = stopping.PureNoise(f, se)
    print(f"\npure-noise pair objective (paired s.e. {se:.5f} against the newest), both on:")
    for seed in a.seeds:
        r = run_setting(cfg, 2, "pair", seed, noise, "converged", True)
        reg = stopping.registers(r["pick"], newest, f.session.bootstrap)
        print(
            f"seed {seed}: stopped after {r['evaluations']} of {a.budget} evaluations, {r['documents']} documents "
            f"({r['raced']} raced out); registers: {reg}"
        )


def bench_setup(traj_seed: int, last: int, budget: int, limit: int | None, cache: Path | None):  # type: ignore[no-untyped-def]
    """The config, evaluation session and cached objective of the benchmark: the trajectory ``traj_seed``'s
    newest ``last`` checkpoints, scored on ``bench_unseen_bpb``; and the objective of the newest alone."""
    traj = unseen_trajectory(traj_seed)  # also sets the offline switches before the libraries load
    from ckptmerge.config import config_from_dict
    from ckptmerge.runtime import seed_everything
    from ckptmerge.session.evaluation import EvalSession
    from ckptmerge.session.setup import resolve_sources

    work = Path(tempfile.mkdtemp(prefix="ckptmerge-sample-eff-"))
    tasks = make_task(traj, work / "tasks")
    ckpts = [str(c) for c in traj.checkpoints[-last:]]
    cfg = config_from_dict(
        {
            "model": {"name": "local", "source": "local", "checkpoints": ckpts},
            "eval": {
                "tasks": ["bench_unseen_bpb"],
                "include_path": str(tasks),
                "max_length": traj.max_length,
                "limit": limit,
            },
            "search": {"budget": budget, "space": {"name": "pair", "last": last}},
            "registry": {"enabled": False},
        }
    )
    seed_everything(0)
    sources = resolve_sources(cfg.model, cfg.eval, progress=False)
    session, resident = EvalSession.with_resident(cfg.eval, cfg.search.seed, cfg.runtime, cfg.merge, sources)
    f = Objective(session, resident, len(ckpts), cache)
    newest = f([0.0] * (len(ckpts) - 1) + [1.0])
    print(
        f"trajectory seed {traj_seed}, checkpoints {[Path(c).name for c in ckpts]}, objective "
        f"{session.objective.describe()}; newest alone {newest:.5f}; work folder {work}",
        flush=True,
    )
    return cfg, session, f, ckpts, newest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traj-seed", type=int, default=7, help="trajectory seed (the embedded default is 0)")
    ap.add_argument("--last", type=int, default=4, help="checkpoints the families and the simplex cover")
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--dense", type=int, default=21, help="sweep points over a one-coordinate space")
    ap.add_argument("--spaces", nargs="+", default=["pair", "ema", "window", "decay", "simplex"])
    ap.add_argument("--searchers", nargs="+", default=["bo", "random"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--limit", type=int, default=None, help="eval.limit: a seeded sample of the task's documents")
    ap.add_argument(
        "--stop-study",
        action="store_true",
        help="also tabulate what search.stop=converged would have done (bo only; benchmarks/stopping.py)",
    )
    ap.add_argument(
        "--race-study",
        action="store_true",
        help="also tabulate today / converged stop / racing / both (bo only; benchmarks/stopping.py)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the raw runs here")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep evaluations in this file across runs (one file per trajectory seed, --last and --limit)",
    )
    a = ap.parse_args()

    cfg, session, f, ckpts, newest = bench_setup(a.traj_seed, a.last, a.budget, a.limit, a.cache)
    import numpy as np

    from ckptmerge.session.setup import search_space

    t0 = time.perf_counter()
    runs: dict[str, dict[str, list[list[float]]]] = {}  # gains over the newest, per space, searcher, seed
    evaluated: dict[str, dict[str, list[list[tuple[float, Any]]]]] = {}  # (objective, draws), the same way
    traces: dict[str, list[list[tuple[float | None, int]]]] = {}  # bo's stop criterion and pick, per step
    reference: dict[str, float] = {}
    best_point: dict[str, tuple[float, Any]] = {}
    for name in a.spaces:
        k = 2 if name.startswith("pair") else len(ckpts)
        scfg = for_space(cfg, name)
        space, initial = search_space(scfg.search, scfg.compare, k, scfg.search.space.name)
        pad = [0.0] * (len(ckpts) - k)
        seen: list[tuple[float, Any]] = []  # every evaluation in this space: the reference is the best of them
        if space.dims == 1:
            ((lo, hi),) = space.bounds()
            points = [(float(x),) for x in np.linspace(lo, hi, a.dense)] + [p.x for p in (initial or [])]
            seen += [f.evaluate(pad + space.weights(x)) for x in points]
            print(
                f"{name}: dense sweep of {len(points)} points done ({f.evaluations} evaluations, "
                f"{time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        runs[name] = {}
        evaluated[name] = {}
        for kind in a.searchers:
            traces[name] = [[] for _ in a.seeds] if kind == "bo" else traces.get(name, [])
            evaluated[name][kind] = [
                run_searcher(cfg, k, name, kind, s, f, traces[name][i] if kind == "bo" else None)
                for i, s in enumerate(a.seeds)
            ]
            runs[name][kind] = [[y - newest for y, _ in run] for run in evaluated[name][kind]]
            print(
                f"{name}/{kind}: {len(a.seeds)} seeds done ({f.evaluations} evaluations, "
                f"{time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        seen += [e for rs in evaluated[name].values() for run in rs for e in run]
        # the simplex has no dense sweep: its reference is also the best of every space's evaluations,
        # all of which are weightings of the same checkpoints that it can express
        pool = [v[:2] for v in f.cache.values()] if space.dims != 1 else seen
        best_point[name] = max(pool, key=lambda e: e[0])
        reference[name] = best_point[name][0] - newest
        print(f"{name}: reference gain {reference[name]:+.5f}", flush=True)

    B = a.budget
    print(
        f"\n| space | searcher | evals to 90% (median) | evals to 99% (median) | evals to within 1 SE (median) | "
        f"gain at {B} (median) | reference gain (dense) | per seed: evals to 90% / 99% / 1 SE |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in a.spaces:
        ref = reference[name]
        for kind in a.searchers:
            per = []
            for gains, run in zip(runs[name][kind], evaluated[name][kind]):
                hit90, hit99 = (evaluations_to(gains, q * ref) if ref > 0 else 1 for q in (0.9, 0.99))
                hit_se = evaluations_within_se(run, best_point[name])
                per.append((hit90 or B + 1, hit99 or B + 1, hit_se or B + 1))
            med = [statistics.median(x[i] for x in per) for i in (0, 1, 2)]
            shown = [f"{m:g}" if m <= B else f">{B}" for m in med]
            at_budget = statistics.median(max(g) for g in runs[name][kind])
            seeds = ", ".join("/".join(str(v) if v <= B else f">{B}" for v in x) for x in per)
            print(
                f"| {name} | {kind} | {shown[0]} | {shown[1]} | {shown[2]} | {at_budget:+.5f} | {ref:+.5f} | {seeds} |"
            )
    if a.stop_study and "bo" in a.searchers:
        stop_tables(a, cfg, session, f, evaluated, traces, reference, best_point)
    if a.race_study:
        race_study(a, cfg, f, {n: reference[n] for n in a.spaces if n in reference})
    print(f"\n{f.evaluations} distinct evaluations in {time.perf_counter() - t0:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({"newest": newest, "reference": reference, "runs": runs}, indent=1))


def stop_tables(a, cfg, session, f, evaluated, traces, reference, best_point) -> None:  # type: ignore[no-untyped-def]
    """The stop rule's settings against today's full budget (benchmarks/stopping.py), and a pure-noise pair."""
    import numpy as np
    import stopping

    from ckptmerge.config import SearchConfig

    newest = f.evaluate([0.0] * (f.resident_k - 1) + [1.0])
    suite = f.session.dev
    per_eval = (
        sum(len(v) for v in suite.samples.values())
        if suite.samples
        else sum(len(t.eval_docs) for t in suite.task_objects().values())
    )
    default = (float(SearchConfig.stop_margin), int(SearchConfig.patience))
    settings = sorted({(m, p) for m in (0.3, 0.5, 0.6, 0.75, 1.0, 1.5) for p in (1, 2)} | {default})
    runs = {name: evaluated[name]["bo"] for name in traces}
    print(f"\nstop rule (bo, budget {a.budget}, {len(a.seeds)} seeds, {per_eval} documents per evaluation):\n")
    for line in stopping.study(runs, traces, reference, newest, session.bootstrap, per_eval, settings, default):
        print(line)
    # the noise of the pure-noise objective: the median paired s.e. of a pair run's points against the newest
    pair = runs.get("pair") or next(iter(runs.values()))
    se = float(
        np.median(
            [np.std(np.asarray(y[1]) - np.asarray(newest[1]), ddof=1) for run in pair for y in run if y[0] != newest[0]]
        )
    )
    print(f"\npure-noise pair objective (paired s.e. {se:.5f}), default stop rule:")
    for line in stopping.pure_noise(cfg, newest, session.bootstrap, a.seeds, *default, se):
        print(line)


if __name__ == "__main__":
    main()
