"""What ``search.stop=converged`` would have done, read off full-budget runs (sample_efficiency.py --stop-study).

A converged search asks the same points as the full-budget search with the same seed and stops early, so
its trials are a prefix of the full run's: for every (stop_margin, patience) the stopping point is found
from the criterion the full run logged before each proposal, and its pick is the point ``select``
returned after that many evaluations. Each setting is compared with today's (the full budget, every
document) on (a) documents scored, (b) the pick's gain as a fraction of the dense-sweep best, (c) the
pick's distance from today's pick in paired standard errors, and whether the registration decision
(a significant gain over the newest alone) is the same.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np


def stop_index(trace: list[tuple[float | None, int]], margin: float, patience: int) -> int:
    """How many evaluations a converged search spends: the rule is checked before each proposal."""
    streak = 0
    for i, (criterion, _) in enumerate(trace):
        if criterion is None:
            continue
        streak = streak + 1 if criterion < margin else 0
        if streak >= patience:
            return i
    return len(trace)


def paired_distance(a: tuple[float, Any], b: tuple[float, Any]) -> float:
    """|a − b| in paired bootstrap standard errors of the difference (0 for the same point)."""
    if a[0] == b[0]:
        return 0.0
    se = float(np.std(np.asarray(a[1]) - np.asarray(b[1]), ddof=1))
    return abs(a[0] - b[0]) / se if se > 0 else float("inf")


def registers(pick: tuple[float, Any], newest: tuple[float, Any], boot: Any) -> bool:
    """The search's decision: the pick's gain over the newest alone is significant and positive."""
    if pick[0] == newest[0]:
        return False
    g = boot.gain(pick[0] - newest[0], np.asarray(pick[1]) - np.asarray(newest[1]))
    return bool(g.significant and g.value > 0)


def study(
    runs: dict[str, list[list[tuple[float, Any]]]],
    traces: dict[str, list[list[tuple[float | None, int]]]],
    reference: dict[str, float],
    newest: tuple[float, Any],
    boot: Any,
    docs_per_eval: int,
    settings: list[tuple[float, int]],
    default: tuple[float, int],
) -> list[str]:
    """Markdown rows: per space and setting, the medians over seeds and the agreement with today."""
    lines = [
        "| space | setting | documents (median; % of today) | evaluations per seed | gain / dense best (median) "
        "| within 1 paired s.e. of today's pick | same decision as today |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, space_runs in runs.items():
        ref = reference[name]
        today = [run[trace[-1][1]] for run, trace in zip(space_runs, traces[name])]
        rows = [("today", None)] + [(f"margin {m:g}, patience {p}", (m, p)) for m, p in settings]
        for label, setting in rows:
            spent, fracs, within, same = [], [], 0, 0
            for run, trace, base in zip(space_runs, traces[name], today):
                n = len(trace) if setting is None else max(1, stop_index(trace, *setting))
                pick = run[trace[n - 1][1]]
                spent.append(n)
                fracs.append((pick[0] - newest[0]) / ref if ref > 0 else float("nan"))
                within += paired_distance(pick, base) <= 1.0
                same += registers(pick, newest, boot) == registers(base, newest, boot)
            k = len(spent)
            docs = statistics.median(spent) * docs_per_eval
            full = len(traces[name][0]) * docs_per_eval
            mark = " **(default)**" if setting == default else ""
            lines.append(
                f"| {name} | {label}{mark} | {docs:g} ({docs / full:.0%}) | {', '.join(map(str, spent))} | "
                f"{statistics.median(fracs):.2f} | {within}/{k} | {same}/{k} |"
            )
    return lines


def pure_noise(
    cfg: Any, newest: tuple[float, Any], boot: Any, seeds: list[int], margin: float, patience: int, se: float
) -> list[str]:
    """A pair search on an objective that is pure noise: every merge is the newest's score plus a draw of
    noise as large as a real evaluation's (``se``: a measured paired standard error), so no merge is better than the
    newest. Reports where the converged search stops and whether it would register."""
    from dataclasses import replace

    from ckptmerge.evaluation.uncertainty import relative_standard_errors
    from ckptmerge.search.searchers import make_searcher
    from ckptmerge.search.space import PairSpace

    base_draws = np.asarray(newest[1])
    lines = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 12345])
        space = PairSpace(2, float(cfg.search.alpha))
        searcher = make_searcher(
            replace(cfg.search, seed=seed, stop="converged", stop_margin=margin, patience=patience), space
        )
        ys: list[tuple[float, Any]] = []
        draws: list[Any] = []
        stopped = cfg.search.budget
        for i in range(cfg.search.budget):
            check = searcher.check_convergence()
            if check is not None and check.converged:
                stopped = i
                break
            p = searcher.ask()
            if p.x[0] == 1.0:
                y, d = newest[0], base_draws
            else:
                e = float(rng.normal(0, se))
                y, d = newest[0] + e, base_draws + e + rng.normal(0, se, size=base_draws.shape)
            ys.append((y, d))
            draws.append(d)
            rel = relative_standard_errors(draws)
            searcher.ses[:] = rel[:-1]
            searcher.tell(p.x, y, rel[-1])
        idx, _ = searcher.select(cfg.search.select)  # type: ignore[misc]
        reg = registers(ys[idx], newest, boot)
        lines.append(f"seed {seed}: stopped after {stopped} of {cfg.search.budget}; registers: {reg}")
    return lines


def settings_table(
    rows: dict[str, dict[str, list[dict[str, Any]]]], reference: dict[str, float], newest: tuple[float, Any], boot: Any
) -> list[str]:
    """Markdown rows: per space and setting (sample_efficiency.run_setting per seed), the median documents
    (and % of today's), the median gain / dense best, how many picks are within one paired s.e. of today's
    pick, and how many make today's registration decision."""
    lines = [
        "| space | setting | documents (median; % of today) | evaluations per seed | raced out per seed "
        "| gain / dense best (median) | within 1 paired s.e. of today's pick | same decision as today |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_setting in rows.items():
        ref = reference[name]
        today = by_setting["today"]
        full = statistics.median(r["documents"] for r in today)
        for label, runs in by_setting.items():
            docs = statistics.median(r["documents"] for r in runs)
            fracs = [(r["pick"][0] - newest[0]) / ref if ref > 0 else float("nan") for r in runs]
            within = sum(paired_distance(r["pick"], t["pick"]) <= 1.0 for r, t in zip(runs, today))
            same = sum(
                registers(r["pick"], newest, boot) == registers(t["pick"], newest, boot) for r, t in zip(runs, today)
            )
            k = len(runs)
            evals = ", ".join(str(r["evaluations"]) for r in runs)
            raced = ", ".join(str(r["raced"]) for r in runs)
            lines.append(
                f"| {name} | {label} | {docs:g} ({docs / full:.0%}) | {evals} | {raced} "
                f"| {statistics.median(fracs):.2f} | {within}/{k} | {same}/{k} |"
            )
    return lines


class PureNoise:
    """An objective that is pure noise, with per-document scores (so a raced search can be replayed on it):
    every merge is the newest alone with each document's score moved by independent noise, scaled so that
    the paired standard error of its difference from the newest is ``se``. The newest alone is itself.
    Stands in for sample_efficiency.Objective in ``run_setting`` (``full``, ``session``, ``resident_k``)."""

    def __init__(self, f: Any, se: float, seed: int = 21) -> None:
        self.session, self.resident_k, self.seed = f.session, f.resident_k, seed
        self.newest_weights = (0.0,) * (f.resident_k - 1) + (1.0,)
        self.newest = f.full(list(self.newest_weights))
        self.se = se

    def full(self, weights: list[float]) -> tuple[float, Any, Any]:
        import zlib

        from ckptmerge.evaluation.doc_scores import MetricScores
        from ckptmerge.evaluation.racing import metrics_of

        y0, _, scores0 = self.newest
        if tuple(round(w, 9) for w in weights) == self.newest_weights:
            return self.newest
        key = zlib.crc32(repr(tuple(round(w, 9) for w in weights)).encode())
        rng = np.random.default_rng([self.seed, key])
        scores = {}
        for name, s in scores0.items():
            # num + den·δ moves the metric by a den-weighted mean of δ: σ so that its error is se (bits per
            # byte is that mean over ln 2; a mean metric has den 1)
            sigma = self.se * float(np.sum(s.den)) / float(np.sqrt(np.sum(s.den**2)))
            if s.aggregation == "bits_per_byte":
                sigma *= np.log(2)
            scores[name] = MetricScores(s.aggregation, s.doc_ids, s.num + s.den * rng.normal(0, sigma, s.n), s.den)
        y = float(self.session.objective(metrics_of(scores)))
        return y, self.session.bootstrap.objective_draws(self.session.objective, scores), scores
