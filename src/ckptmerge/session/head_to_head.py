"""Which method of a comparison won, and how sure that is.

The table ranks methods by their dev objective, and each row's interval is against the newest
checkpoint. That does not say whether the winner beats the method just below it: two rows whose
intervals over the newest overlap can still differ reliably, because both were scored on the same
documents. So the winner is tested, paired on the same documents, against the runner-up and (when the
winner is not itself a baseline) against the best baseline, on the dev objective and on every test
metric. "X won" then comes with its interval, and with "within noise" when the documents cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ckptmerge.evaluation.doc_scores import DocScores
from ckptmerge.evaluation.objective import Objective
from ckptmerge.evaluation.uncertainty import Bootstrap, Gain, gains_by_metric


class Scored(Protocol):
    """What a comparison keeps of each method (``compare.MethodResult``)."""

    method: str
    objective: float
    dev_scores: DocScores | None
    test_scores: DocScores | None


@dataclass
class HeadToHead:
    """The winner against one other method: ``dev`` is winner minus other on the dev objective (higher is
    better), ``test`` each test metric oriented so that positive means the winner is better."""

    winner: str
    other: str
    role: str  # "runner-up" or "best baseline"
    dev: Gain
    test: dict[str, Gain]

    def as_json(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "other": self.other,
            "role": self.role,
            "dev_gain": self.dev.as_json(),
            "test_gains": {k: g.as_json() for k, g in self.test.items()},
        }

    def describe(self) -> str:
        from ckptmerge.report import gain_text

        line = f"{self.winner} against the {self.role}, {self.other}: dev {gain_text(self.dev.as_json())}"
        if self.test:
            tests = "; ".join(f"{k} {gain_text(g.as_json(), compact=True).rstrip()}" for k, g in self.test.items())
            line += f"; test (+: {self.winner} better, * significant): {tests}"
        return line


def head_to_heads(
    results: Sequence[Scored],
    bootstrap: Bootstrap,
    objective: Objective,
    higher_is_better: Mapping[str, bool],
    baselines: set[str],
) -> list[HeadToHead]:
    """The best method by dev objective against the runner-up and, if the best is not a baseline, against
    the best baseline (once, when that is the runner-up).

    Every method with a finite objective is ranked, as compare's ``best_method`` ranks them, so the
    head-to-head names the same winner and the true runner-up. A pair can only be tested when both sides have
    per-document scores: when the winner has none there is no head-to-head at all, and a runner-up or best
    baseline without them is left out rather than replaced by the next method down, which would be a
    different claim under the same name."""
    ranked = sorted((r for r in results if math.isfinite(r.objective)), key=lambda r: r.objective, reverse=True)
    if len(ranked) < 2 or ranked[0].dev_scores is None:
        return []
    best, rest = ranked[0], ranked[1:]
    others = [(rest[0], "runner-up")]
    if best.method not in baselines:
        baseline = next((r for r in rest if r.method in baselines), None)
        if baseline is not None and baseline is not rest[0]:
            others.append((baseline, "best baseline"))
        elif baseline is rest[0]:
            others = [(rest[0], "runner-up and best baseline")]
    others = [(other, role) for other, role in others if other.dev_scores is not None]
    out = []
    for other, role in others:
        assert best.dev_scores is not None and other.dev_scores is not None
        dev = bootstrap.objective_gain(objective, best.dev_scores, other.dev_scores)
        test = (
            gains_by_metric(bootstrap, higher_is_better, best.test_scores, other.test_scores)
            if best.test_scores is not None and other.test_scores is not None
            else {}
        )
        out.append(HeadToHead(best.method, other.method, role, dev, test))
    return out
