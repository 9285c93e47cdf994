"""Per-document scores: what an evaluation measured on each document, so that any corpus-level metric can
be recomputed on a resample of the documents.

lm-eval logs one record per document with each metric's per-document value: a number for metrics
aggregated by their mean (accuracy), a pair ``(log-likelihood, count)`` for the weighted ones (bits
per byte, byte and word perplexity). Both fit one shape: a numerator and a denominator per document
(denominator 1 for a mean), and an aggregation that is a function of the two sums. A metric whose
aggregation is neither (F1, BLEU, ...) keeps its per-document items and lm-eval's own aggregation
function, which the bootstrap then calls on each resample (slower, but exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_LN2 = math.log(2)

# lm-eval aggregation name -> value from the sums of numerators and denominators (vectorised).
_FROM_SUMS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": lambda s, n: s / n,
    "weighted_mean": lambda s, n: s / n,
    "bits_per_byte": lambda s, n: -(s / n) / _LN2,
    "weighted_perplexity": lambda s, n: np.exp(-(s / n)),
}


@dataclass
class MetricScores:
    """One metric of one task on each document: ``value = aggregate(Σ num, Σ den)``."""

    aggregation: str  # a key of _FROM_SUMS, or "custom"
    doc_ids: np.ndarray  # lm-eval's doc_id per row (same order for every model of a run)
    num: np.ndarray
    den: np.ndarray
    items: list[Any] | None = None  # "custom" only: lm-eval's per-document items
    custom: Callable[[list[Any]], float] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.num.shape[0])

    def value(self) -> float:
        return float(self.resampled(np.ones((1, self.n)))[0])

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """The metric on each bootstrap resample; ``counts`` is (B, n): how often each document is drawn."""
        if self.aggregation in _FROM_SUMS:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return _FROM_SUMS[self.aggregation](counts @ self.num, counts @ self.den)
        assert self.custom is not None and self.items is not None
        out = np.empty(counts.shape[0])
        for b, row in enumerate(counts):
            picked = [self.items[i] for i in np.repeat(np.arange(self.n), row.astype(int))]
            out[b] = float(self.custom(picked))
        return out

    def to_json(self) -> dict[str, Any]:
        if self.aggregation == "custom":
            raise ValueError("a custom aggregation keeps lm-eval's items and is not serialised")
        return {
            "aggregation": self.aggregation,
            "doc_ids": self.doc_ids.tolist(),
            "num": self.num.tolist(),
            "den": self.den.tolist(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MetricScores:
        return cls(
            d["aggregation"],
            np.asarray(d["doc_ids"], dtype=np.int64),
            np.asarray(d["num"], dtype=float),
            np.asarray(d["den"], dtype=float),
        )


# {"TASK/METRIC": MetricScores}: the same names as the flat metrics of harness.metric_name
DocScores = dict[str, MetricScores]


def _aggregation_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", "")
    return name if name in _FROM_SUMS else "custom"


def from_samples(
    samples: Mapping[str, list[Mapping[str, Any]]], tasks: Mapping[str, Any], name_of: Callable[[str, str], str | None]
) -> DocScores:
    """Per-document scores from lm-eval's logged samples (``results["samples"]``).

    ``tasks``: lm-eval task objects by name (their ``aggregation()`` says how each metric aggregates);
    ``name_of(task, "metric,filter")`` gives the flat metric name (as for the aggregate metrics).
    """
    out: DocScores = {}
    for task, records in samples.items():
        if task not in tasks or not records:
            continue
        aggs = tasks[task].aggregation()
        by_key: dict[str, list[tuple[int, Any]]] = {}
        for r in records:
            for metric in r.get("metrics", []):
                if metric in r:
                    by_key.setdefault(f"{metric},{r.get('filter', 'none')}", []).append((int(r["doc_id"]), r[metric]))
        for key, rows in by_key.items():
            name = name_of(task, key)
            metric = key.partition(",")[0]
            if name is None or metric not in aggs:
                continue
            rows.sort(key=lambda t: t[0])
            agg = _aggregation_name(aggs[metric])
            ids = np.array([i for i, _ in rows], dtype=np.int64)
            values = [v for _, v in rows]
            if agg == "custom":
                out[name] = MetricScores(
                    "custom", ids, np.zeros(len(rows)), np.ones(len(rows)), items=values, custom=aggs[metric]
                )
            elif values and isinstance(values[0], (tuple, list)):
                out[name] = MetricScores(
                    agg, ids, np.array([float(v[0]) for v in values]), np.array([float(v[1]) for v in values])
                )
            else:
                out[name] = MetricScores(agg, ids, np.array([float(v) for v in values]), np.ones(len(rows)))
    return out


def scores_json(scores: DocScores) -> str:
    """Compact JSON of the per-document scores (custom aggregations, which keep lm-eval items, are left out)."""
    import json

    return json.dumps({k: v.to_json() for k, v in scores.items() if v.aggregation != "custom"}, separators=(",", ":"))


def scores_from_json(text: str) -> DocScores:
    import json

    return {k: MetricScores.from_json(v) for k, v in json.loads(text).items()}


def documents(scores: DocScores) -> int:
    """How many documents these scores cover: each task's documents once, however many metrics it has."""
    per_task: dict[str, int] = {}
    for name, s in scores.items():
        task = name.split("/", 1)[0]
        per_task[task] = max(per_task.get(task, 0), s.n)
    return sum(per_task.values())
