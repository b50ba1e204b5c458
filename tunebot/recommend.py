"""The prompt-vs-fine-tune recommendation: explicit, documented rules over measured numbers.

Rules, in order (the first that applies decides; every number comes from the comparison):

1. Too few cases (fewer than MIN_CASES after leakage removal): no comparison at all.
2. The tuned model did not learn (not better than its base on its own validation split, or its
   validation loss never fell meaningfully): no verdict on fine-tuning — the comparison says
   nothing about what a working fine-tune would do; what to try is stated.
3. The tuned candidate (best of tuned / hybrid) is significantly WORSE than the prompt
   (exact McNemar p < ALPHA): keep prompting.
4. It is significantly BETTER by at least MATERIAL_PTS:
   a. the hybrid (tuned model + full prompt) beats the tuned model with its short prompt
      significantly: fine-tune AND keep the prompt ("both");
   b. training costs under a cent, or pays back (break-even reached) within PAYBACK_DAYS at
      the stated traffic, or within PAYBACK_CALLS calls when no traffic is given: fine-tune
      (a prompt that is never right has an infinite cost per correct answer, so a tuned
      model that is ever right pays back at once);
   c. otherwise it never pays back on serving cost: fine-tune only if the accuracy gain is
      worth the training cost — stated as such, with both numbers.
5. A difference of at least MATERIAL_PTS either way that is not significant: inconclusive —
   which side leads, by how much, and about how many held-out cases in total would give 80%
   power for the exact McNemar test at the discordance observed (tunebot.stats).
6. Otherwise the difference is under MATERIAL_PTS: keep prompting (no training cost, one model
   for many tasks, quick to change) — unless the tuned model is CHEAPER_FACTOR× cheaper per
   correct answer and pays back within PAYBACK_DAYS, then fine-tune for cost.
A difference of MATERIAL_PTS or more is never called "within".
Small samples (fewer than SMALL_N cases) add a warning that the interval is wide.
Candidates with more than DEGENERATE_SHARE degenerate answers (empty, no valid choice, cut by
max_tokens, not JSON when JSON is required) are named in the reasons and flagged in the table.
Reasons always mention data available, training cost and how often the prompt changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tunebot.stats import mcnemar_cases_needed

MIN_CASES = 20
ALPHA = 0.05
MATERIAL_PTS = 3.0
PAYBACK_DAYS = 90.0
PAYBACK_CALLS = 1_000_000.0
CHEAPER_FACTOR = 1.5
SMALL_N = 50
DEGENERATE_SHARE = 0.20
CENT = 0.01


@dataclass(frozen=True)
class Candidate:
    """One row of the comparison."""

    name: str
    kind: str  # "prompt" | "tuned" | "hybrid" | "model"
    accuracy: float
    n: int
    cost_per_1k: float  # serving cost per 1,000 calls
    p_vs_prompt: float = 1.0  # exact McNemar p of the paired difference to the prompt row
    fixed: int = 0  # cases this candidate gets right and the prompt row wrong
    broken: int = 0  # cases the prompt row gets right and this candidate wrong
    degenerate: int = 0  # answers empty, with no valid choice, cut short or not JSON
    degenerate_detail: str = ""  # e.g. "empty 40, cut by max_tokens 2"

    @property
    def cost_per_1k_correct(self) -> float:
        """Serving cost per 1,000 correct answers (infinite when it is never right)."""
        return self.cost_per_1k / self.accuracy if self.accuracy > 0 else math.inf

    @property
    def mostly_degenerate(self) -> bool:
        """More than DEGENERATE_SHARE of its answers are degenerate."""
        return self.n > 0 and self.degenerate / self.n > DEGENERATE_SHARE


@dataclass(frozen=True)
class Context:
    """What the team brings besides the measurements."""

    training_cost: float = 0.0
    traffic_per_day: float | None = None
    train_examples: int = 0
    prompt_versions: int = 1
    prompt_days: float = 0.0  # from the first to the production version
    p_tuned_vs_hybrid: float = 1.0
    tuned_learned: bool | None = None  # None: unknown (an adapter from before the check)
    learning_note: str = ""  # why it did not learn, and what to try


@dataclass
class Recommendation:
    """The decision, its one line, and the plain reasons behind it."""

    decision: str  # "prompt" | "fine-tune" | "both" | "inconclusive" | "no-verdict" | "refused"
    line: str
    reasons: list[str] = field(default_factory=list)
    break_even_calls: float | None = None
    break_even_days: float | None = None
    cases_needed: int | None = None


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def money(amount: float) -> str:
    """Dollars as a reader should see them: never "$0.00" for a real, tiny amount."""
    if amount == 0:
        return "$0"
    if amount < CENT:
        return f"under $0.01 (${amount:.2g})"
    return f"${amount:,.2f}"


def _per_correct(c: Candidate) -> str:
    cost = c.cost_per_1k_correct
    return "never right (no cost per correct answer)" if math.isinf(cost) else f"${cost:.4f}"


def break_even(prompt: Candidate, tuned: Candidate, training_cost: float,
               traffic: float | None) -> tuple[float | None, float | None]:
    """Calls (and days at `traffic`) after which training has paid for itself; None = never.

    A prompt that is never right costs infinitely much per correct answer: a tuned model that
    is ever right pays back at once (0 calls)."""
    if tuned.accuracy <= 0:
        return None, None
    if prompt.accuracy <= 0:
        return 0.0, (0.0 if traffic else None)
    saving = (prompt.cost_per_1k_correct - tuned.cost_per_1k_correct) / 1000.0
    if not math.isfinite(saving) or saving <= 0:
        return None, None
    correct = training_cost / saving
    calls = correct / tuned.accuracy
    return calls, (calls / traffic if traffic else None)


def _payback_text(calls: float | None, days: float | None, traffic: float | None) -> str:
    if calls is None:
        return "never pays back on serving cost"
    if calls == 0:
        return "pays back at once (the prompt is never right)"
    if days is not None and traffic:
        return f"pays back after ~{max(days, 0.1):.1f} days at {traffic:,.0f} calls/day"
    return f"pays back after ~{calls:,.0f} calls"


def _pays_back(calls: float | None, days: float | None) -> bool:
    if calls is None:
        return False
    return days <= PAYBACK_DAYS if days is not None else calls <= PAYBACK_CALLS


def _reasons(prompt: Candidate, best: Candidate, everyone: list[Candidate], diff: float,
             ctx: Context) -> list[str]:
    reasons = [
        f"accuracy: {prompt.name} {prompt.accuracy:.1%} vs {best.name} {best.accuracy:.1%} "
        f"({diff:+.1f} pts, {_p(best.p_vs_prompt)}, n={prompt.n}; {best.fixed} cases fixed, "
        f"{best.broken} broken)",
        f"cost per 1,000 correct answers: {prompt.name} {_per_correct(prompt)} vs "
        f"{best.name} {_per_correct(best)}; training cost {money(ctx.training_cost)}",
        f"data: {ctx.train_examples} training examples; the prompt went through "
        f"{ctx.prompt_versions} version(s) in {ctx.prompt_days:.0f} day(s) — a tuned model "
        "serves one task and must be retrained when requirements change",
    ]
    if prompt.n < SMALL_N:
        reasons.append(f"small sample (n={prompt.n}): differences under ~"
                       f"{100 / math.sqrt(prompt.n):.0f} pts are hard to detect; add cases "
                       "before a final decision")
    for c in everyone:
        if c.mostly_degenerate:
            detail = f" ({c.degenerate_detail})" if c.degenerate_detail else ""
            reasons.append(f"⚠ {c.name} gave degenerate answers in {c.degenerate} of {c.n} "
                           f"cases{detail}: its accuracy measures its output format as much "
                           "as its knowledge")
    return reasons


def recommend(prompt: Candidate, tuned: list[Candidate], ctx: Context) -> Recommendation:
    """Apply the rules above to one prompt row and the tuned/hybrid rows."""
    if prompt.n < MIN_CASES:
        return Recommendation("refused", f"Recommendation: none — only {prompt.n} held-out "
                              f"cases (at least {MIN_CASES} are needed for a comparison)")
    best = max(tuned, key=lambda c: (c.accuracy, -c.cost_per_1k))
    diff = 100 * (best.accuracy - prompt.accuracy)
    calls, days = break_even(prompt, best, ctx.training_cost, ctx.traffic_per_day)
    payback = _payback_text(calls, days, ctx.traffic_per_day)
    rec = Recommendation("prompt", "", _reasons(prompt, best, [prompt, *tuned], diff, ctx),
                         calls, days)
    significant = best.p_vs_prompt < ALPHA
    if ctx.tuned_learned is False:
        rec.decision = "no-verdict"
        why = f" ({ctx.learning_note})" if ctx.learning_note else ""
        rec.line = (f"Recommendation: no verdict on fine-tuning — {best.name} did not learn "
                    f"its task{why}, so this comparison says nothing about what a working "
                    "fine-tune would do; retrain it and compare again")
    elif significant and diff < 0:
        rec.line = (f"Recommendation: keep prompting — {prompt.name} beats {best.name} by "
                    f"{-diff:.1f} pts ({_p(best.p_vs_prompt)}) at no training cost")
    elif significant and diff >= MATERIAL_PTS:
        hybrid = next((c for c in tuned if c.kind == "hybrid"), None)
        plain = next((c for c in tuned if c.kind == "tuned"), None)
        gain = f"+{diff:.1f} pts ({_p(best.p_vs_prompt)})"
        if (hybrid is not None and plain is not None and best is hybrid
                and ctx.p_tuned_vs_hybrid < ALPHA):
            rec.decision = "both"
            rec.line = (f"Recommendation: both — fine-tune and keep the full prompt: "
                        f"{hybrid.name} is +{diff:.1f} pts over the prompt "
                        f"({_p(best.p_vs_prompt)}) and beats the tuned model alone "
                        f"({_p(ctx.p_tuned_vs_hybrid)}); {payback}")
        elif ctx.training_cost < CENT:
            rec.decision = "fine-tune"
            rec.line = (f"Recommendation: fine-tune — {gain}; training cost "
                        f"{money(ctx.training_cost)}")
        elif _pays_back(calls, days):
            rec.decision = "fine-tune"
            rec.line = f"Recommendation: fine-tune — {gain}; {payback}"
        else:
            rec.decision = "fine-tune"
            rec.line = (f"Recommendation: fine-tune if the accuracy is worth "
                        f"{money(ctx.training_cost)} of training — {gain}, but it {payback}")
    elif abs(diff) >= MATERIAL_PTS:
        rec.decision = "inconclusive"
        leader, trailer = (best, prompt) if diff > 0 else (prompt, best)
        side = "fine-tune" if diff > 0 else "prompting"
        b, c = best.broken, best.fixed
        needed = mcnemar_cases_needed(b, c, prompt.n)
        rec.cases_needed = needed
        more = (f"about {needed:,} held-out cases in total (you have {prompt.n}) would settle "
                "it with 80% power" if needed else "more held-out cases would settle it")
        rec.line = (f"Recommendation: inconclusive, leaning {side} — {leader.name} leads "
                    f"{trailer.name} by {abs(diff):.1f} pts but {_p(best.p_vs_prompt)} "
                    f"({c} cases fixed, {b} broken); {more}")
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
