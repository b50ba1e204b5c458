"""The recommendation rules on constructed cases whose right answer is known."""

from __future__ import annotations

import math

from tunebot.recommend import Candidate, Context, break_even, recommend


def cand(name: str, acc: float, p: float = 1.0, kind: str = "tuned", cost: float = 0.10,
         n: int = 200) -> Candidate:
    return Candidate(name=name, kind=kind, accuracy=acc, n=n, cost_per_1k=cost, p_vs_prompt=p)


PROMPT = cand("triage@4", 0.60, kind="prompt", cost=0.20)


def test_clear_win_that_pays_back_recommends_fine_tuning_with_days() -> None:
    rec = recommend(PROMPT, [cand("ft:triage@1", 0.90, p=0.0001, cost=0.05)],
                    Context(training_cost=2.0, traffic_per_day=5000))
    assert rec.decision == "fine-tune"
    assert rec.line.startswith("Recommendation: fine-tune — +30.0 pts (p<0.001); pays back")
    assert "days at 5,000 calls/day" in rec.line
    assert rec.break_even_days is not None and rec.break_even_days < 90


def test_tie_keeps_prompting() -> None:
    rec = recommend(PROMPT, [cand("ft:triage@1", 0.612, p=0.61, cost=0.19)],
                    Context(training_cost=2.0))
    assert rec.decision == "prompt"
    assert rec.line == ("Recommendation: keep prompting — triage@4 is within 1.2 pts of "
                        "ft:triage@1 (p=0.61) at no training cost")


def test_significantly_worse_tuned_model_keeps_prompting() -> None:
    rec = recommend(PROMPT, [cand("ft:triage@1", 0.40, p=0.001)], Context(training_cost=2.0))
    assert rec.decision == "prompt" and "beats ft:triage@1 by 20.0 pts" in rec.line


def test_better_but_never_pays_back_weighs_accuracy_against_training_cost() -> None:
    # More accurate, but dearer per correct answer: break-even is never reached.
    tuned = cand("ft:triage@1", 0.80, p=0.001, cost=0.50)
    calls, days = break_even(PROMPT, tuned, 10.0, 1000)
    assert calls is None and days is None
    rec = recommend(PROMPT, [tuned], Context(training_cost=10.0, traffic_per_day=1000))
    assert rec.decision == "fine-tune"
    assert "worth $10.00 of training" in rec.line and "never pays back" in rec.line


def test_hybrid_significantly_best_recommends_both() -> None:
    rec = recommend(PROMPT, [cand("ft:triage@1", 0.80, p=0.001, cost=0.05),
                             cand("ft:triage@1 + prompt", 0.92, p=0.0001, kind="hybrid",
                                  cost=0.08)],
                    Context(training_cost=1.0, traffic_per_day=100, p_tuned_vs_hybrid=0.01))
    assert rec.decision == "both" and rec.line.startswith("Recommendation: both")


def test_tiny_samples_are_refused_or_warned() -> None:
    refused = recommend(cand("p", 0.5, kind="prompt", n=12), [cand("t", 0.9, p=0.01, n=12)],
                        Context())
    assert refused.decision == "refused" and "only 12 held-out cases" in refused.line
    small = recommend(cand("p", 0.5, kind="prompt", n=30), [cand("t", 0.55, p=0.7, n=30)],
                      Context())
    assert any("small sample (n=30)" in r for r in small.reasons)


def test_same_accuracy_much_cheaper_fine_tunes_for_cost() -> None:
    rec = recommend(PROMPT, [cand("ft:t", 0.61, p=0.8, cost=0.02)],
                    Context(training_cost=0.5, traffic_per_day=10_000))
    assert rec.decision == "fine-tune" and "for cost" in rec.line


def test_break_even_arithmetic() -> None:
    prompt = cand("p", 0.5, kind="prompt", cost=1.0)  # $2 per 1k correct
    tuned = cand("t", 0.8, cost=0.8)  # $1 per 1k correct → saves $0.001 per correct answer
    calls, days = break_even(prompt, tuned, 10.0, 1000)
    assert math.isclose(calls, 10.0 / 0.001 / 0.8)  # 12,500 calls
    assert math.isclose(days, 12.5)


# ---- the verdict reads right (constructed cases for every branch) ----------------------------

def test_a_big_lead_that_is_not_significant_is_inconclusive_with_the_cases_needed() -> None:
    # 48 tickets: the fine-tune fixes 16 cases and breaks 6 (+20.8 pts, exact McNemar p=0.052).
    prompt = cand("triage@3", 0.646, kind="prompt", n=48)
    tuned = cand("ft:tri-hi@1", 0.854, p=0.0525, n=48)
    tuned = Candidate(**{**tuned.__dict__, "fixed": 16, "broken": 6})
    rec = recommend(prompt, [tuned], Context(training_cost=0.40))
    assert rec.decision == "inconclusive"
    assert rec.line.startswith("Recommendation: inconclusive, leaning fine-tune — ft:tri-hi@1 "
                               "leads triage@3 by 20.8 pts but p=0.05 (16 cases fixed, 6 broken)")
    assert rec.cases_needed is not None and 60 < rec.cases_needed < 130
    assert f"about {rec.cases_needed:,} held-out cases in total (you have 48)" in rec.line
    assert "within" not in rec.line


