"""The finish of a search, as typed steps' results: the chosen trial and its evidence (:class:`Selection`),
the written and re-scored merge (:class:`Written`), the test-split report (:class:`HeldOutReport`), and
the metrics and ``result.json`` fields made from them.

:class:`ckptmerge.actions.search.SearchRun` runs the steps; this module holds what they hand on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptmerge.evaluation.uncertainty import Gain
from ckptmerge.search.space import SearchSpace
from ckptmerge.session import evidence
from ckptmerge.session.trials import Trial
from ckptmerge.tracking import names


@dataclass(frozen=True)
class Selection:
    """The trial that is the search's result, and the evidence for it."""

    best: Trial
    selected_by: str
    newest: Trial | None  # the newest checkpoint alone: the baseline (None when its trial failed)
    gain: Gain | None
    evidence: evidence.Evidence
    plot: str | None  # the posterior plot's artifact, when one was logged

    @property
    def baseline(self) -> float | None:
        return self.newest.objective if self.newest else None


@dataclass(frozen=True)
class Written:
    """The best merge as written, reloaded from its folder and re-scored."""

    model: Any
    tokenizer: Any
    lm: Any
    rescored: float


@dataclass(frozen=True)
class HeldOutReport:
    """Test-split scores per reported model (``best`` and each checkpoint) and the merge's gains there."""

    by_model: dict[str, dict[str, float]]
    gains: dict[str, Gain]


def summary_metrics(chosen: Selection, merge: Written, report: HeldOutReport) -> dict[str, float]:
    """The parent run's summary metrics: the chosen weights, its dev and test scores, the gains."""
    best, gain = chosen.best, chosen.gain
    summary = {
        names.METRIC_BEST_LAMBDA: list(best.weights.values())[-1],
        names.METRIC_RESCORED_OBJECTIVE: merge.rescored,
        **{names.weight_param(n): w for n, w in best.weights.items()},
        **{names.PREFIX_BEST + k: v for k, v in best.metrics.items()},
        **{f"{names.PREFIX_TEST}{who}.{k}": v for who, ms in report.by_model.items() for k, v in ms.items()},
    }
    if chosen.baseline is not None:
        summary[names.METRIC_BASELINE_OBJECTIVE] = chosen.baseline
    if gain is not None:
        summary.update(gain.as_metrics(names.METRIC_GAIN))
    for key, g in report.gains.items():
        summary.update(g.as_metrics(names.safe_key(names.PREFIX_TEST_GAIN + key)))
    return summary


def result_fields(
    chosen: Selection, merge: Written, report: HeldOutReport, space: SearchSpace, trials: list[Trial]
) -> dict[str, Any]:
    """``result.json``'s fields about the result itself (the search adds where it ran and what it wrote)."""
    best, gain, test = chosen.best, chosen.gain, report.by_model
    return {
        "lambda": best.lam,
        "weights": best.weights,
        "point": list(best.x),
        "space": {"name": space.name, "checkpoints": len(best.weights), "point": dict(zip(space.coordinates, best.x))},
        "objective": best.objective,
        "objective_se": best.objective_se,
        "selected_by": chosen.selected_by,
        "baseline_objective": chosen.baseline,
        "gain": gain.as_json() if gain else None,
        "test_gains": evidence.gains_json(report.gains),
        "decision": chosen.evidence.decision,
        "decision_reason": chosen.evidence.reason,
        "rescored_objective": merge.rescored,
        "metrics": best.metrics,
        "test_metrics": test.get("best", {}),
        "test_metrics_by_checkpoint": {k: v for k, v in test.items() if k != "best"},
        "trials": [t.as_json() for t in trials],
    }
