"""Statistics for prompt tests and comparisons: intervals, paired tests, pass@k.

Standard library only, so the core stays importable without numpy/scipy.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

Z95 = 1.959963984540054
ALPHA = 0.05


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0.0, 1.0) when n is 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n (got successes={successes}, n={n})")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; float noise would leave 0.9999999999999999.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation, like numpy's default."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100 (got {q})")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def _bootstrap_means(values: Sequence[float], reps: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = len(values)
    return [math.fsum(rng.choices(values, k=n)) / n for _ in range(reps)]


def _percentile_interval(samples: list[float], level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    return (percentile(samples, tail), percentile(samples, 100 - tail))


def bootstrap_ci(
    values: Sequence[float], *, reps: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean (deterministic for a seed)."""
    if not values:
        raise ValueError("bootstrap_ci of an empty sequence")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (got {level})")
    if reps < 1:
        raise ValueError(f"reps must be positive (got {reps})")
    return _percentile_interval(_bootstrap_means(values, reps, seed), level)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts b and c."""
    if b < 0 or c < 0:
        raise ValueError(f"counts must be non-negative (got b={b}, c={c})")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # Exact integers (each C(n, i+1) from C(n, i)) keep the tail right for thousands of pairs.
    term = tail = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    outcomes: int = 2**n  # int ** int is typed Any (a negative power is a float)
    return min(1.0, 2 * tail / outcomes)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, reps: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float], float]:
    """Mean paired difference b − a, its 95% bootstrap CI and a two-sided bootstrap p-value."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("paired_bootstrap of empty samples")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean = math.fsum(diffs) / len(diffs)
    means = _bootstrap_means(diffs, reps, seed)
    # Centre the bootstrap distribution on zero to get the null; +1 keeps p above 0.
    extreme = sum(1 for m in means if abs(m - mean) >= abs(mean) - 1e-12)
    p_value = min(1.0, (extreme + 1) / (reps + 1))
    return mean, _percentile_interval(means, 0.95), p_value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: chance that at least one of k draws from n samples (c correct) passes."""
    _check_nck(n, c, k)
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k: chance that all k draws from n samples (c correct) pass, C(c,k)/C(n,k)."""
    _check_nck(n, c, k)
    return math.comb(c, k) / math.comb(n, k)


def _check_nck(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n (got c={c}, n={n})")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n (got k={k}, n={n})")


def agreement_rate(samples: Sequence[str]) -> float:
    """Share of samples equal to the most common one (self-consistency); 0.0 when empty."""
    if not samples:
        return 0.0
    return Counter(samples).most_common(1)[0][1] / len(samples)


def format_ci(lo: float, hi: float, pct: bool = True, digits: int = 1) -> str:
    """Format an interval as 'lo–hi', in percentage points when pct (e.g. '50.3–73.3')."""
    if math.isnan(lo) or math.isnan(hi):
        return "n/a"
    scale = 100 if pct else 1
    return f"{lo * scale:.{digits}f}–{hi * scale:.{digits}f}"


def format_p(p: float) -> str:
    """Format a p-value as 'p=0.61', 'p=0.004' or 'p<0.001'."""
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return text.replace("-", "\u2212")


@dataclass(frozen=True)
class PairedResult:
    """Two candidates scored on the same cases: accuracies, intervals, test and verdict."""

    name_a: str
    name_b: str
    n: int
    acc_a: float
    acc_b: float
    ci_a: tuple[float, float]
    ci_b: tuple[float, float]
    diff_pts: float  # (b − a) in percentage points
    diff_ci: tuple[float, float]  # CI of diff_pts, in points
    b: int  # cases where only A wins
    c: int  # cases where only B wins
    p_value: float
    flipped_better: list[int] = field(default_factory=list)
    flipped_worse: list[int] = field(default_factory=list)
    verdict: str = ""

    @property
    def significant(self) -> bool:
        """Whether the difference is significant at the 0.05 level."""
        return self.n > 0 and self.p_value < ALPHA


