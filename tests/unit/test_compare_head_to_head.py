"""Which method of a comparison won: the winner against the runner-up and the best baseline, paired."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ckptmerge.evaluation.doc_scores import DocScores, MetricScores
from ckptmerge.evaluation.objective import Objective, ObjectiveTerm
from ckptmerge.evaluation.uncertainty import Bootstrap
from ckptmerge.session.head_to_head import head_to_heads

ACC = Objective((ObjectiveTerm("dev", "acc", 1.0, True),))
HIB = {"test/acc": True}
BASELINES = {"newest", "greedy"}


@dataclass
class Row:
    method: str
    objective: float
    dev_scores: DocScores | None
    test_scores: DocScores | None


def _scores(task: str, values: np.ndarray) -> DocScores:
    return {f"{task}/acc": MetricScores("mean", np.arange(values.size), values.astype(float), np.ones(values.size))}


def _row(method: str, dev: np.ndarray, test: np.ndarray) -> Row:
    return Row(method, float(dev.mean()), _scores("dev", dev), _scores("test", test))


def _flip(base: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``base`` with ``k`` wrong answers made right: a model better by k documents, on the same documents."""
    out = base.copy()
    out[rng.choice(np.flatnonzero(base == 0), size=k, replace=False)] = 1
    return out


def test_a_clear_winner_is_significant_and_a_hair_is_within_noise():
    rng = np.random.default_rng(0)
    n = 400
    newest = (rng.uniform(size=n) < 0.5).astype(int)
    greedy = _flip(newest, 20, rng)  # +5 points
    bo_window = _flip(greedy, 60, rng)  # +15 points over greedy
    bo = _flip(bo_window, 1, rng)  # one document better than bo_window
    rows = [_row("newest", newest, newest), _row("greedy", greedy, greedy)]
    rows += [_row("bo_window", bo_window, bo_window), _row("bo", bo, bo)]
    head_to_head_results = head_to_heads(rows, Bootstrap(1000, 0.95, seed=0), ACC, HIB, BASELINES)
    assert [(v.winner, v.other, v.role) for v in head_to_head_results] == [
        ("bo", "bo_window", "runner-up"),
        ("bo", "greedy", "best baseline"),
    ]
    runner_up, baseline = head_to_head_results
    assert runner_up.dev.value == pytest.approx(1 / n) and not runner_up.dev.significant  # one document in 400: noise
    assert baseline.dev.value == pytest.approx(61 / n) and baseline.dev.significant and baseline.dev.ci_low > 0
    assert baseline.test["test/acc"].significant and baseline.test["test/acc"].value == pytest.approx(61 / n)
    assert "within noise" in runner_up.describe() and "bo against the best baseline, greedy" in baseline.describe()
    assert baseline.as_json()["dev_gain"]["significant"] is True


def test_a_baseline_that_wins_is_tested_against_the_runner_up_only():
    rng = np.random.default_rng(1)
    newest = (rng.uniform(size=200) < 0.5).astype(int)
    bo = _flip(newest, 5, rng)
    greedy = _flip(bo, 5, rng)
    rows = [_row("newest", newest, newest), _row("bo", bo, bo), _row("greedy", greedy, greedy)]
    head_to_head_results = head_to_heads(rows, Bootstrap(500, 0.95, seed=0), ACC, HIB, BASELINES)
    assert [(v.winner, v.other, v.role) for v in head_to_head_results] == [("greedy", "bo", "runner-up")]


def test_when_the_runner_up_is_the_best_baseline_it_is_tested_once():
    rng = np.random.default_rng(2)
    newest = (rng.uniform(size=200) < 0.5).astype(int)
    greedy = _flip(newest, 5, rng)
    bo = _flip(greedy, 5, rng)
    rows = [_row("newest", newest, newest), _row("greedy", greedy, greedy), _row("bo", bo, bo)]
    head_to_head_results = head_to_heads(rows, Bootstrap(500, 0.95, seed=0), ACC, HIB, BASELINES)
    assert [(v.other, v.role) for v in head_to_head_results] == [("greedy", "runner-up and best baseline")]


def test_a_single_method_or_an_unscored_winner_gives_no_head_to_head():
    rng = np.random.default_rng(3)
    newest = (rng.uniform(size=50) < 0.5).astype(int)
    lone = [_row("newest", newest, newest)]
    assert head_to_heads(lone, Bootstrap(100, 0.95, seed=0), ACC, HIB, BASELINES) == []
    # fisher tops the table (compare's best_method would name it) but has nothing to pair: the head-to-head must
    # not quietly crown bo, the best of the rest, instead
    unscored = Row("fisher", 0.9, None, None)
    rows = [*lone, unscored, _row("bo", _flip(newest, 2, rng), newest)]
    assert head_to_heads(rows, Bootstrap(100, 0.95, seed=0), ACC, HIB, BASELINES) == []


def test_an_unscored_runner_up_is_left_out_not_replaced_by_the_next_method():
    rng = np.random.default_rng(4)
    newest = (rng.uniform(size=50) < 0.5).astype(int)
    bo = _flip(newest, 6, rng)
    unscored = Row("fisher", float(bo.mean()) - 0.001, None, None)  # just below bo: the true runner-up
    rows = [_row("newest", newest, newest), unscored, _row("bo", bo, newest)]
    # fisher cannot be paired; newest, below it, is tested as what it is (the best baseline), not as the
    # runner-up
    head_to_head_results = head_to_heads(rows, Bootstrap(100, 0.95, seed=0), ACC, HIB, BASELINES)
    assert [(v.other, v.role) for v in head_to_head_results] == [("newest", "best baseline")]
    rows.append(_row("greedy", _flip(newest, 1, rng), newest))  # the best baseline (fisher is not one here)
    head_to_head_results = head_to_heads(rows, Bootstrap(100, 0.95, seed=0), ACC, HIB, BASELINES)
    assert [(v.winner, v.other, v.role) for v in head_to_head_results] == [("bo", "greedy", "best baseline")]
    # the same runner-up counted as a baseline: it is both roles, and still cannot be paired
    head_to_head_results = head_to_heads(rows, Bootstrap(100, 0.95, seed=0), ACC, HIB, BASELINES | {"fisher"})
    assert head_to_head_results == []
