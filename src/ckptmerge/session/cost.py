"""The bill of a search: what its trials' dev evaluations cost, and what it saved.

Each trial's child run logs ``eval_seconds``, ``docs_evaluated`` and ``tokens_evaluated``; the search's
``cost`` is their sum over its trials. ``saved_fraction`` compares it with the same search at its full
budget on every document (``1 − documents / (budget × documents of a full trial)``): what stopping a
converged search saved. The re-score of the written merge and the test report are not in the bill: every
setting pays them alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ckptmerge.tracking.names import METRIC_DOCS_EVALUATED as METRIC_DOCS
from ckptmerge.tracking.names import METRIC_EVAL_SECONDS
from ckptmerge.tracking.names import METRIC_TOKENS_EVALUATED as METRIC_TOKENS

__all__ = ["METRIC_DOCS", "METRIC_EVAL_SECONDS", "METRIC_TOKENS", "cost_metrics", "search_cost"]


class Billed(Protocol):
    eval_seconds: float | None
    docs_evaluated: int | None
    tokens_evaluated: int | None


def search_cost(trials: Sequence[Billed], budget: int, full_docs: int | None) -> dict[str, Any]:
    """``{evaluations, documents, tokens, seconds, saved_fraction}`` over ``trials``.

    ``full_docs``: the documents one trial scores on the whole dev set (None: unknown, then no
    ``saved_fraction``). A figure some trial did not record (a run resumed from before the bill existed)
    is summed over the trials that did, and ``incomplete`` says how many did not.
    """
    evaluated = [t for t in trials if t.docs_evaluated is not None or t.eval_seconds is not None]
    documents = sum(int(t.docs_evaluated or 0) for t in trials)
    tokens = sum(int(t.tokens_evaluated or 0) for t in trials)
    seconds = sum(float(t.eval_seconds or 0.0) for t in trials)
    out: dict[str, Any] = {
        "evaluations": len(trials),
        "documents": documents,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "saved_fraction": (round(1.0 - documents / (budget * full_docs), 4) if full_docs and budget > 0 else None),
        # eval.race: trials stopped after part of their documents (their documents are in the sums above)
        "raced_out": sum(1 for t in trials if getattr(t, "raced_out", False)),
    }
    missing = len(trials) - len(evaluated)
    if missing or any(t.tokens_evaluated is None for t in evaluated):
        out["incomplete"] = max(missing, sum(1 for t in trials if t.tokens_evaluated is None))
    return out


def cost_metrics(cost: dict[str, Any]) -> dict[str, float]:
    """The parent run's ``cost.*`` metrics."""
    return {f"cost.{k}": float(v) for k, v in cost.items() if isinstance(v, (int, float)) and v is not None}
