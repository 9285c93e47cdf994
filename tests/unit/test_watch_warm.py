"""watch.warm_start: the previous pair's chosen point as one more initial proposal of the next pair's
search, read from a real sqlite MLflow store (so a restarted watcher proposes the same points)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptmerge.actions.watch import WatchRun
from ckptmerge.config import config_from_dict
from ckptmerge.search.searchers import Proposal, make_searcher
from ckptmerge.search.space import PairSpace, make_space
from ckptmerge.session.setup import search_space
from ckptmerge.tracking import names
from ckptmerge.tracking.mlflow_run import SearchTracker
from ckptmerge.watch import ledger, warm
from ckptmerge.watch.folders import StepFolder

PAPER = {"name": "pair", "last": 2, "warm_start": False}  # conf/search/space/pair.yaml: λ=α, then λ=1


def _result(lam: float, space: str = "pair", coordinate: str = "lambda") -> dict:
    """What a finished pair search writes as result.json (the part the warm start reads)."""
    return {"lambda": lam, "space": {"name": space, "checkpoints": 2, "point": {coordinate: lam}}}


def _asked(searcher, n: int) -> list[tuple[tuple[float, ...], str]]:
    out = []
    for _ in range(n):
        p = searcher.ask()
        searcher.tell(p.x, -abs(p.x[0] - 0.6))
        out.append((p.x, p.source))
    return out


def test_the_previous_point_goes_first_with_its_label_and_counts_in_the_budget():
    cfg = config_from_dict({"search": {"budget": 5, "space": PAPER}})
    space, configured = search_space(cfg.search, cfg.compare, 2)
    point, initial = warm.initial_for(space, configured, _result(0.62), cfg.search.min_distance)
    assert point == (0.62,)
    warm_first = [Proposal((0.62,), "warm:previous-pair"), Proposal((0.0,), "initial"), Proposal((1.0,), "initial")]
    assert initial == warm_first
    asked = _asked(make_searcher(cfg.search, space, initial), 5)
    assert [a[1] for a in asked[:3]] == ["warm:previous-pair", "initial", "initial"]
    assert [a[0] for a in asked[:3]] == [(0.62,), (0.0,), (1.0,)]
    assert len(asked) == cfg.search.budget  # then the GP: one budget, the extra point included


def test_a_point_that_is_already_an_initial_point_is_not_added_twice():
    space = PairSpace(2, 0.0)
    for lam in (1.0, 0.0, 1.0 - 1e-4):  # the newest alone, the older alone, within min_distance of λ=1
        point, initial = warm.initial_for(space, None, _result(lam), 0.001)
        assert point == (lam,)
        assert initial == [Proposal((0.0,), "initial"), Proposal((1.0,), "initial")], lam


def test_no_point_leaves_the_configured_initial_points_as_they_were():
    space = PairSpace(2, 0.0)
    assert warm.initial_for(space, None, None, 0.001) == (None, None)
    configured = [Proposal((1.0,), "warm:newest"), Proposal((0.5,), "warm:uniform")]
    assert warm.initial_for(space, configured, None, 0.001) == (None, configured)
    # a result from another space, or outside this box (another search.alpha), is not a point of this one
    assert warm.initial_for(space, None, _result(0.3, "ema", "beta"), 0.001) == (None, None)
    assert warm.initial_for(PairSpace(2, 0.5), None, _result(0.3), 0.001) == (None, None)
    assert warm.previous_point({"lambda": 0.3}, space) is None  # a result without its point
    assert warm.previous_point({"space": "pair"}, space) is None


def test_placements():
    space = PairSpace(2, 0.2)
    w = Proposal((0.7,), warm.LABEL)
    assert warm.with_previous(space, None, (0.7,), 0.001, "last") == [
        Proposal((0.2,), "initial"),
        Proposal((1.0,), "initial"),
        w,
    ]
    assert warm.with_previous(space, None, (0.7,), 0.001, "replace_first") == [w, Proposal((1.0,), "initial")]
    # a configured warm start's baselines are all kept (the first is the newest alone, every gain's reference)
    configured = [Proposal((1.0,), "warm:newest"), Proposal((0.5,), "warm:uniform")]
    assert warm.with_previous(space, configured, (0.7,), 0.001, "replace_first") == [w, *configured]
    with pytest.raises(ValueError, match="place must be one of"):
        warm.with_previous(space, None, (0.7,), 0.001, "middle")


def test_a_family_space_takes_the_point_in_its_own_coordinate():
    space = make_space("ema", 2)
    ((lo, hi),) = space.bounds()
    mid = (lo + hi) / 2
    point, initial = warm.initial_for(space, None, _result(mid, "ema", space.coordinates[0]), 0.001)
    assert point == (mid,) and initial is not None and initial[0] == Proposal((mid,), warm.LABEL)


# -- the watcher: which finished search warm-starts a pair, from MLflow -------------------------------


def _watch_cfg(tmp_path: Path, **watch):
    return config_from_dict(
        {
            "action": "watch",
            "model": {"name": "local", "source": "local"},
            "watch": {"dir": str(tmp_path / "ckpts"), **watch},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "search": {"space": PAPER},
        }
    )


def _watcher(tmp_path: Path, **watch) -> WatchRun:
    """A watcher as WatchRun.run() sets it up, before its loop (a restart is a new one on the same store)."""
    w = WatchRun(_watch_cfg(tmp_path, **watch), tmp_path / "run", tmp_path)
    w.tracker = SearchTracker(w.cfg.tracking, tmp_path)
    w.key = ledger.watch_key(w.cfg.to_dict(), w.dir)
    return w


def _finished_search(w: WatchRun, older: str, newer: str, steps: tuple[int, int], result: dict, status="FINISHED"):
    client = w.tracker.client
    tags = {
        names.TAG_KIND: "search",
        names.TAG_CHECKPOINTS: f"{older},{newer}",
        **ledger.search_tags("watch-run", w.key, w.dir, steps),
    }
    run_id = client.create_run(w.tracker.experiment_id, tags=tags).info.run_id
    client.log_text(run_id, json.dumps(result), names.ARTIFACT_RESULT)
    client.set_terminated(run_id, status)
    return run_id


def test_the_pair_after_a_finished_one_starts_from_its_point_and_a_restart_gets_the_same(tmp_path):
    (tmp_path / "ckpts").mkdir()
    w = _watcher(tmp_path)
    step = lambda n: StepFolder(n, w.dir / f"step{n}")  # noqa: E731
    assert w._warm_from(step(10)) is None  # the first pair: nothing before it
    first = _finished_search(w, "step10", "step20", (10, 20), _result(0.62))
    prev = w._warm_from(step(20))
    assert prev is not None and prev.run_id == first and prev.names == ("step10", "step20")
    space, configured = search_space(w.cfg.search, w.cfg.compare, 2)
    point, initial = warm.initial_for(space, configured, prev.result, w.cfg.search.min_distance)
    assert point == (0.62,) and initial is not None and initial[0] == Proposal((0.62,), "warm:previous-pair")

    # a pair whose previous pair failed starts from the newest finished one before it; a KILLED one is not used
    _finished_search(w, "step20", "step30", (20, 30), _result(0.4), status="KILLED")
    assert w._warm_from(step(30)).run_id == first  # type: ignore[union-attr]
    second = _finished_search(w, "step20", "step30", (20, 30), _result(0.4))
    assert w._warm_from(step(30)).run_id == second  # type: ignore[union-attr]
    assert w._warm_from(step(20)).run_id == first  # type: ignore[union-attr]  # never a later pair's point

    restarted = _watcher(tmp_path)  # a new process: what it knows comes from the store
    again = restarted._warm_from(step(30))
    assert again is not None and again.run_id == second
    assert warm.initial_for(space, configured, again.result, 0.001) == (
        (0.4,),
        [Proposal((0.4,), "warm:previous-pair"), Proposal((0.0,), "initial"), Proposal((1.0,), "initial")],
    )

    off = _watcher(tmp_path, warm_start=False)
    assert off.key == w.key  # the setting does not make finished pairs undone
    assert off._warm_from(step(30)) is None
