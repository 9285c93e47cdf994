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
