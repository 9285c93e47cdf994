"""The promotion rule on given intervals: lower bound above the margin, no significant regression
(unless allowed); every refusal says why. (End to end, with real models: tests/integration/test_promotion_gate.py.)"""

from __future__ import annotations

import math

import pytest

from ckptmerge.actions.promote import KEPT, PROMOTED, gate
from ckptmerge.config import config_from_dict
from ckptmerge.errors import ConfigError
from ckptmerge.evaluation.uncertainty import Gain

BPB, OOD = "t_bpb/bits_per_byte", "t_ood/bits_per_byte"


def g(value: float, lo: float, hi: float, p: float = 0.5) -> Gain:
    return Gain(value, lo, hi, p, lo > 0 or hi < 0, 0.95)


def test_a_gain_within_noise_keeps_the_champion_even_above_the_margin():
    # The point gain beats the margin 0: the old rule (score difference >= margin) promoted this.
    v = gate(g(0.0031, -0.012, 0.018, 0.62), {BPB: g(0.0031, -0.012, 0.018)}, 0.0, False, "2", "1")
    assert v.decision == KEPT and v.regressions == ()
    assert (
        v.reason == "kept champion v1: candidate v2 gains +0.00310, 95% CI [-0.01200, +0.01800], p=0.62: within noise"
    )


def test_the_lower_bound_must_be_strictly_above_the_margin():
    assert gate(g(0.05, 0.02, 0.08, 0.002), {}, 0.02, False, "2", "1").decision == KEPT
    v = gate(g(0.05, 0.01, 0.08, 0.002), {}, 0.02, False, "2", "1")
    assert v.decision == KEPT and v.reason.endswith("significant, but the lower bound does not clear the margin 0.02")
    v = gate(g(0.05, 0.021, 0.08, 0.002), {BPB: g(0.05, 0.021, 0.08)}, 0.02, False, "2", "1")
    assert v.decision == PROMOTED
    assert v.reason == (
        "promoted candidate v2 over champion v1: gains +0.05000, 95% CI [+0.02100, +0.08000], "
        "p=0.002, lower bound above the margin 0.02"
    )


def test_a_significantly_worse_candidate_is_said_to_be():
    v = gate(g(-0.05, -0.08, -0.02, 0.002), {BPB: g(-0.05, -0.08, -0.02)}, 0.0, False, "2", "1")
    assert v.decision == KEPT and v.regressions == (BPB,)
    assert v.reason.endswith(
        ": significantly worse; regresses on t_bpb/bits_per_byte (-0.05000, 95% CI [-0.08000, -0.02000])"
    )


def test_a_significant_regression_on_one_task_blocks_a_significant_total_gain_unless_allowed():
    tasks = {BPB: g(-0.021, -0.030, -0.011), OOD: g(0.3, 0.25, 0.35)}
    total = g(0.58, 0.5, 0.66, 0.002)
    kept = gate(total, tasks, 0.0, False, "4", "2")
    assert kept.decision == KEPT and kept.regressions == (BPB,)
    assert kept.reason == (
        "kept champion v2: candidate v4 gains +0.58000, 95% CI [+0.50000, +0.66000], p=0.002: "
        "regresses on t_bpb/bits_per_byte (-0.02100, 95% CI [-0.03000, -0.01100])"
    )
    allowed = gate(total, tasks, 0.0, True, "4", "2")
    assert allowed.decision == PROMOTED and allowed.regressions == (BPB,)
    assert "allowed by registry.allow_task_regression=true: regresses on t_bpb/bits_per_byte" in allowed.reason


def test_a_worse_task_within_noise_is_no_regression():
    tasks = {BPB: g(-0.01, -0.03, 0.001), OOD: g(0.3, 0.25, 0.35)}
    v = gate(g(0.29, 0.2, 0.37, 0.002), tasks, 0.0, False, "2", "1")
    assert v.decision == PROMOTED and v.regressions == ()


def test_no_interval_is_no_evidence():
    nan = math.nan
    v = gate(Gain(0.4, nan, nan, nan, False, 0.95), {BPB: Gain(0.4, nan, nan, nan, False, 0.95)}, 0.0, True, "2", "1")
    assert v.decision == KEPT and v.regressions == ()
    assert "with no interval" in v.reason


def test_allow_task_regression_is_a_boolean():
    assert config_from_dict({"registry": {"allow_task_regression": True}}).registry.allow_task_regression is True
    assert config_from_dict({}).registry.allow_task_regression is False
    with pytest.raises(ConfigError, match="registry.allow_task_regression must be true or false, got 'yes'"):
        config_from_dict({"registry": {"allow_task_regression": "yes"}})
