"""Statistics against hand-computed values, numpy/scipy references and edge cases."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from tunebot.stats import (
    agreement_rate,
    bootstrap_ci,
    compare_paired,
    compare_paired_continuous,
    format_ci,
    format_p,
    mcnemar_exact,
    paired_bootstrap,
    pass_at_k,
    pass_hat_k,
    percentile,
    wilson,
)


def test_wilson_hand_computed():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert hi == pytest.approx(0.7634, abs=1e-4)


def test_wilson_edges():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 10)
    assert lo == 0.0
    # Upper bound for 0 successes is z²/(n+z²).
    assert hi == pytest.approx(1.959963984540054**2 / (10 + 1.959963984540054**2))
    assert wilson(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson(11, 10)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_matches_scipy(kn):
    k, n = kn
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)


def test_mcnemar_hand_computed():
    # 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(0.02148, abs=1e-5)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 1) == 1.0


@given(st.integers(0, 300), st.integers(0, 300))
def test_mcnemar_matches_scipy_binomtest(b, c):
    if b + c == 0:
        return
    ref = binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_mcnemar_large_counts_do_not_overflow():
    p = mcnemar_exact(2000, 2300)
    assert 0 < p < 0.001


def test_pass_at_k_known_values():
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(10, 5, 2) == pytest.approx(1 - 10 / 45)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k failures: some draw must pass
    assert pass_at_k(200, 13, 10) == pytest.approx(
        1 - np.prod(1.0 - 10 / np.arange(200 - 13 + 1, 200 + 1))
    )


def test_pass_hat_k_known_values():
    assert pass_hat_k(10, 5, 2) == pytest.approx(10 / 45)
    assert pass_hat_k(10, 10, 3) == 1.0
    assert pass_hat_k(10, 2, 3) == 0.0
    assert pass_hat_k(4, 3, 1) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        pass_hat_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_agreement_rate():
    assert agreement_rate(["a", "a", "b"]) == pytest.approx(2 / 3)
    assert agreement_rate(["x"] * 4) == 1.0
    assert agreement_rate([]) == 0.0


@settings(max_examples=200)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.floats(0, 100),
)
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-9, abs=1e-6)


def test_percentile_hand_computed_and_errors():
    assert percentile([180, 200, 240, 100], 50) == 190
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_bootstrap_ci_deterministic_and_sensible():
    values = [0.0, 1.0] * 30 + [1.0] * 10
    first = bootstrap_ci(values, seed=3)
    assert first == bootstrap_ci(values, seed=3)
    continuous = [(i * 0.37) % 1 for i in range(50)]
    assert bootstrap_ci(continuous, seed=3) != bootstrap_ci(continuous, seed=4)
    mean = sum(values) / len(values)
    assert first[0] < mean < first[1]
    wide = bootstrap_ci(values, seed=3, level=0.99)
    assert wide[0] <= first[0] and wide[1] >= first[1]
    # The percentile interval of a 0/1 mean sits near the Wilson one for n=70.
    lo, hi = wilson(40, 70)
    assert first[0] == pytest.approx(lo, abs=0.03)
    assert first[1] == pytest.approx(hi, abs=0.03)


def test_bootstrap_ci_constant_and_empty():
    lo, hi = bootstrap_ci([0.7] * 12)
    assert lo == pytest.approx(0.7) and hi == pytest.approx(0.7)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_bootstrap():
    a = [0.2, 0.4, 0.5, 0.3, 0.6, 0.4, 0.5, 0.2, 0.3, 0.4] * 3
    b = [x + 0.3 for x in a]
    diff, (lo, hi), p = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.3)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3)
    assert p == pytest.approx(1 / 2001)
    same = paired_bootstrap(a, a)
    assert same[0] == 0.0 and same[2] == 1.0
    noisy = paired_bootstrap(a, list(reversed(a)), seed=1)
    assert noisy == paired_bootstrap(a, list(reversed(a)), seed=1)
    assert noisy[2] > 0.5
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def _pairs(both, a_only, b_only, neither):
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return a, b


def test_compare_paired_significant_win():
    a, b = _pairs(58, 2, 13, 27)  # v2 60/100, v3 71/100
    r = compare_paired(a, b, name_a="v2", name_b="v3")
    assert (r.n, r.acc_a, r.acc_b, r.b, r.c) == (100, 0.60, 0.71, 2, 13)
    assert r.diff_pts == pytest.approx(11.0)
    assert r.p_value == pytest.approx(2 * (1 + 15 + 105) / 2**15)
    assert r.verdict == "v3 beats v2 by 11.0 pts (p=0.007)"
    assert r.ci_a == wilson(60, 100) and r.ci_b == wilson(71, 100)
    assert r.flipped_better == list(range(60, 73))
    assert r.flipped_worse == [58, 59]
    assert r.diff_ci[0] < 11.0 < r.diff_ci[1]
    assert r.significant
    swapped = compare_paired(b, a, name_a="v3", name_b="v2")
    assert swapped.verdict == "v3 beats v2 by 11.0 pts (p=0.007)"
    assert swapped.diff_pts == pytest.approx(-11.0)


def test_compare_paired_no_difference():
    a, b = _pairs(40, 3, 4, 15)  # 62 cases, b ahead by one
    r = compare_paired(a, b, name_a="v2", name_b="v3")
    assert r.p_value == 1.0
    assert r.verdict == "no significant difference (v3 \u2212 v2 = +1.6 pts, p=1.00)"
    assert not r.significant
    back = compare_paired(b, a, name_a="v2", name_b="v3")
    assert back.verdict == "no significant difference (v3 \u2212 v2 = \u22121.6 pts, p=1.00)"


def test_compare_paired_tiny_p_and_empty():
    a, b = _pairs(0, 0, 30, 0)
    assert compare_paired(a, b, name_a="A", name_b="B").verdict == (
        "B beats A by 100.0 pts (p<0.001)"
    )
    empty = compare_paired([], [], name_a="A", name_b="B")
    assert (empty.n, empty.p_value, empty.ci_a) == (0, 1.0, (0.0, 1.0))
    assert empty.verdict == "no cases to compare"
    with pytest.raises(ValueError):
        compare_paired([True], [], name_a="A", name_b="B")


def test_compare_paired_continuous():
    a = [0.5, 0.6, 0.4, 0.55, 0.45] * 8
    b = [x + 0.2 for x in a]
    r = compare_paired_continuous(a, b, name_a="prompt", name_b="ft")
    assert r.diff_pts == pytest.approx(20.0)
    assert r.verdict == "ft beats prompt by 20.0 pts (p<0.001)"
    assert r.c == 40 and r.b == 0 and r.flipped_better == list(range(40))
    assert r.ci_a[0] < r.acc_a < r.ci_a[1]
    same = compare_paired_continuous(a, a, name_a="x", name_b="y")
    assert same.p_value == 1.0 and same.verdict.startswith("no significant difference")
    assert compare_paired_continuous([], [], name_a="x", name_b="y").n == 0


def test_formatting():
    assert format_ci(0.503, 0.733) == "50.3\u201373.3"
    assert format_ci(180.0, 240.0, pct=False, digits=0) == "180\u2013240"
    assert format_ci(math.nan, 1.0) == "n/a"
    assert format_p(0.0004) == "p<0.001"
    assert format_p(0.0043) == "p=0.004"
    assert format_p(0.612) == "p=0.61"


def test_stats_stays_stdlib_only():
    code = (
        "import sys, tunebot.stats; "
        "print(sorted(m for m in ('numpy', 'scipy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    assert out.strip() == "[]"


def test_mcnemar_power_matches_a_simulation_and_the_sample_size_reaches_it() -> None:
    import random

    from tunebot.stats import mcnemar_cases_needed, mcnemar_exact, mcnemar_power

    d, share = 22 / 48, 16 / 22
    needed = mcnemar_cases_needed(6, 16, 48)
    assert needed is not None
    assert mcnemar_power(needed, d, share) >= 0.8 > mcnemar_power(needed - 1, d, share)
    rng, hits, trials = random.Random(7), 0, 3000
    for _ in range(trials):
        b = c = 0
        for _ in range(needed):
            if rng.random() < d:
                if rng.random() < share:
                    c += 1
                else:
                    b += 1
        hits += mcnemar_exact(b, c) < 0.05
    assert abs(hits / trials - mcnemar_power(needed, d, share)) < 0.03
    assert mcnemar_cases_needed(5, 5, 40) is None  # no difference to detect
    assert mcnemar_cases_needed(0, 0, 40) is None
    assert mcnemar_cases_needed(2, 3, 1000) > mcnemar_cases_needed(20, 30, 1000)
