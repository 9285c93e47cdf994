"""The bill: a search's cost is the sum of its trials' figures; saved_fraction compares it with the whole
budget on every document; compare.md carries a documents column."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ckptmerge.actions.compare import MethodResult, _tables
from ckptmerge.report import cost_line
from ckptmerge.session.cost import cost_metrics, search_cost


@dataclass
class T:
    eval_seconds: float | None
    docs_evaluated: int | None
    tokens_evaluated: int | None


def test_cost_sums_the_trials_and_compares_with_the_full_budget():
    trials = [T(1.5, 100, 2000), T(2.0, 100, 2100), T(0.5, 40, 800)]  # the last one scored 40 of 100 documents
    cost = search_cost(trials, budget=10, full_docs=100)
    assert cost == {
        "evaluations": 3,
        "documents": 240,
        "tokens": 4900,
        "seconds": 4.0,
        "saved_fraction": pytest.approx(1 - 240 / 1000),
        "raced_out": 0,
    }
    assert cost_metrics(cost)["cost.documents"] == 240.0
    line = cost_line(cost)
    assert "3 evaluations, 240 documents, 4,900 tokens, 4.0 s of evaluation; saved 76%" in line


def test_a_trial_without_a_record_is_said_not_guessed():
    cost = search_cost([T(1.0, 100, 2000), T(None, None, None)], budget=2, full_docs=100)
    assert cost["documents"] == 100 and cost["incomplete"] == 1
    assert "(1 trials without a record)" in cost_line(cost)
    assert search_cost([T(1.0, 100, 2000)], budget=2, full_docs=None)["saved_fraction"] is None


def test_compare_md_has_a_documents_column():
    rows = [
        MethodResult("newest", -2.0, 1, 1.0, None, documents=50),
        MethodResult("bo", -1.9, 6, 9.0, None, documents=300),
    ]
    md, csv_text, header, table = _tables(rows, -2.0, "-bpb", 0.95)
    assert header[-1] == "documents" and [r[-1] for r in table] == ["50", "300"]
    assert "| documents |" in md and csv_text.splitlines()[0].endswith(",documents")


def test_raced_out_trials_are_counted_and_said_in_the_line():
    from dataclasses import dataclass

    @dataclass
    class R:
        eval_seconds: float
        docs_evaluated: int
        tokens_evaluated: int
        raced_out: bool

    cost = search_cost([R(2.0, 100, 2000, False), R(0.5, 25, 500, True)], budget=2, full_docs=100)
    assert cost["raced_out"] == 1 and cost["documents"] == 125
    assert "2 evaluations (1 raced out), 125 documents" in cost_line(cost)
