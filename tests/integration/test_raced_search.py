"""Racing on real lm-eval evaluations of the tiny trajectory's merges (eval.race).

On the live session: a merge known to be far worse than the incumbent (the oldest checkpoint against
the newest) is raced out after part of the documents; one known to be better is scored on every
document, and chunk by chunk its scores are exactly those of one full evaluation.

Through the command line: raced-out trials are never the result, the child runs and result.json say
which trials were raced and how many documents each scored, ``cost`` adds up to the child runs, and a
search killed (SIGKILL) during a raced trial re-scores that trial on resume and bills it once.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_main, start_main
from tests.helpers import count_finished_trials, running_trial, sigkill_when

pytestmark = pytest.mark.slow

BUDGET = 6
LIMIT = 32  # documents per dev task; the tiny trajectory has two dev tasks: 64 per full evaluation
TIMEOUT = 1500  # s per command: the shared 2-core machine can be loaded 10x


def _args(work, traj_cache, run_dir):
    return [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        f"search.budget={BUDGET}",
        "search.stop=budget",
        f"eval.limit={LIMIT}",
        "eval.race=true",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "registry.require_significant_gain=false",
        "tracking.log_plots=false",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def session(traj_cache, tiny_trajectory):
    from ckptmerge.config import config_from_dict
    from ckptmerge.session.evaluation import EvalSession
    from ckptmerge.session.setup import resolve_sources

    cfg = config_from_dict(
        {
            "model": {"trajectory": {"preset": "tiny", "cache_dir": str(traj_cache)}},
            "eval": {"limit": LIMIT, "race": {"enabled": True, "chunks": 4, "confidence": 0.99}},
        }
    )
    sources = resolve_sources(cfg.model, cfg.eval, progress=False)
    return EvalSession.with_resident(cfg.eval, 0, cfg.runtime, cfg.merge, sources)


def _full(session, resident, weights):
    from ckptmerge.evaluation.racing import Incumbent

    resident.apply(weights)
    metrics, scores = session.evaluate_with_scores("dev")
    return Incumbent(session.objective(metrics), scores)


def test_a_much_worse_merge_is_raced_out_and_a_better_one_is_scored_on_every_document(session):
    session, resident = session
    n = len(resident.cset)
    newest = [0.0] * (n - 1) + [1.0]
    oldest = [1.0] + [0.0] * (n - 1)
    good, bad = _full(session, resident, newest), _full(session, resident, oldest)
    assert good.objective - bad.objective > 0.1  # the known margin: the oldest is far behind

    resident.apply(oldest)  # worse than the incumbent (the newest) by that margin
    out = session.evaluate_trial(good)
    assert out.raced_out and out.chunks < 4 and out.docs < 2 * LIMIT
    assert out.estimate_se > 0 and abs(out.estimate - bad.objective) < 4 * out.estimate_se + 0.02
    # its partial scores are exactly the full evaluation's on the documents it scored
    for key, s in out.scores.items():
        full = bad.scores[key]
        keep = np.isin(full.doc_ids, s.doc_ids)
        assert np.allclose(full.num[keep], s.num, rtol=1e-5, atol=1e-6), key

    resident.apply(newest)  # better than the incumbent (the oldest): never raced out
    out = session.evaluate_trial(bad)
    assert not out.raced_out and out.docs == 2 * LIMIT and out.chunks == 4
    assert session.objective(out.metrics) == pytest.approx(good.objective, abs=1e-6)
    for key, s in out.scores.items():
        assert np.array_equal(s.doc_ids, good.scores[key].doc_ids), key


def test_the_executor_races_the_trials_it_is_given_an_incumbent_for(session):
    """The trial loop's one evaluation call (session/executor.py, which Ray workers run too) races a trial
    sent with an incumbent and scores one sent without on every document."""
    from ckptmerge.session.executor import InProcessExecutor

    session, resident = session
    n = len(resident.cset)
    newest, oldest = [0.0] * (n - 1) + [1.0], [1.0] + [0.0] * (n - 1)
    good = _full(session, resident, newest)
    executor = InProcessExecutor(resident, session)
    executor.submit("raced", oldest, good)
    executor.submit("full", oldest)
    (k1, raced), (k2, full) = executor.next_done(), executor.next_done()
    assert (k1, k2) == ("raced", "full") and executor.in_flight == 0
    assert raced.error is None and raced.raced_out and raced.docs < 2 * LIMIT
    assert raced.estimate is not None and raced.estimate_se is not None and raced.estimate < good.objective
    assert full.error is None and not full.raced_out and full.docs == 2 * LIMIT and full.estimate is None
    assert raced.estimate == pytest.approx(session.objective(full.metrics), abs=4 * raced.estimate_se + 0.02)


@pytest.fixture(scope="module")
def raced(tmp_path_factory, traj_cache, tiny_trajectory):
    work = tmp_path_factory.mktemp("raced")
    proc = run_main(_args(work, traj_cache, work / "run"), cwd=work, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc, json.loads((work / "run" / "result.json").read_text())


def _children(uri, result):
    client = MlflowClient(uri)
    parent = result["mlflow"]["run_id"]
    runs = client.search_runs([result["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'")
    return client, sorted(runs, key=lambda r: int(r.data.params["trial"]))


def test_raced_trials_are_marked_and_never_the_result(raced):
    work, _, result = raced
    trials = result["trials"]
    out = [t for t in trials if t["raced_out"]]
    assert out, "no trial was raced out: the test shows nothing"
    assert all(t["docs_evaluated"] < 2 * LIMIT for t in out)
    assert all(t["docs_evaluated"] == 2 * LIMIT for t in trials if not t["raced_out"])
    assert trials[0]["lambda"] == 1.0 and not trials[0]["raced_out"]  # the newest alone first, never raced
    chosen = [t for t in trials if t["weights"] == result["weights"]]
    assert len(chosen) == 1 and not chosen[0]["raced_out"]
    _, children = _children(f"sqlite:///{work / 'mlflow.db'}", result)
    assert [c.data.metrics["raced_out"] for c in children] == [float(t["raced_out"]) for t in trials]
    assert [c.data.metrics["docs_evaluated"] for c in children] == [t["docs_evaluated"] for t in trials]


def test_cost_adds_up_to_the_child_runs_with_raced_trials(raced):
    work, proc, result = raced
    _, children = _children(f"sqlite:///{work / 'mlflow.db'}", result)
    cost = result["cost"]
    assert cost["evaluations"] == len(children) == BUDGET
    docs = [c.data.metrics["docs_evaluated"] for c in children]
    assert cost["documents"] == sum(docs) < BUDGET * 2 * LIMIT
    assert cost["tokens"] == sum(c.data.metrics["tokens_evaluated"] for c in children) > 0
    assert cost["seconds"] == pytest.approx(sum(c.data.metrics["eval_seconds"] for c in children), abs=0.01)
    assert cost["saved_fraction"] == pytest.approx(1 - sum(docs) / (BUDGET * 2 * LIMIT), abs=1e-4)


def test_killed_during_a_raced_trial_the_same_command_rescores_it_once(tmp_path, traj_cache, raced):
    _, _, ref = raced
    target = next(i for i, t in enumerate(ref["trials"]) if t["raced_out"])  # the first raced-out trial
    p = start_main(_args(tmp_path, traj_cache, tmp_path / "run1"), cwd=tmp_path)
    db = tmp_path / "mlflow.db"

    def inside_the_raced_trial() -> bool:
        # at once: on an idle machine a raced trial's chunks take well under a second, so a wait here
        # could let it finish (its child run is opened just before its evaluation starts)
        running = running_trial(db)
        return count_finished_trials(db) == target and running is not None and running.index == target

    sigkill_when(p, inside_the_raced_trial, TIMEOUT)
    assert p.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    assert count_finished_trials(db) == target

    proc = run_main(_args(tmp_path, traj_cache, tmp_path / "run2"), cwd=tmp_path, timeout=TIMEOUT)  # same command
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run2" / "result.json").read_text())
    assert "Resumed" in proc.stdout + proc.stderr
    _, children = _children(f"sqlite:///{db}", res)
    killed = [c for c in children if c.data.tags.get("ckptmerge.trial_status") == "interrupted"]
    assert [int(c.data.params["trial"]) for c in killed] == [target]  # the raced trial, redone
    assert len(res["trials"]) == BUDGET
    assert [(t["lambda"], t["raced_out"], t["docs_evaluated"]) for t in res["trials"]] == [
        (t["lambda"], t["raced_out"], t["docs_evaluated"]) for t in ref["trials"]
    ]
    assert res["cost"]["documents"] == ref["cost"]["documents"]  # the killed attempt is not billed twice
    assert res["lambda"] == ref["lambda"]


def test_a_ray_worker_races_as_the_driver_process_does(tmp_path, traj_cache, raced):
    """runtime=ray with one worker makes the serial search's proposals; the worker, sent the incumbent
    with each trial, races exactly the trials the in-process search raced, on the same documents."""
    _, _, ref = raced
    args = [
        *_args(tmp_path, traj_cache, tmp_path / "run"),
        "runtime=ray",
        "runtime.workers=1",
        "registry.enabled=false",
    ]
    proc = run_main(args, cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["runtime"]["backend"] == "ray" and res["runtime"]["workers"] == 1
    assert any(t["raced_out"] for t in ref["trials"]), "the reference raced nothing: the test shows nothing"
    assert [(t["raced_out"], t["docs_evaluated"]) for t in res["trials"]] == [
        (t["raced_out"], t["docs_evaluated"]) for t in ref["trials"]
    ]
    assert [t["lambda"] for t in res["trials"]] == pytest.approx([t["lambda"] for t in ref["trials"]], abs=1e-4)
    assert res["cost"]["documents"] == ref["cost"]["documents"]
