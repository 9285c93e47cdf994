"""How sure a score or a gain is: a bootstrap over documents.

Each task's documents are resampled with replacement (a multinomial count per document), every metric
is recomputed with its own aggregation from the per-document scores (mean for accuracy, ratio of sums
for bits per byte and perplexities), and the objective is recombined with its weights. The resamples of
a task are drawn once per run from a fixed seed and reused for every model (common random numbers), so
that a *paired* comparison of two models on the same documents sees only the part of the noise in
which they differ: much narrower than comparing two independent scores when documents vary in
difficulty, as they do.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ckptmerge.evaluation.doc_scores import DocScores, MetricScores
from ckptmerge.evaluation.objective import Objective

_CHUNK = 128  # resamples per matrix product: bounds memory at ~_CHUNK × documents × 8 bytes


@dataclass(frozen=True)
class Gain:
    """A's advantage over B (oriented so that positive means A is better), with its interval.

    ``p_value`` is two-sided, for "no difference"; ``significant`` means the interval excludes 0.
    """

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    confidence: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """MLflow metrics: ``PREFIX`` (the value) and ``PREFIX.ci_low``/``.ci_high``/``.p_value``/``.significant`` "
        "(1/0)."""
        return {
            prefix: self.value,
            f"{prefix}.ci_low": self.ci_low,
            f"{prefix}.ci_high": self.ci_high,
            f"{prefix}.p_value": self.p_value,
            f"{prefix}.significant": float(self.significant),
        }

    def describe(self) -> str:
        pct = f"{self.confidence:.0%}"
        return f"{self.value:+.5f}, {pct} CI [{self.ci_low:+.5f}, {self.ci_high:+.5f}], p={self.p_value:.3g}"


class Bootstrap:
    """Resamples of each task's documents, drawn once and shared by every model of a run."""

    def __init__(self, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> None:
        if resamples < 50:
            raise ValueError(f"at least 50 bootstrap resamples are needed for an interval, got {resamples}")
        self.resamples, self.confidence, self.seed = int(resamples), float(confidence), int(seed)
        self._counts: dict[tuple[str, int], np.ndarray] = {}

    def counts(self, task: str, n: int) -> np.ndarray:
        """(resamples, n) draw counts for ``task``'s ``n`` documents (uint16; a document is drawn < 65536 times)."""
        key = (task, n)
        if key not in self._counts:
            digest = zlib.crc32(task.encode()) * 1_000_003 + n
            rng = np.random.default_rng([self.seed, digest])
            self._counts[key] = rng.multinomial(n, np.full(n, 1.0 / n), size=self.resamples).astype(np.uint16)
        return self._counts[key]

    def metric_draws(self, name: str, scores: MetricScores) -> np.ndarray:
        """The metric ``TASK/METRIC`` on every resample."""
        counts = self.counts(name.split("/", 1)[0], scores.n)
        return np.concatenate(
            [scores.resampled(counts[s : s + _CHUNK].astype(np.float64)) for s in range(0, self.resamples, _CHUNK)]
        )

    def objective_draws(self, objective: Objective, scores: DocScores) -> np.ndarray:
        """The objective on every resample (tasks resampled independently, metrics of a task together)."""
        total = np.zeros(self.resamples)
        for t in objective.terms:
            if t.weight == 0:
                continue
            if t.key not in scores:
                raise KeyError(f"no per-document scores for {t.key}")
            total += t.weight * t.sign * self.metric_draws(t.key, scores[t.key])
        return total

    def standard_error(self, objective: Objective, scores: DocScores) -> float:
        return float(np.std(self.objective_draws(objective, scores), ddof=1))

    def gain(self, point: float, draws: np.ndarray) -> Gain:
        """A :class:`Gain` from the observed difference and its paired bootstrap draws."""
        a = (1.0 - self.confidence) / 2
        finite = draws[np.isfinite(draws)]
        if finite.size < self.resamples // 2:
            nan = float("nan")
            return Gain(point, nan, nan, nan, False, self.confidence)
        lo, hi = np.quantile(finite, [a, 1.0 - a])
        # The p-value that inverts the same percentile interval (two-sided): the interval at confidence
        # c excludes 0 exactly when p < 1 - c, so the two never disagree.
        below = (1 + np.count_nonzero(finite <= 0)) / (finite.size + 1)
        above = (1 + np.count_nonzero(finite >= 0)) / (finite.size + 1)
        p = min(1.0, 2 * min(below, above))
        return Gain(float(point), float(lo), float(hi), float(p), bool(lo > 0 or hi < 0), self.confidence)

    def objective_gain(self, objective: Objective, a: DocScores, b: DocScores) -> Gain:
        """Objective of A minus objective of B on the same documents (higher is better)."""
        for t in objective.terms:
            if t.weight and t.key in a and t.key in b:
                _same_documents(t.key, a[t.key], b[t.key])
        point = _objective_point(objective, a) - _objective_point(objective, b)
        return self.gain(point, self.objective_draws(objective, a) - self.objective_draws(objective, b))

    def metric_gain(self, name: str, higher_is_better: bool, a: MetricScores, b: MetricScores) -> Gain:
        """Metric ``name`` of A against B, oriented so that positive means A is better."""
        _same_documents(name, a, b)
        sign = 1.0 if higher_is_better else -1.0
        point = sign * (a.value() - b.value())
        return self.gain(point, sign * (self.metric_draws(name, a) - self.metric_draws(name, b)))


def _objective_point(objective: Objective, scores: DocScores) -> float:
    return objective({k: s.value() for k, s in scores.items() if k in {t.key for t in objective.terms}})


def _same_documents(name: str, a: MetricScores, b: MetricScores) -> None:
    if a.n != b.n or not np.array_equal(a.doc_ids, b.doc_ids):
        raise ValueError(f"{name}: the two models were scored on different documents ({a.n} and {b.n})")


def gains_by_metric(
    boot: Bootstrap, higher_is_better: Mapping[str, bool], a: DocScores, b: DocScores
) -> dict[str, Gain]:
    """A paired gain for every metric both were scored on whose direction is known."""
    return {
        k: boot.metric_gain(k, higher_is_better[k], a[k], b[k])
        for k in sorted(set(a) & set(b))
        if k in higher_is_better
    }


def relative_standard_errors(draws: list[np.ndarray | None]) -> list[float | None]:
    """Each score's standard error relative to the others scored on the same resamples.

    ``draws[i]`` is score i on every resample (None: unknown). The part of the noise that all scores
    share (the difficulty of the sampled documents) is removed by subtracting, resample by resample,
    the mean over the known scores; what is left is how uncertain each one is *compared with the rest*.
    A single score has nothing to be compared with: 0.
    """
    known = [d for d in draws if d is not None]
    if not known:
        return [None] * len(draws)
    centre = np.mean(np.stack(known), axis=0)
    return [None if d is None else float(np.std(d - centre, ddof=1)) for d in draws]
