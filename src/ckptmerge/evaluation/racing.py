"""Racing: a trial scores its dev documents chunk by chunk and stops once it is significantly worse than
the incumbent on the documents scored so far.

The chunk plan puts each task's documents in a seeded order and splits them into ``chunks`` parts;
chunk c holds part c of every task (a multi-task objective races on all its tasks from the first
chunk), and every trial of a search gets the same plan. After each chunk but the last, the trial is
compared with the incumbent (the best fully scored trial, whose per-document scores are at hand) on
exactly the documents scored: the objective's difference and its paired bootstrap draws, with each
metric's own aggregation (``Bootstrap.objective_draws``; the resamples of a subset are shared by the two
models, so the comparison is paired). The trial is raced out when the share of resamples in which it is
*not* worse is below ``1 − confidence`` (one-sided). A raced-out trial's estimate is the incumbent's full
objective plus that difference, with the difference's standard error as its noise.

``race`` takes the chunk evaluation as a function, so the same code runs a live evaluation
(session/evaluation.py) and replays one from cached per-document scores (benchmarks/sample_efficiency.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ckptmerge.evaluation.doc_scores import DocScores, MetricScores, documents
from ckptmerge.evaluation.objective import Objective
from ckptmerge.evaluation.uncertainty import Bootstrap

# A chunk: per task, the lm-eval doc ids of its documents (the ids of the per-document scores).
Chunk = Mapping[str, Sequence[int]]
# What scoring one chunk returns: flat metrics on it, per-document scores, tokens read (None: not counted).
ChunkEvaluation = Callable[[Chunk], tuple[dict[str, float], DocScores, int | None]]


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks of a search, in the order they are scored (every trial the same)."""

    chunks: tuple[dict[str, tuple[int, ...]], ...]

    def __len__(self) -> int:
        return len(self.chunks)


def plan_chunks(docs: Mapping[str, Sequence[int]], chunks: int, seed: int) -> ChunkPlan:
    """``docs``: per task, the doc ids a full evaluation scores. Each task's in a seeded order, in ``chunks``
    nearly equal parts (fewer when a task has fewer documents: every chunk holds at least one document of
    every task, since lm-eval scores every document of a task it is given no list for)."""
    k = max(1, min([chunks, *(len(v) for v in docs.values())]))
    parts: dict[str, list[np.ndarray]] = {}
    for task, ids in docs.items():
        order = np.random.default_rng([seed, zlib.crc32(task.encode()), 21]).permutation(np.asarray(ids))
        parts[task] = np.array_split(order, k)
    return ChunkPlan(tuple({t: tuple(sorted(int(i) for i in parts[t][c])) for t in docs} for c in range(k)))


def _task(name: str) -> str:
    return name.split("/", 1)[0]


def subset(scores: DocScores, ids: Mapping[str, np.ndarray]) -> DocScores:
    """The rows of ``scores`` whose document ids are in ``ids`` (per task)."""
    out: DocScores = {}
    for name, s in scores.items():
        keep = np.isin(s.doc_ids, ids.get(_task(name), np.empty(0, dtype=np.int64)))
        items = None if s.items is None else [v for v, k in zip(s.items, keep) if k]
        out[name] = MetricScores(s.aggregation, s.doc_ids[keep], s.num[keep], s.den[keep], items, s.custom)
    return out


def combine(parts: Sequence[DocScores]) -> DocScores:
    """Per-document scores of several chunks as one, sorted by document id (as one evaluation gives them)."""
    out: DocScores = {}
    for name in parts[0] if parts else ():
        rows = [p[name] for p in parts if name in p]
        ids = np.concatenate([r.doc_ids for r in rows])
        order = np.argsort(ids, kind="stable")
        custom = rows[0].aggregation == "custom"
        items = [v for r in rows for v in (r.items or [])] if custom else None
        out[name] = MetricScores(
            rows[0].aggregation,
            ids[order],
            np.concatenate([r.num for r in rows])[order],
            np.concatenate([r.den for r in rows])[order],
            [items[i] for i in order] if items is not None else None,
            rows[0].custom,
        )
    return out


