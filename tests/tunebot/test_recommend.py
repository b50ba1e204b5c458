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
