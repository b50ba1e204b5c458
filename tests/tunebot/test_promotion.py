"""The promotion rule on constructed comparisons: every branch of both rules."""

from __future__ import annotations

import pytest

from tunebot.promotion import Evidence, decide, decide_first


def ev(cand: float, holder: float, p: float, fixed: int = 5, broken: int = 5) -> Evidence:
    return Evidence("triage@4", "triage@3", 80, cand, holder, (cand - .1, cand + .1),
                    (holder - .1, holder + .1), p, fixed, broken, job_id=12)


def test_not_worse_allows_a_tie_and_a_gain_and_refuses_a_drop() -> None:
    assert decide(ev(0.70, 0.70, 1.0)).allowed
    assert decide(ev(0.80, 0.70, 0.01, fixed=10, broken=2)).allowed
    small_drop = decide(ev(0.695, 0.70, 0.9))
    assert small_drop.allowed  # within 1 pt and not significant
    refused = decide(ev(0.038, 0.70, 0.0001, fixed=1, broken=54))
    assert not refused.allowed and refused.reason.startswith("significantly worse")
    assert "3.8% " in refused.reason and "70.0%" in refused.reason and "p<0.001" in \
        refused.reason and "1 fixed, 54 broken" in refused.reason and "job #12" in refused.reason
    drop = decide(ev(0.675, 0.70, 0.3))
    assert not drop.allowed and "2.5 pts lower (the rule allows at most 1)" in drop.reason


def test_better_needs_a_significant_gain() -> None:
    assert not decide(ev(0.72, 0.70, 0.4), "better").allowed
    assert decide(ev(0.85, 0.70, 0.001, fixed=14, broken=2), "better").allowed
    with pytest.raises(ValueError, match="unknown promotion rule"):
        decide(ev(0.7, 0.7, 1.0), "vibes")


def test_first_production_label_needs_a_measured_test_meeting_the_minimum() -> None:
    assert not decide_first(None, 0.0, what="triage@1").allowed
    assert decide_first(0.038, 0.0, what="triage@1").allowed
    low = decide_first(0.038, 0.5, what="triage@1")
    assert not low.allowed and "below the team's minimum 50.0%" in low.reason