def metrics_of(scores: DocScores) -> dict[str, float]:
    """Each metric from its per-document scores (its own aggregation): what lm-eval reports for them."""
    return {name: s.value() for name, s in scores.items()}


def covers(objective: Objective, scores: DocScores | None) -> bool:
    """Whether per-document scores exist for every term of the objective (a group's aggregate has none:
    such an objective is not raced)."""
    return scores is not None and all(t.key in scores for t in objective.terms if t.weight)


@dataclass(frozen=True)
class Comparison:
    """A trial against the incumbent on the documents the trial has scored so far."""

    difference: float  # trial − incumbent objective there (higher is better)
    se: float  # the paired bootstrap standard error of the difference
    p_not_worse: float  # one-sided: the share of resamples in which the trial is not worse
    documents: int


def compare(boot: Bootstrap, objective: Objective, trial: DocScores, incumbent: DocScores) -> Comparison:
    """Paired comparison of ``trial`` (partial scores) with ``incumbent`` on the trial's documents."""
    ids = {_task(n): s.doc_ids for n, s in trial.items()}
    inc = subset(incumbent, ids)
    for t in objective.terms:
        if t.weight and not np.array_equal(inc[t.key].doc_ids, trial[t.key].doc_ids):
            raise ValueError(f"{t.key}: the incumbent was not scored on the documents of this chunk")
    point = objective(metrics_of(trial)) - objective(metrics_of(inc))
    draws = boot.objective_draws(objective, trial) - boot.objective_draws(objective, inc)
    draws = draws[np.isfinite(draws)]
    p = (1 + int(np.count_nonzero(draws >= 0))) / (draws.size + 1)
    return Comparison(float(point), float(np.std(draws, ddof=1)), float(p), documents(trial))


@dataclass(frozen=True)
class Incumbent:
    objective: float  # its objective on every document
    scores: DocScores  # its per-document scores on every document


@dataclass(frozen=True)
class RaceOutcome:
    """One trial's dev evaluation, raced or not."""

    metrics: dict[str, float]  # on the documents evaluated (all of them unless raced out)
    scores: DocScores  # per-document scores on those documents
    raced_out: bool
    estimate: float | None  # raced out: the incumbent's objective + the paired difference (else None)
    estimate_se: float | None  # raced out: the difference's paired standard error
    chunks: int  # chunks scored
    docs: int
    tokens: int | None  # (its wall time is the executor's eval_seconds, measured around this call)


def race(
    evaluate_chunk: ChunkEvaluation,
    plan: ChunkPlan,
    incumbent: Incumbent,
    boot: Bootstrap,
    objective: Objective,
    confidence: float,
) -> RaceOutcome:
    """Score ``plan``'s chunks in order; after each but the last, stop if the trial is worse than the
    incumbent at one-sided level ``confidence``. Having scored every chunk, the trial is a full evaluation."""
    parts: list[DocScores] = []
    tokens: int | None = 0
    for c, chunk in enumerate(plan.chunks):
        _, scores, n_tokens = evaluate_chunk(chunk)
        parts.append(scores)
        tokens = None if tokens is None or n_tokens is None else tokens + n_tokens
        if c == len(plan) - 1:
            break
        so_far = combine(parts)
        cmp = compare(boot, objective, so_far, incumbent.scores)
        if cmp.p_not_worse < 1.0 - confidence:
            return RaceOutcome(
                metrics_of(so_far),
                so_far,
                True,
                incumbent.objective + cmp.difference,
                cmp.se,
                c + 1,
                cmp.documents,
                tokens,
            )
    full = combine(parts)
    return RaceOutcome(metrics_of(full), full, False, None, None, len(parts), documents(full), tokens)


def replayed_chunk(scores: DocScores) -> ChunkEvaluation:
    """A chunk evaluation that reads a full evaluation's per-document scores instead of scoring the model
    (the benchmark's replay: a document's score does not depend on which others are scored with it)."""

    def evaluate(chunk: Chunk) -> tuple[dict[str, float], DocScores, int | None]:
        part = subset(scores, {t: np.asarray(ids, dtype=np.int64) for t, ids in chunk.items()})
        return metrics_of(part), part, None

    return evaluate
