"""The evidence behind a search's result: which trial is the result, how much it gains over the newest
checkpoint with its paired interval, and what that allows (register, or keep the newest).

A gain is claimed only with its interval: the paired bootstrap of :mod:`ckptmerge.evaluation.uncertainty`
over the documents both models were scored on. The decision rests on that interval, so that a
difference within the noise of the dev tasks is never registered as an improvement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ckptmerge.evaluation.doc_scores import DocScores
from ckptmerge.evaluation.uncertainty import Gain
from ckptmerge.search.searchers import Searcher
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.trials import Trial, TrialLoop

log = logging.getLogger(__name__)

REGISTERED, KEEP_NEWEST, NOT_REGISTERED = "registered", "keep-newest", "not-registered"


def select_result(trials: list[Trial], searcher: Searcher, rule: str) -> tuple[Trial, str]:
    """The trial that is the search's result and the rule that chose it (see ``Searcher.select``)."""
    ok = [t for t in trials if t.objective is not None]
    assert len(ok) == len(searcher.ys), "every successful trial is told to the searcher, in order"
    index, used = searcher.select(rule)  # type: ignore[misc]
    return ok[index], used


def newest_alone(trials: list[Trial]) -> Trial | None:
    """The trial of the newest checkpoint alone (weight 1), the baseline every gain is measured against."""
    return next((t for t in trials if t.objective is not None and list(t.weights.values())[-1] == 1.0), None)


def dev_scores(trial: Trial, loop: TrialLoop, session: EvalSession) -> DocScores:
    """The trial's per-document dev scores: in memory (evaluated now, or read back from MLflow when a
    resumed search replayed it), else evaluated again on the resident model."""
    if trial.scores is None:
        log.info("Trial %d's per-document scores are not at hand; evaluating it again", trial.index)
        loop.resident.apply(loop.full_weights(trial))
        _, trial.scores = session.evaluate_with_scores("dev")
    return trial.scores


@dataclass(frozen=True)
class Evidence:
    """The dev gain of the result over the newest checkpoint alone and what it allows."""

    gain: Gain | None  # None: the newest alone was not evaluated (its trial failed)
    decision: str  # registered | keep-newest | not-registered
    reason: str  # one line for the summary

    def may_register(self, require_significant: bool) -> bool:
        return self.gain is not None and (self.significant_gain or not require_significant)

    @property
    def significant_gain(self) -> bool:
        return self.gain is not None and self.gain.significant and self.gain.value > 0


def weigh(gain: Gain | None, newest_name: str, registry_enabled: bool, require_significant: bool) -> Evidence:
    """The decision a gain allows, with the line that explains it."""
    if gain is None:
        return Evidence(
            None, KEEP_NEWEST, f"{newest_name} alone was not evaluated, so no gain can be claimed; nothing registered"
        )
    significant = gain.significant and gain.value > 0
    if not significant and require_significant:
        return Evidence(
            gain,
            KEEP_NEWEST,
            f"no merge is significantly better than {newest_name} (gain {gain.describe()}); nothing registered",
        )
    if not registry_enabled:
        return Evidence(
            gain,
            NOT_REGISTERED,
            f"gain over {newest_name}: {gain.describe()}{'' if significant else ' (within noise)'}; registry disabled",
        )
    note = "" if significant else " — NOT significant, registered because registry.require_significant_gain=false"
    return Evidence(gain, REGISTERED, f"gain over {newest_name}: {gain.describe()}{note}")


def gains_json(gains: Mapping[str, Gain]) -> dict[str, Any]:
    return {k: g.as_json() for k, g in gains.items()}
