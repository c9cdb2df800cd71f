"""Pass@k, maj@k, bootstrap CIs and paired tests against exact or hand-computed references."""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from verl_agrae.eval.metrics import (
    bootstrap_ci,
    default_ks,
    maj_at_k,
    mean_at_n,
    mean_over_problems,
    paired_comparison,
    pass_at_k,
    pass_at_k_curve,
    pass_at_k_reference,
)


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The closed form 1 - C(n-c, k) / C(n, k) in exact rationals."""
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def test_pass_at_k_matches_exact_rationals_on_all_small_cases():
    cases = [(n, c, k) for n in range(1, 17) for c in range(n + 1) for k in range(1, n + 1)]
    n = np.array([x[0] for x in cases])
    c = np.array([x[1] for x in cases])
    ks = sorted({x[2] for x in cases})
    curve = pass_at_k_curve(n, c, ks)
    for i, (nn, cc, kk) in enumerate(cases):
        got = curve[ks.index(kk), i]
        assert got == pytest.approx(float(exact_pass_at_k(nn, cc, kk)), rel=1e-13, abs=1e-15), (nn, cc, kk)
        assert pass_at_k([nn], [cc], kk)[0] == got


@pytest.mark.parametrize("n", [256, 1000, 4096])
def test_pass_at_k_large_n_matches_exact_and_product_form(n):
    rng = np.random.default_rng(n)
    c = np.concatenate([[0, 1, 2, n // 2, n - 1, n], rng.integers(0, n + 1, size=40)])
    nn = np.full_like(c, n)
    for k in [1, 2, 7, 64, 256, n // 2, n]:
        got = pass_at_k(nn, c, k)
        exact = np.array([float(exact_pass_at_k(n, int(ci), k)) for ci in c])
        product = np.array([pass_at_k_reference(n, int(ci), k) for ci in c])
        assert got.dtype == np.float64
        assert np.all(np.isfinite(got))
        # relative accuracy matters where Pass@k is tiny (c = 1, k = 1 at n = 4096 is 2.4e-4)
        np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(got, product, rtol=1e-9, atol=1e-300)


def test_pass_at_k_is_monotone_in_k_and_in_c():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 300, size=500)
    c = (rng.random(500) * (n + 1)).astype(np.int64)
    ks = list(range(1, 300))
    curve = pass_at_k_curve(n, c, ks)
    assert np.all(np.diff(curve, axis=0) >= -1e-12)
    nn = np.full(51, 50)
    cc = np.arange(51)
    for k in (1, 5, 25, 50):
        assert np.all(np.diff(pass_at_k(nn, cc, k)) >= -1e-12)


def test_pass_at_k_edges_c_zero_and_c_n():
    n = np.array([1, 5, 256, 4096])
    assert np.all(pass_at_k(n, np.zeros(4, dtype=int), 1) == 0.0)
    for k in (1, 2, 256):
        assert np.all(pass_at_k(n, n, k) == 1.0)
        assert np.all(pass_at_k(n[n >= k], np.zeros((n >= k).sum(), dtype=int), k) == 0.0)
    # k = n: any correct sample makes Pass@n = 1
    assert pass_at_k([10], [1], 10)[0] == 1.0
    # fewer incorrect samples than k: every k-subset holds a correct one
    assert pass_at_k([10], [8], 3)[0] == 1.0


def test_pass_at_k_short_problems_follow_the_documented_rule():
    n = np.array([3, 3, 0, 8])
    c = np.array([1, 0, 0, 2])
    clip = pass_at_k(n, c, 4)
    np.testing.assert_array_equal(clip[:3], [1.0, 0.0, 0.0])
    assert clip[3] == pytest.approx(float(exact_pass_at_k(8, 2, 4)))
    nan = pass_at_k(n, c, 4, short="nan")
    assert np.isnan(nan[:3]).all() and nan[3] == clip[3]
    assert mean_over_problems(nan) == pytest.approx(clip[3])
    with pytest.raises(ValueError, match="fewer than k=4 samples"):
        pass_at_k(n, c, 4, short="raise")


@pytest.mark.parametrize(
    ("n", "c", "k", "exc", "match"),
    [
        ([3], [4], 1, ValueError, "c must be <= n"),
        ([3], [-1], 1, ValueError, "c must be >= 0"),
        ([3, 4], [1], 1, ValueError, "same shape"),
        ([3.5], [1], 1, ValueError, "integer counts"),
        (["3"], [1], 1, TypeError, "integer array"),
        ([3], [1], 0, ValueError, "k must be >= 1"),
        ([3], [1], 1.0, TypeError, "k must be an int"),
    ],
)
def test_pass_at_k_rejects_bad_input_with_a_clear_error(n, c, k, exc, match):
    with pytest.raises(exc, match=match):
        pass_at_k(n, c, k)


def test_pass_at_k_accepts_integral_floats_and_keeps_shape():
    got = pass_at_k(np.array([[4.0, 4.0]]), np.array([[1.0, 0.0]]), 2)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, [[0.5, 0.0]])


def test_default_ks():
    assert default_ks(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(1) == [1]


def test_mean_at_n_ragged_and_dense():
    np.testing.assert_allclose(mean_at_n([[1, 0, 1, 1], [0.0], []]), [0.75, 0.0, np.nan])
    np.testing.assert_allclose(mean_at_n(np.array([[1, 0], [1, 1]])), [0.5, 1.0])


def enumerate_maj(answers, correct, k):
    """maj@k by enumerating every k-subset (uniform tie-break, unanswered samples do not vote)."""
    values = {}
    for a, c in zip(answers, correct, strict=True):
        if a is not None:
            values.setdefault(a, []).append(c)
    value = {a: sum(v) / len(v) for a, v in values.items()}
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for sub in subsets:
        counts = {}
        for i in sub:
            if answers[i] is not None:
                counts[answers[i]] = counts.get(answers[i], 0) + 1
        if not counts:
            continue
        top = max(counts.values())
        tied = [a for a, cnt in counts.items() if cnt == top]
        total += Fraction(sum(Fraction(value[a]) for a in tied), len(tied))
    return total / len(subsets)


def test_maj_at_k_hand_made_cases():
    # A correct, B wrong. k=2 subsets: {A,A} -> 1, {A,B} twice -> tie 1/2 each: (1 + .5 + .5) / 3
    got = maj_at_k([["A", "A", "B"]], [[1, 1, 0]], [1, 2, 3], num_draws=20000, seed=1)
    assert got[0, 0] == pytest.approx(2 / 3)  # k = 1 is exact
    assert got[1, 0] == pytest.approx(2 / 3, abs=0.015)
    assert got[2, 0] == 1.0  # k = n: A wins 2-1, exact
    # plurality of a wrong answer beats the correct one at k = n
    got = maj_at_k([["7", "8", "8", "9", None]], [[1, 0, 0, 0, 0]], [5])
    assert got[0, 0] == 0.0
    # nobody answered: every vote fails; an exact tie at k = n is worth 1/2
    got = maj_at_k([[None, None], ["x", "y"]], [[0, 0], [1, 0]], [2])
    np.testing.assert_array_equal(got[:, 0], [0.0])
    assert got[0, 1] == 0.5


def test_maj_at_k_matches_subset_enumeration():
    rng = np.random.default_rng(3)
    answers, correct = [], []
    for _ in range(6):
        n = int(rng.integers(4, 9))
        ans = [None if rng.random() < 0.15 else str(rng.integers(0, 3)) for _ in range(n)]
        answers.append(ans)
        correct.append([a == "0" for a in ans])  # class "0" is the correct answer
    ks = [1, 2, 3, 4]
    got = maj_at_k(answers, correct, ks, num_draws=20000, seed=0)
    for p, (ans, cor) in enumerate(zip(answers, correct, strict=True)):
        for i, k in enumerate(ks):
            ref = float(enumerate_maj(ans, cor, k))
            assert got[i, p] == pytest.approx(ref, abs=0.02), (p, k)


def test_bootstrap_ci_basic_properties():
    mean, lo, hi = bootstrap_ci(np.full(50, 0.3))
    assert mean == pytest.approx(0.3) and lo == pytest.approx(0.3) and hi == pytest.approx(0.3)
    vals = np.random.default_rng(0).random((3, 200))
    m, lo, hi = bootstrap_ci(vals, seed=5)
    assert m.shape == (3,) and np.all(lo < m) and np.all(m < hi)
    m2, lo2, hi2 = bootstrap_ci(vals, seed=5)
    np.testing.assert_array_equal(lo, lo2)  # seeded
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(np.array([0.1, np.nan]))


def test_bootstrap_ci_covers_the_truth_at_about_the_nominal_rate():
    """Simulated benchmark: problems with success rates p ~ Beta(a, b), n samples each.

    The estimand is the population Pass@k, E[1 - (1 - p)^k] = 1 - B(a, b + k) / B(a, b), known exactly.
    """
    a, b, n, k, num_problems, reps = 0.6, 1.2, 16, 4, 120, 300
    truth = 1.0 - np.prod([(b + j) / (a + b + j) for j in range(k)])  # B(a, b+k)/B(a, b) as a product
    rng = np.random.default_rng(2024)
    covered = 0
    for r in range(reps):
        p = rng.beta(a, b, size=num_problems)
        c = rng.binomial(n, p)
        est = pass_at_k(np.full(num_problems, n), c, k)
        _, lo, hi = bootstrap_ci(est, num_boot=1000, seed=r)
        covered += lo <= truth <= hi
    rate = covered / reps
    assert 0.89 <= rate <= 0.99, rate


def test_paired_comparison_exact_sign_flip_and_counts():
    a = np.array([1.0, 1.0, 1.0, 0.5, 0.0])
    b = np.array([0.0, 0.0, 0.0, 0.5, 0.0])
    r = paired_comparison(a, b)
    # three non-zero differences of +1: 2^3 sign patterns, |sum| >= 3 for 2 of them
    assert r.exact_p and r.p_value == pytest.approx(0.25)
    assert (r.wins, r.losses, r.ties) == (3, 0, 2)
    assert r.diff == pytest.approx(0.6) and r.mean_a == pytest.approx(0.7)
    assert paired_comparison(a, a).p_value == 1.0


def test_paired_comparison_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(7)
    base = rng.random(300)
    better = np.clip(base + 0.05 + 0.05 * rng.standard_normal(300), 0, 1)
    r = paired_comparison(better, base, num_perm=4000)
    assert not r.exact_p and r.p_value < 0.01 and r.ci_low > 0
    noise = np.clip(base + 0.05 * rng.standard_normal(300), 0, 1)
    r0 = paired_comparison(noise, base, num_perm=4000, seed=1)
    assert r0.ci_low < 0 < r0.ci_high and r0.p_value > 0.05
    with pytest.raises(ValueError, match="same problems"):
        paired_comparison(base, base[:-1])
