"""Racing's statistics (evaluation/racing.py) on synthetic per-document scores with a known shift.

A trial worse than the incumbent by a known margin is raced out early, with an estimate near the truth;
one that is better (or equal) is scored on every document; the chunks cover every document once, the
same for every trial; a raced-out observation is never the searcher's result.
"""

from __future__ import annotations

import numpy as np
import pytest

from ckptmerge.config import SearchConfig
from ckptmerge.evaluation.doc_scores import MetricScores
from ckptmerge.evaluation.objective import Objective, ObjectiveTerm
from ckptmerge.evaluation.racing import Incumbent, compare, plan_chunks, race, replayed_chunk, subset
from ckptmerge.evaluation.uncertainty import Bootstrap
from ckptmerge.search.searchers import make_searcher

N = 400  # documents per task
ACC = Objective((ObjectiveTerm("qa", "acc", 1.0, True),))
TWO = Objective((ObjectiveTerm("qa", "acc", 1.0, True), ObjectiveTerm("text", "bits_per_byte", 2.0, False)))


def _scores(values: np.ndarray, bpb: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, MetricScores]:
    ids = np.arange(N)
    out = {"qa/acc": MetricScores("mean", ids, values.astype(float), np.ones(N))}
    if bpb is not None:  # (log-likelihood, bytes) per document: bits per byte = -Σll / Σbytes / ln 2
        out["text/bits_per_byte"] = MetricScores("bits_per_byte", ids, bpb[0], bpb[1])
    return out


def _pair(seed: int, shift: float) -> tuple[dict, dict]:
    """The incumbent's and a trial's accuracies on the same documents: documents differ in difficulty
    (shared), the two models differ by ``shift`` plus per-document noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.6, 0.2, N)
    inc = difficulty + rng.normal(0, 0.3, N)
    trial = difficulty + shift + rng.normal(0, 0.3, N)
    return _scores(inc), _scores(trial)


def _race(inc: dict, trial: dict, objective: Objective = ACC, chunks: int = 4, seed: int = 0):  # type: ignore[no-untyped-def]
    boot = Bootstrap(1000, 0.95, seed)
    docs = {k.split("/")[0]: list(range(N)) for k in inc}
    plan = plan_chunks(docs, chunks, seed)
    incumbent = Incumbent(objective({k: s.value() for k, s in inc.items()}), inc)
    return race(replayed_chunk(trial), plan, incumbent, boot, objective, 0.99)


def test_the_plan_covers_every_document_once_with_every_task_in_every_chunk():
    docs = {"a": list(range(100, 110)), "b": [3, 8, 9, 20, 41, 42, 77]}  # lm-eval doc ids (a sample of each)
    plan = plan_chunks(docs, 4, seed=3)
    assert len(plan) == 4
    for task, ids in docs.items():
        got = sorted(i for chunk in plan.chunks for i in chunk[task])
        assert got == ids
        assert all(chunk[task] for chunk in plan.chunks)
    assert plan == plan_chunks(docs, 4, seed=3)  # the same for every trial of a search
    assert plan != plan_chunks(docs, 4, seed=4)
    assert len(plan_chunks({"a": docs["a"], "b": [1, 2]}, 4, seed=0)) == 2  # every chunk has each task


def test_a_trial_worse_by_a_known_margin_is_raced_out_early_with_an_honest_estimate():
    # the paired s.e. of the difference on all 400 documents is 0.3·√2/√400 ≈ 0.021; 0.15 is ~7 of them,
    # ~3.5 on the first chunk's 100 documents
    for seed in range(10):
        inc, trial = _pair(seed, shift=-0.15)
        out = _race(inc, trial, seed=seed)
        assert out.raced_out, seed
        assert out.chunks < 4 and out.docs == 100 * out.chunks
        true = ACC({k: s.value() for k, s in trial.items()})
        assert abs(out.estimate - true) < 4 * out.estimate_se, (seed, out.estimate, true, out.estimate_se)
        assert 0.02 < out.estimate_se < 0.1  # the difference's error on 100-300 documents


@pytest.mark.parametrize("shift", [0.05, 0.0])
def test_a_trial_that_is_better_or_equal_is_scored_on_every_document(shift):
    raced = 0
    for seed in range(40):
        inc, trial = _pair(seed, shift=shift)
        out = _race(inc, trial, seed=seed)
        raced += out.raced_out
        if not out.raced_out:
            assert out.docs == N and out.chunks == 4 and out.estimate is None
            np.testing.assert_allclose(out.metrics["qa/acc"], trial["qa/acc"].value())
            assert np.array_equal(out.scores["qa/acc"].doc_ids, np.arange(N))
    if shift > 0:
        assert raced == 0
    else:  # equal models: three one-sided checks at 1% each
        assert raced <= 2, raced


def test_a_multi_task_objective_races_on_the_weighted_objective_with_each_aggregation():
    rng = np.random.default_rng(5)
    nbytes = rng.integers(50, 500, N).astype(float)
    ll = -nbytes * rng.uniform(1.0, 2.0, N)
    acc = rng.normal(0.6, 0.2, N)
    inc = _scores(acc, (ll, nbytes))
    # same accuracy, 5% more loss per byte: worse only on the bits-per-byte task
    trial = _scores(acc + rng.normal(0, 0.01, N), (ll * 1.05, nbytes))
    out = _race(inc, trial, TWO)
    assert out.raced_out and out.chunks == 1
    assert {k: s.n for k, s in out.scores.items()} == {"qa/acc": 100, "text/bits_per_byte": 100}
    # the estimate moves the incumbent by the weighted difference of ratio-of-sums bits per byte
    part = subset(inc, {"qa": out.scores["qa/acc"].doc_ids, "text": out.scores["text/bits_per_byte"].doc_ids})
    diff = TWO({k: s.value() for k, s in out.scores.items()}) - TWO({k: s.value() for k, s in part.items()})
    assert out.estimate == pytest.approx(TWO({k: s.value() for k, s in inc.items()}) + diff)
    assert diff < 0


def test_compare_refuses_an_incumbent_scored_on_other_documents():
    inc, trial = _pair(0, 0.0)
    other = {"qa/acc": MetricScores("mean", np.arange(N) + N, inc["qa/acc"].num, np.ones(N))}
    with pytest.raises(ValueError, match="not scored on the documents"):
        compare(Bootstrap(100, 0.95, 0), ACC, subset(trial, {"qa": np.arange(50)}), other)


def test_a_raced_out_observation_is_never_selected_nor_the_incumbent():
    searcher = make_searcher(SearchConfig(budget=6, seed=0))
    for x, y, eligible in [((0.0,), -2.0, True), ((1.0,), -1.9, True), ((0.5,), -1.5, False)]:
        searcher.ask()
        searcher.tell(x, y, 0.01, eligible=eligible)
    for rule in ("posterior_mean", "observed"):
        index, _ = searcher.select(rule)
        assert index == 1, rule


def test_under_racing_the_newest_alone_is_scored_first_among_the_same_initial_points():
    from ckptmerge.search.space import PairSpace

    plain = make_searcher(SearchConfig(budget=6, seed=0), PairSpace(2, 0.0))
    raced = make_searcher(SearchConfig(budget=6, seed=0), PairSpace(2, 0.0))
    raced.newest_first()
    first = [plain.ask().x for _ in range(2)]
    assert first == [(0.0,), (1.0,)]  # the paper's order: λ=α, then the newest alone
    assert [raced.ask().x for _ in range(2)] == [(1.0,), (0.0,)]
