"""Reader-study statistics against hand-computed textbook cases (and scipy / scikit-learn as second oracles)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from busgen_readerstudy.stats import (
    binomial_test,
    clopper_pearson,
    cohen_kappa,
    fleiss_kappa,
    fleiss_table,
    proportion,
)


# ------------------------------------------------------------------------------------- Clopper-Pearson
def test_clopper_pearson_closed_forms_at_the_edges():
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)  (the "rule of three" family)
    for n in (1, 5, 10, 30, 150):
        lo, hi = clopper_pearson(0, n)
        assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-12)
        lo, hi = clopper_pearson(n, n)
        assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / n), abs=1e-12)
    # n = 1, k = 0 at 95 %: [0, 0.975]
    assert clopper_pearson(0, 1) == pytest.approx((0.0, 0.975))


def test_clopper_pearson_published_values():
    # 5 of 10: 0.1871 - 0.8129 (exact interval tables, e.g. Newcombe 1998 / Agresti & Coull 1998)
    assert clopper_pearson(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    # Newcombe 1998 (Stat Med 17:857), Table II, method 5 (exact): his four examples
    assert clopper_pearson(81, 263) == pytest.approx((0.2527, 0.3676), abs=1e-4)
    assert clopper_pearson(15, 148) == pytest.approx((0.0578, 0.1617), abs=1e-4)
    assert clopper_pearson(0, 20) == pytest.approx((0.0, 0.1684), abs=1e-4)
    assert clopper_pearson(1, 29) == pytest.approx((0.0009, 0.1776), abs=1e-4)


def test_clopper_pearson_matches_the_binomial_tail_definition():
    # the interval's ends are where the one-sided exact tails equal alpha / 2
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(2, 300))
        k = int(rng.integers(1, n))
        lo, hi = clopper_pearson(k, n, alpha=0.1)
        assert sps.binom.sf(k - 1, n, lo) == pytest.approx(0.05, rel=1e-7)  # P(X >= k | lo)
        assert sps.binom.cdf(k, n, hi) == pytest.approx(0.05, rel=1e-7)     # P(X <= k | hi)
        ref = sps.binomtest(k, n).proportion_ci(0.9, method="exact")
        assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-10)


def test_clopper_pearson_refuses_bad_counts():
    for k, n in ((-1, 5), (6, 5), (0, 0)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            clopper_pearson(k, n)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson(1, 2, alpha=1.5)


def test_exact_binomial_test_by_hand():
    # 7 of 10 against 0.5: P(X >= 7) = (120 + 45 + 10 + 1) / 1024 = 176 / 1024; two-sided doubles it
    assert binomial_test(7, 10) == pytest.approx(352 / 1024)
    assert binomial_test(5, 10) == pytest.approx(1.0)
    # 0 of 6: 2 * (1/2)^6
    assert binomial_test(0, 6) == pytest.approx(2 / 64)
    p = proportion(7, 10)
    assert (p.k, p.n, p.estimate, p.p_value) == (7, 10, 0.7, pytest.approx(352 / 1024))
    assert proportion(0, 0) is None


# ------------------------------------------------------------------------------------------ Cohen
def _pairs(counts: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    a, b = [], []
    for (x, y), c in counts.items():
        a += [x] * c
        b += [y] * c
    return a, b


def test_cohen_kappa_textbook_examples():
    # 50 proposals, two readers: yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    # p_o = 35/50 = 0.7; p_e = (25/50)(30/50) + (25/50)(20/50) = 0.5; kappa = 0.2 / 0.5 = 0.4
    a, b = _pairs({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    # 45/15/25/15 of 100: p_o = 0.60, p_e = 0.6*0.7 + 0.4*0.3 = 0.54, kappa = 0.06/0.46 = 3/23
    a, b = _pairs({("yes", "yes"): 45, ("yes", "no"): 15, ("no", "yes"): 25, ("no", "no"): 15})
    assert cohen_kappa(a, b) == pytest.approx(3 / 23)
    # 25/35/5/35: p_o = 0.60, p_e = 0.6*0.3 + 0.4*0.7 = 0.46, kappa = 0.14/0.54 = 7/27
    a, b = _pairs({("yes", "yes"): 25, ("yes", "no"): 35, ("no", "yes"): 5, ("no", "no"): 35})
    assert cohen_kappa(a, b) == pytest.approx(7 / 27)
    # perfect agreement, and agreement no better than chance
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa(["a", "a"], ["a", "a"]))


def test_weighted_kappa_by_hand_and_against_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    # 3 ordinal categories, 4 cases: (1,1) (1,2) (2,3) (3,3)
    # linear weights |i-j|: observed disagreement = (0 + 1 + 1 + 0)/4 = 0.5
    # marginals a = (2, 1, 1)/4, b = (1, 1, 2)/4; expected = sum |i-j| a_i b_j
    a, b = ["1", "1", "2", "3"], ["1", "2", "3", "3"]
    pa, pb = np.array([2, 1, 1]) / 4, np.array([1, 1, 2]) / 4
    w = np.abs(np.subtract.outer(np.arange(3), np.arange(3)))
    expected = float((w * np.outer(pa, pb)).sum())
    assert cohen_kappa(a, b, ["1", "2", "3"], weights="linear") == pytest.approx(1 - 0.5 / expected)
    rng = np.random.default_rng(1)
    cats = ["2", "3", "4a", "4b", "5"]
    for weights in (None, "linear", "quadratic"):
        x = list(rng.choice(cats, 60))
        y = [c if rng.random() < 0.5 else str(rng.choice(cats)) for c in x]
        ref = cohen_kappa_score(x, y, labels=cats, weights=weights)
        assert cohen_kappa(x, y, cats, weights=weights) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="not among the categories"):
        cohen_kappa(["x"], ["2"], cats)
    with pytest.raises(ValueError, match="same cases"):
        cohen_kappa(["2"], ["2", "3"])


# ------------------------------------------------------------------------------------------ Fleiss
# The worked example used to teach Fleiss' kappa (10 subjects, 14 raters, 5 categories; e.g. Wikipedia's
# "Fleiss' kappa" article): published P_bar = 0.378, P_e = 0.213, kappa = 0.210.
FLEISS_EXAMPLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_worked_example():
    # by hand: column totals 20, 28, 39, 21, 32 of 140 -> P_e = 4170 / 19600
    # P_i = (sum_j n_ij^2 - 14) / 182; sum over subjects of the numerators = 688 -> P_bar = 688 / 1820
    p_bar, p_e = Fraction(688, 1820), Fraction(4170, 19600)
    kappa = (p_bar - p_e) / (1 - p_e)
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(float(kappa), abs=1e-12)
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_two_raters_small_cases():
    # two raters, two subjects, both agree on different categories: P_bar = 1, P_e = 0.5 -> kappa = 1
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)
    # every subject split 1-1: P_bar = 0, P_e = 0.5 -> kappa = -1
    assert fleiss_kappa([[1, 1], [1, 1], [1, 1]]) == pytest.approx(-1.0)
    # 3 raters, 4 subjects: rows (3,0) (2,1) (1,2) (0,3): P_i = 1, 1/3, 1/3, 1; P_bar = 2/3; P_e = 0.5 -> 1/3
    assert fleiss_kappa([[3, 0], [2, 1], [1, 2], [0, 3]]) == pytest.approx(1 / 3)
    table = fleiss_table([["real", "real", "real"], ["real", "real", "generated"]], ["real", "generated"])
    assert table.tolist() == [[3, 0], [2, 1]]
    assert np.isnan(fleiss_kappa([[3, 0], [3, 0]]))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 2]])
