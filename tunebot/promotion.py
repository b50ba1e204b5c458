"""The team's promotion rule: when a candidate may take a protected label (production) from
its current holder, decided on a paired comparison of both on the same cases. One place,
used by /prompt label, /model label, the Promote button, optimize's candidates and
`tunebot ci`.

Default rule ("not-worse"): the candidate is not significantly worse (exact McNemar p ≥ ALPHA
for a drop) and not more than MAX_DROP_PTS lower. TUNEBOT_PROMOTION_RULE=better asks for a
significant improvement instead. A first production label (nothing to compare with) needs a
prompt test meeting TUNEBOT_MIN_PRODUCTION_ACCURACY (default 0: any measured result).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunebot.stats import ALPHA, format_ci, format_p

MAX_DROP_PTS = 1.0
RULES = ("not-worse", "better")


@dataclass(frozen=True)
class Evidence:
    """A paired comparison of the candidate (b) with the label's holder (a) on the same cases."""

    candidate: str
    holder: str
    n: int
    acc_candidate: float
    acc_holder: float
    ci_candidate: tuple[float, float]
    ci_holder: tuple[float, float]
    p_value: float
    fixed: int  # cases the candidate gets right and the holder wrong
    broken: int  # cases the holder gets right and the candidate wrong
    job_id: int | None = None

    @property
    def diff_pts(self) -> float:
        """Candidate minus holder, in accuracy points."""
        return 100 * (self.acc_candidate - self.acc_holder)

    def summary(self) -> str:
        """Both accuracies with CIs, p, cases fixed and broken, and the job that measured it."""
        job = f" (job #{self.job_id})" if self.job_id is not None else ""
        return (f"{self.candidate} {self.acc_candidate:.1%} ({format_ci(*self.ci_candidate)}) vs "
                f"{self.holder} {self.acc_holder:.1%} ({format_ci(*self.ci_holder)}), "
                f"{self.diff_pts:+.1f} pts, {format_p(self.p_value)}, {self.fixed} fixed, "
                f"{self.broken} broken, n={self.n}{job}")


@dataclass(frozen=True)
class Decision:
    """Whether the label may move, and the sentence that says why."""

    allowed: bool
    reason: str


def decide(ev: Evidence, rule: str = "not-worse") -> Decision:
    """Apply the team's rule to a paired comparison."""
    if rule not in RULES:
        raise ValueError(f"unknown promotion rule {rule!r} (rules: {', '.join(RULES)})")
    significant = ev.p_value < ALPHA
    if rule == "better":
        if significant and ev.diff_pts > 0:
            return Decision(True, f"significantly better: {ev.summary()}")
        return Decision(False, f"not significantly better (the team asks for it): {ev.summary()}")
    if significant and ev.diff_pts < 0:
        return Decision(False, f"significantly worse: {ev.summary()}")
    if ev.diff_pts < -MAX_DROP_PTS:
        return Decision(False, f"{-ev.diff_pts:.1f} pts lower (the rule allows at most "
                               f"{MAX_DROP_PTS:g}): {ev.summary()}")
    return Decision(True, f"not worse: {ev.summary()}")


def decide_first(accuracy: float | None, minimum: float, *, what: str) -> Decision:
    """A first production label: a measured prompt test meeting the team's minimum."""
    if accuracy is None:
        return Decision(False, f"{what} has no prompt test on its eval set yet: run /prompt test "
                               "first (a first production label needs a measured result)")
    if accuracy < minimum:
        return Decision(False, f"{what} scored {accuracy:.1%}, below the team's minimum "
                               f"{minimum:.1%} (TUNEBOT_MIN_PRODUCTION_ACCURACY)")
    return Decision(True, f"{what} scored {accuracy:.1%} (minimum {minimum:.1%})")
