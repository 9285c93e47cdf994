"""steps_gained: the merged objective read off the trajectory's own objective-versus-step curve."""

from __future__ import annotations

import pytest

from ckptmerge.watch.timeline import isotonic, steps_gained

CURVE = [(100, -3.0), (200, -2.5), (300, -2.3)]


def test_isotonic_pools_a_noisy_dip():
    assert isotonic([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert isotonic([1.0, 2.0]) == [1.0, 2.0]


def test_a_gain_is_priced_with_the_last_intervals_slope():
    # last interval: +0.2 per 100 steps; +0.1 above the newest is 50 steps ahead
    assert steps_gained(CURVE, 300, -2.2).value == pytest.approx(50.0)
    assert steps_gained(CURVE, 300, -2.3).value == pytest.approx(0.0)


def test_a_loss_is_negative_steps_read_inside_the_curve():
    assert steps_gained(CURVE, 300, -2.4).value == pytest.approx(-50.0)
    assert steps_gained(CURVE, 300, -2.75).value == pytest.approx(-150.0)


def test_the_curve_at_a_step_knows_only_the_past():
    assert steps_gained(CURVE, 200, -2.25).value == pytest.approx(50.0)  # slope of (100, 200) only


def test_undefined_cases_say_why():
    assert steps_gained(CURVE, 300, -1.0).value is None  # more than one interval ahead
    assert "more than one checkpoint interval" in steps_gained(CURVE, 300, -1.0).reason
    assert "below the first" in steps_gained(CURVE, 300, -4.0).reason
    assert "fewer than two" in steps_gained([(100, -3.0)], 100, -2.9).reason
    flat = [(100, -2.0), (200, -2.1)]  # the newest scored worse: pooled flat, no slope to price with
    assert "did not improve" in steps_gained(flat, 200, -1.9).reason


def _done(steps, older, newest, merged, ci=(0.05, 0.15)):
    from ckptmerge.watch.ledger import DonePair

    gain = {"value": merged - newest, "ci_low": ci[0], "ci_high": ci[1], "p_value": 0.01, "significant": ci[0] > 0}
    result = {
        "baseline_objective": newest,
        "objective": merged,
        "lambda": 0.7,
        "gain": gain,
        "decision": "registered",
        "registered_model": None,
        "trials": [{"lambda": 0.0, "objective": older}, {"lambda": 1.0, "objective": newest}],
    }
    return DonePair((f"step{steps[0]}", f"step{steps[1]}"), steps, f"run{steps[1]}", result)


def test_timeline_rows_price_the_gain_and_its_interval_in_steps():
    from ckptmerge.watch.timeline import row_metrics, timeline_rows

    # the curve: 100 → -3.0 (the older alone in the first search), 200 → -2.5, 300 → -2.3
    rows = timeline_rows([_done((100, 200), -3.0, -2.5, -2.45), _done((200, 300), -2.5, -2.3, -2.2)])
    assert [r["step"] for r in rows] == [200, 300]
    last = rows[1]
    assert last["steps_gained"] == pytest.approx(50.0)  # +0.1 at +0.2 per 100 steps
    assert last["steps_gained_ci"] == [pytest.approx(25.0), pytest.approx(75.0)]  # +0.05, +0.15
    assert rows[0]["steps_gained"] == pytest.approx(10.0)  # +0.05 at +0.5 per 100 steps
    m = row_metrics(last)
    assert m["gain"] == pytest.approx(0.1) and m["gain.ci_low"] == 0.05 and m["lambda"] == 0.7
    assert m["newest_objective"] == -2.3 and m["merged_objective"] == -2.2
    assert m["steps_gained.ci_high"] == pytest.approx(75.0)


def test_an_interval_that_could_not_be_computed_is_left_out():
    from ckptmerge.watch.timeline import row_metrics, timeline_rows

    nan = float("nan")
    row = timeline_rows([_done((100, 200), -3.0, -2.5, -2.45, ci=(nan, nan))])[0]
    assert row["steps_gained_ci"] == [None, None]
    m = row_metrics(row)
    assert "gain.ci_low" not in m and "steps_gained.ci_low" not in m and m["steps_gained"] == pytest.approx(10.0)


def test_a_lower_step_that_arrives_later_replaces_the_non_adjacent_pair_in_the_timeline():
    """Watch step500 and step700, then step600 arrives: one row per step, each from its adjacent pair."""
    from ckptmerge.watch.ledger import DonePair
    from ckptmerge.watch.timeline import timeline_rows

    def pair(a, b, merged):
        return DonePair(
            (f"step{a}", f"step{b}"),
            (a, b),
            f"run-{a}-{b}",
            {"objective": merged, "baseline_objective": merged - 0.01, "trials": []},
        )

    rows = timeline_rows([pair(500, 700, -2.0), pair(500, 600, -2.2), pair(600, 700, -1.9)])
    assert [r["step"] for r in rows] == [600, 700]
    assert rows[1]["checkpoints"] == ["step600", "step700"] and rows[1]["merged_objective"] == -1.9