def test_inconclusive_can_lean_towards_prompting() -> None:
    tuned = Candidate("ft:t@1", "tuned", 0.55, 100, 0.1, p_vs_prompt=0.30, fixed=10, broken=15)
    rec = recommend(cand("p@1", 0.60, kind="prompt", n=100), [tuned], Context(training_cost=1))
    assert rec.decision == "inconclusive" and "leaning prompting — p@1 leads ft:t@1 by 5.0" \
        in rec.line


def test_never_within_for_a_material_difference() -> None:
    for acc in (0.30, 0.50, 0.57, 0.63, 0.70, 0.95):
        for p in (0.001, 0.049, 0.05, 0.2, 1.0):
            tuned = Candidate("t", "tuned", acc, 200, 0.1, p_vs_prompt=p, fixed=20, broken=10)
            rec = recommend(cand("p", 0.60, kind="prompt"), [tuned], Context(training_cost=1))
            if abs(100 * (acc - 0.60)) >= 3.0:
                assert "within" not in rec.line, (acc, p, rec.line)


def test_borderline_p_decides_between_fine_tune_and_inconclusive() -> None:
    def line(p: float) -> str:
        tuned = Candidate("t", "tuned", 0.70, 200, 0.05, p_vs_prompt=p, fixed=30, broken=10)
        return recommend(cand("p", 0.60, kind="prompt", cost=0.2), [tuned],
                         Context(training_cost=1.0, traffic_per_day=1000)).decision
    assert line(0.0499) == "fine-tune" and line(0.05) == "inconclusive"


def test_a_prompt_that_is_never_right_makes_any_right_fine_tune_pay_back_at_once() -> None:
    prompt = cand("banking@1", 0.0, kind="prompt", n=60)
    tuned = cand("ft:bank@1", 0.825, p=0.0001, n=60, cost=0.12)
    assert break_even(prompt, tuned, 5.0, 1000) == (0.0, 0.0)
    rec = recommend(prompt, [tuned], Context(training_cost=5.0, traffic_per_day=1000))
    assert rec.decision == "fine-tune" and "pays back at once" in rec.line
    assert "never pays back" not in rec.line
    assert any("banking@1 never right" in r for r in rec.reasons)


def test_a_training_cost_under_a_cent_is_shown_and_is_no_condition() -> None:
    prompt = cand("banking@1", 0.0, kind="prompt", n=60)
    rec = recommend(prompt, [cand("ft:bank@1", 0.825, p=0.0001, n=60)],
                    Context(training_cost=0.0034))
    assert rec.line == ("Recommendation: fine-tune — +82.5 pts (p<0.001); training cost "
                        "under $0.01 ($0.0034)")
    assert "$0.00 " not in rec.line and not any("$0.00 " in r for r in rec.reasons)


def test_degenerate_candidates_are_named_in_the_reasons() -> None:
    hybrid = Candidate("ft:t@1 + triage@3", "hybrid", 0.0, 48, 0.1, p_vs_prompt=0.0001,
                       degenerate=42, degenerate_detail="empty 42")
    tuned = Candidate("ft:t@1", "tuned", 0.85, 48, 0.05, p_vs_prompt=0.01, fixed=12, broken=2)
    rec = recommend(cand("triage@3", 0.65, kind="prompt", n=48), [tuned, hybrid],
                    Context(training_cost=1.0))
    assert hybrid.mostly_degenerate and not tuned.mostly_degenerate
    assert any("ft:t@1 + triage@3 gave degenerate answers in 42 of 48 cases (empty 42)" in r
               for r in rec.reasons)


def test_a_model_that_did_not_learn_gets_no_verdict_on_fine_tuning() -> None:
    rec = recommend(cand("triage@3", 0.646, kind="prompt", n=48),
                    [cand("ft:tri-auto@1", 0.0, p=0.0001, n=48)],
                    Context(training_cost=0.2, tuned_learned=False,
                            learning_note="validation loss 6.7, no lower than at the start"))
    assert rec.decision == "no-verdict"
    assert "keep prompting" not in rec.line and "says nothing about" in rec.line
    assert "validation loss 6.7" in rec.line


def test_money_never_rounds_a_real_cost_to_zero() -> None:
    from tunebot.recommend import money
    assert money(0) == "$0" and money(0.004) == "under $0.01 ($0.004)"
    assert money(12.345) == "$12.35" and money(1234.5) == "$1,234.50"