def _verdict(name_a: str, name_b: str, n: int, diff_pts: float, p: float) -> str:
    if n == 0:
        return "no cases to compare"
    if p < ALPHA and diff_pts != 0:
        winner, loser = (name_b, name_a) if diff_pts > 0 else (name_a, name_b)
        return f"{winner} beats {loser} by {abs(diff_pts):.1f} pts ({format_p(p)})"
    return (
        f"no significant difference ({name_b} \u2212 {name_a} = {_signed(diff_pts)} pts, "
        f"{format_p(p)})"
    )


def compare_paired(
    a_pass: Sequence[bool], b_pass: Sequence[bool], *, name_a: str, name_b: str
) -> PairedResult:
    """Compare two pass/fail runs on the same cases: Wilson CIs and exact McNemar test."""
    if len(a_pass) != len(b_pass):
        raise ValueError(f"paired results differ in length ({len(a_pass)} vs {len(b_pass)})")
    n = len(a_pass)
    pairs = list(zip(a_pass, b_pass, strict=True))
    worse = [i for i, (x, y) in enumerate(pairs) if x and not y]
    better = [i for i, (x, y) in enumerate(pairs) if y and not x]
    wins_a, wins_b = sum(map(bool, a_pass)), sum(map(bool, b_pass))
    acc_a = wins_a / n if n else 0.0
    acc_b = wins_b / n if n else 0.0
    diff_pts = (acc_b - acc_a) * 100
    p_value = mcnemar_exact(len(worse), len(better))
    if n:
        _, (lo, hi), _ = paired_bootstrap([float(x) for x in a_pass], [float(y) for y in b_pass])
        diff_ci = (lo * 100, hi * 100)
    else:
        diff_ci = (0.0, 0.0)
    return PairedResult(
        name_a=name_a,
        name_b=name_b,
        n=n,
        acc_a=acc_a,
        acc_b=acc_b,
        ci_a=wilson(wins_a, n),
        ci_b=wilson(wins_b, n),
        diff_pts=diff_pts,
        diff_ci=diff_ci,
        b=len(worse),
        c=len(better),
        p_value=p_value,
        flipped_better=better,
        flipped_worse=worse,
        verdict=_verdict(name_a, name_b, n, diff_pts, p_value),
    )


def compare_paired_continuous(
    a: Sequence[float], b: Sequence[float], *, name_a: str, name_b: str
) -> PairedResult:
    """Compare two runs of 0–1 scores on the same cases with a paired bootstrap."""
    if len(a) != len(b):
        raise ValueError(f"paired results differ in length ({len(a)} vs {len(b)})")
    n = len(a)
    if n == 0:
        return PairedResult(
            name_a=name_a,
            name_b=name_b,
            n=0,
            acc_a=0.0,
            acc_b=0.0,
            ci_a=(0.0, 1.0),
            ci_b=(0.0, 1.0),
            diff_pts=0.0,
            diff_ci=(0.0, 0.0),
            b=0,
            c=0,
            p_value=1.0,
            verdict=_verdict(name_a, name_b, 0, 0.0, 1.0),
        )
    diff, (lo, hi), p_value = paired_bootstrap(a, b)
    worse = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x > y]
    better = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if y > x]
    return PairedResult(
        name_a=name_a,
        name_b=name_b,
        n=n,
        acc_a=math.fsum(a) / n,
        acc_b=math.fsum(b) / n,
        ci_a=bootstrap_ci(a),
        ci_b=bootstrap_ci(b),
        diff_pts=diff * 100,
        diff_ci=(lo * 100, hi * 100),
        b=len(worse),
        c=len(better),
        p_value=p_value,
        flipped_better=better,
        flipped_worse=worse,
        verdict=_verdict(name_a, name_b, n, diff * 100, p_value),
    )


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), summed in log space (exact up to float rounding)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_binom_pmf(i, n, p)) for i in range(k + 1)))


