"""The search objective: a weighted sum of dev metrics, oriented so that higher is better.

A metric whose lm-eval ``higher_is_better`` is false (perplexity, bits per byte) enters with a minus
sign, so the objective of ``bits_per_byte=1.93`` alone is ``-1.93``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ckptmerge.config import did_you_mean
from ckptmerge.errors import ConfigError, EvaluationError
from ckptmerge.evaluation.harness import TaskInfo


@dataclass(frozen=True)
class ObjectiveTerm:
    task: str
    metric: str
    weight: float
    higher_is_better: bool

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def sign(self) -> float:
        return 1.0 if self.higher_is_better else -1.0


@dataclass(frozen=True)
class Objective:
    """``Σ weight · sign · metric`` over the dev tasks."""

    terms: tuple[ObjectiveTerm, ...]

    def __call__(self, metrics: Mapping[str, float]) -> float:
        total = 0.0
        for t in self.terms:
            if t.weight == 0:
                continue
            if t.key not in metrics:
                raise EvaluationError(f"evaluation did not report {t.key} (got {sorted(metrics)})")
            total += t.weight * t.sign * float(metrics[t.key])
        return total if math.isfinite(total) else float("nan")

    def describe(self) -> str:
        parts = [f"{'+' if t.higher_is_better else '-'}{t.weight:g}·{t.key}" for t in self.terms if t.weight != 0]
        return " ".join(parts)


def build_objective(
    infos: Mapping[str, TaskInfo],
    metrics: Mapping[str, str],
    weights: Mapping[str, float],
    allow_test_split: bool = False,
) -> Objective:
    """One term per dev task; refuses a dev task that evaluates a test split unless allowed."""
    for key, given in (("eval.metrics", metrics), ("eval.weights", weights)):
        for task in given:
            if task not in infos:
                raise ConfigError(f"{key}.{task}: '{task}' is not a dev task{did_you_mean(task, infos)}")
    if not any(float(weights.get(name, 1.0)) > 0 for name in infos):
        raise ConfigError("eval.weights gives every dev task weight 0; nothing would be optimised")
    terms = []
    for name, info in infos.items():
        if info.split == "test" and not allow_test_split:
            raise ConfigError(
                f"eval.tasks: '{name}' evaluates its test split; selecting on test data overfits the report. "
                "Use a validation task, or set eval.allow_test_split=true to do it anyway"
            )
        metric = metrics.get(name) or (info.metrics[0] if info.metrics else None)
        if metric is None:
            raise EvaluationError(f"eval.tasks: task '{name}' reports no metric")
        if metric not in info.higher_is_better:
            raise ConfigError(
                f"eval.metrics.{name}={metric!r} is not a metric of that "
                f"task{did_you_mean(metric, info.higher_is_better)}"
            )
        terms.append(
            ObjectiveTerm(
                task=name,
                metric=metric,
                weight=float(weights.get(name, 1.0)),
                higher_is_better=bool(info.higher_is_better[metric]),
            )
        )
    return Objective(tuple(terms))
