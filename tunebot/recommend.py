"""The prompt-vs-fine-tune recommendation: explicit, documented rules over measured numbers.

Rules, in order (the first that applies decides; every number comes from the comparison):

1. Too few cases (fewer than MIN_CASES after leakage removal): no comparison at all.
2. The tuned candidate (best of tuned / hybrid) is significantly WORSE than the prompt
   (exact McNemar p < ALPHA): keep prompting.
3. It is significantly BETTER by at least MATERIAL_PTS:
   a. the hybrid (tuned model + full prompt) beats the tuned model with its short prompt
      significantly: fine-tune AND keep the prompt ("both");
   b. training pays back (break-even reached) within PAYBACK_DAYS at the stated traffic, or
      within PAYBACK_CALLS calls when no traffic is given: fine-tune;
   c. otherwise it never pays back on serving cost: fine-tune only if the accuracy gain is
      worth the training cost — stated as such, with both numbers.
4. No significant difference: keep prompting (no training cost, one model for many tasks,
   quick to change) — unless the tuned model is CHEAPER_FACTOR× cheaper per correct answer
   and pays back within PAYBACK_DAYS, then fine-tune for cost.
Small samples (fewer than SMALL_N cases) add a warning that the interval is wide.
Reasons always mention data available, training cost and how often the prompt changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIN_CASES = 20
ALPHA = 0.05
MATERIAL_PTS = 3.0
PAYBACK_DAYS = 90.0
PAYBACK_CALLS = 1_000_000.0
CHEAPER_FACTOR = 1.5
SMALL_N = 50


@dataclass(frozen=True)
class Candidate:
    """One row of the comparison."""

    name: str
    kind: str  # "prompt" | "tuned" | "hybrid" | "model"
    accuracy: float
    n: int
    cost_per_1k: float  # serving cost per 1,000 calls
    p_vs_prompt: float = 1.0  # exact McNemar p of the paired difference to the prompt row

    @property
    def cost_per_1k_correct(self) -> float:
        """Serving cost per 1,000 correct answers (infinite when it is never right)."""
        return self.cost_per_1k / self.accuracy if self.accuracy > 0 else math.inf


@dataclass(frozen=True)
class Context:
    """What the team brings besides the measurements."""

    training_cost: float = 0.0
    traffic_per_day: float | None = None
    train_examples: int = 0
    prompt_versions: int = 1
    prompt_days: float = 0.0  # from the first to the production version
    p_tuned_vs_hybrid: float = 1.0


@dataclass
class Recommendation:
    """The decision, its one line, and the plain reasons behind it."""

    decision: str  # "prompt" | "fine-tune" | "both" | "refused"
    line: str
    reasons: list[str] = field(default_factory=list)
    break_even_calls: float | None = None
    break_even_days: float | None = None


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def break_even(prompt: Candidate, tuned: Candidate, training_cost: float,
               traffic: float | None) -> tuple[float | None, float | None]:
    """Calls (and days at `traffic`) after which training has paid for itself; None = never."""
    saving = (prompt.cost_per_1k_correct - tuned.cost_per_1k_correct) / 1000.0
    if not math.isfinite(saving) or saving <= 0 or tuned.accuracy <= 0:
        return None, None
    correct = training_cost / saving
    calls = correct / tuned.accuracy
    return calls, (calls / traffic if traffic else None)


def _payback_text(calls: float | None, days: float | None, traffic: float | None) -> str:
    if calls is None:
        return "never pays back on serving cost"
    if days is not None and traffic:
        return f"pays back after ~{max(days, 0.1):.1f} days at {traffic:,.0f} calls/day"
    return f"pays back after ~{calls:,.0f} calls"


def _pays_back(calls: float | None, days: float | None) -> bool:
    if calls is None:
        return False
    return days <= PAYBACK_DAYS if days is not None else calls <= PAYBACK_CALLS


def recommend(prompt: Candidate, tuned: list[Candidate], ctx: Context) -> Recommendation:
    """Apply the rules above to one prompt row and the tuned/hybrid rows."""
    if prompt.n < MIN_CASES:
        return Recommendation("refused", f"Recommendation: none — only {prompt.n} held-out "
                              f"cases (at least {MIN_CASES} are needed for a comparison)")
    best = max(tuned, key=lambda c: (c.accuracy, -c.cost_per_1k))
    diff = 100 * (best.accuracy - prompt.accuracy)
    calls, days = break_even(prompt, best, ctx.training_cost, ctx.traffic_per_day)
    payback = _payback_text(calls, days, ctx.traffic_per_day)
    reasons = [
        f"accuracy: {prompt.name} {prompt.accuracy:.1%} vs {best.name} {best.accuracy:.1%} "
        f"({diff:+.1f} pts, {_p(best.p_vs_prompt)}, n={prompt.n})",
        f"cost per 1,000 correct answers: {prompt.name} ${prompt.cost_per_1k_correct:.4f} vs "
        f"{best.name} ${best.cost_per_1k_correct:.4f}; training cost ${ctx.training_cost:.2f}",
        f"data: {ctx.train_examples} training examples; the prompt went through "
        f"{ctx.prompt_versions} version(s) in {ctx.prompt_days:.0f} day(s) — a tuned model "
        "serves one task and must be retrained when requirements change",
    ]
    if prompt.n < SMALL_N:
        reasons.append(f"small sample (n={prompt.n}): differences under ~"
                       f"{100 / math.sqrt(prompt.n):.0f} pts are hard to detect; add cases "
                       "before a final decision")
    significant = best.p_vs_prompt < ALPHA
    rec = Recommendation("prompt", "", reasons, calls, days)
    if significant and diff < 0:
        rec.line = (f"Recommendation: keep prompting — {prompt.name} beats {best.name} by "
                    f"{-diff:.1f} pts ({_p(best.p_vs_prompt)}) at no training cost")
    elif significant and diff >= MATERIAL_PTS:
        hybrid = next((c for c in tuned if c.kind == "hybrid"), None)
        plain = next((c for c in tuned if c.kind == "tuned"), None)
        if (hybrid is not None and plain is not None and best is hybrid
                and ctx.p_tuned_vs_hybrid < ALPHA):
            rec.decision = "both"
            rec.line = (f"Recommendation: both — fine-tune and keep the full prompt: "
                        f"{hybrid.name} is +{diff:.1f} pts over the prompt "
                        f"({_p(best.p_vs_prompt)}) and beats the tuned model alone "
                        f"({_p(ctx.p_tuned_vs_hybrid)}); {payback}")
        elif _pays_back(calls, days):
            rec.decision = "fine-tune"
            rec.line = (f"Recommendation: fine-tune — +{diff:.1f} pts "
                        f"({_p(best.p_vs_prompt)}); {payback}")
        else:
            rec.decision = "fine-tune"
            rec.line = (f"Recommendation: fine-tune if the accuracy is worth "
                        f"${ctx.training_cost:.2f} of training — +{diff:.1f} pts "
                        f"({_p(best.p_vs_prompt)}), but it {payback}")
    elif not significant and best.cost_per_1k_correct * CHEAPER_FACTOR < \
            prompt.cost_per_1k_correct and _pays_back(calls, days):
        rec.decision = "fine-tune"
        ratio = prompt.cost_per_1k_correct / best.cost_per_1k_correct
        rec.line = (f"Recommendation: fine-tune for cost — same accuracy within "
                    f"{abs(diff):.1f} pts ({_p(best.p_vs_prompt)}) at {ratio:.1f}× lower cost "
                    f"per correct answer; {payback}")
    else:
        rec.line = (f"Recommendation: keep prompting — {prompt.name} is within "
                    f"{abs(diff):.1f} pts of {best.name} ({_p(best.p_vs_prompt)}) "
                    "at no training cost")
    return rec