def _mcnemar_reject_below(m: int, alpha: float) -> int:
    """The largest k with exact two-sided McNemar p(k, m−k) < alpha, or −1: with m discordant
    pairs the test rejects when the smaller count is at most this."""
    k, tail = -1, 0.0
    while k + 1 <= m // 2:
        nxt = tail + math.exp(_log_binom_pmf(k + 1, m, 0.5))
        if 2 * nxt >= alpha:
            break
        k, tail = k + 1, nxt
    return k


def _reject_given_m(m: int, share_c: float, alpha: float) -> float:
    """P(the exact McNemar test rejects | m discordant pairs), c ~ Binomial(m, share_c).
    Exact up to EXACT_M pairs; above, the normal approximation (continuity-corrected), whose
    error there is far below the precision a sample-size answer needs."""
    if m <= EXACT_M:
        k = _mcnemar_reject_below(m, alpha)
        if k < 0:
            return 0.0
        # Reject when c ≤ k or c ≥ m − k.
        return min(1.0, _binom_cdf(k, m, share_c) + 1.0 - _binom_cdf(m - k - 1, m, share_c))
    half = m / 2
    k = math.floor(half - _z(1 - alpha / 2) * math.sqrt(m) / 2 - 0.5)
    mu, sd = m * share_c, math.sqrt(m * share_c * (1 - share_c)) or 1e-12
    return min(1.0, _phi((k + 0.5 - mu) / sd) + 1.0 - _phi((m - k - 0.5 - mu) / sd))


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


EXACT_M = 300


def mcnemar_power(n: int, p_discordant: float, share_c: float, *,
                  alpha: float = ALPHA) -> float:
    """Power of the exact McNemar test with n paired cases, when each case is discordant with
    probability `p_discordant` and a discordant case favours the second arm with probability
    `share_c`: Σ over m discordant pairs of P(m) · P(reject | m)."""
    if n <= 0 or p_discordant <= 0:
        return 0.0
    mean = n * p_discordant
    sd = math.sqrt(n * p_discordant * (1 - p_discordant))
    lo, hi = max(0, int(mean - 8 * sd) - 1), min(n, int(mean + 8 * sd) + 2)
    power = 0.0
    for m in range(lo, hi + 1):
        weight = math.exp(_log_binom_pmf(m, n, p_discordant))
        if weight >= 1e-12:
            power += weight * _reject_given_m(m, share_c, alpha)
    return min(1.0, power)


def mcnemar_cases_needed(b: int, c: int, n: int, *, alpha: float = ALPHA, power: float = 0.8,
                         limit: int = 1_000_000) -> int | None:
    """About how many paired cases in total give `power` for the exact McNemar test at the
    discordance observed (b cases only the first arm got right, c only the second, out of n):
    Connor's normal approximation as the start, then the exact power checked upward. None when
    the observed arms do not differ (b == c) or the answer is above `limit`."""
    if n <= 0 or b + c == 0 or b == c:
        return None
    d = (b + c) / n
    delta = abs(c - b) / n
    share = c / (b + c)
    z_a, z_b = 1.959963984540054, 0.8416212335729143  # alpha 0.05 two-sided, power 0.8
    if alpha != ALPHA or power != 0.8:
        z_a, z_b = _z(1 - alpha / 2), _z(power)
    guess = (z_a * math.sqrt(d) + z_b * math.sqrt(max(d - delta * delta, 0.0))) ** 2 / delta ** 2
    def enough(size: int) -> bool:
        return mcnemar_power(size, d, share, alpha=alpha) >= power

    low = max(int(guess * 0.8), 10)
    if low > limit:
        return None
    step = max(1, int(guess) // 20)
    high = low
    while not enough(high):
        low, high = high, high + step
        if high > limit:
            return None
    while high - low > 1:  # the smallest size that reaches the power (it rises with n)
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high if not enough(low) else low


def _z(q: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
         1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
         6.680131188771972e+01, -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
         -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
         3.754408661907416e+00)
    if q < 0.02425:
        r = math.sqrt(-2 * math.log(q))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / \
            ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    if q > 1 - 0.02425:
        return -_z(1 - q)
    r = q - 0.5
    s = r * r
    return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r / \
        (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1)
