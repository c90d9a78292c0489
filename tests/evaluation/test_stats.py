"""Tests for busgen_monai.evaluation.stats: DeLong against an independent slow oracle and closed-form cases,
bootstrap coverage and cluster resampling, permutation tests, clustering scores."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats as sps

from busgen_monai.evaluation.metrics import auroc
from busgen_monai.evaluation.stats import (
    bootstrap_ci,
    cluster_scores,
    compare_sensitivity_specificity,
    delong_auc_variance,
    delong_ci,
    delong_covariance,
    delong_test,
    paired_permutation_test,
)

# ----------------------------------------------------------------------------------------------- DeLong
def _slow_delong(y, scores):
    """Independent oracle: DeLong et al. (1988) structural components with explicit O(m n) loops."""
    y = list(y)
    pos = [i for i, v in enumerate(y) if v == 1]
    neg = [i for i, v in enumerate(y) if v == 0]
    m, n = len(pos), len(neg)

    def psi(a, b):
        return 1.0 if a > b else (0.5 if a == b else 0.0)

    v10, v01, aucs = [], [], []
    for s in scores:
        kernel = [[psi(s[i], s[j]) for j in neg] for i in pos]
        v10.append([sum(row) / n for row in kernel])
        v01.append([sum(kernel[a][b] for a in range(m)) / m for b in range(n)])
        aucs.append(sum(map(sum, kernel)) / (m * n))
    k = len(scores)
    cov = np.zeros((k, k))
    for r in range(k):
        for c in range(k):
            s10 = sum((v10[r][i] - aucs[r]) * (v10[c][i] - aucs[c]) for i in range(m)) / (m - 1)
            s01 = sum((v01[r][j] - aucs[r]) * (v01[c][j] - aucs[c]) for j in range(n)) / (n - 1)
            cov[r, c] = s10 / m + s01 / n
    return np.array(aucs), cov


@pytest.mark.parametrize("seed", range(3))
def test_fast_delong_matches_slow_structural_components(seed):
    rng = np.random.default_rng(seed)
    n = 70
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    base = rng.normal(size=n) + y
    scores = np.stack([
        np.round(base, 1),  # ties
        np.round(0.6 * base + rng.normal(size=n), 0),  # heavy ties, correlated
        rng.normal(size=n) + 0.3 * y,
    ])
    aucs, cov = delong_covariance(y, scores)
    aucs_slow, cov_slow = _slow_delong(y, scores)
    np.testing.assert_allclose(aucs, aucs_slow, atol=1e-12, rtol=0)
    np.testing.assert_allclose(cov, cov_slow, atol=1e-12, rtol=0)


# Hanley & McNeil (1982), "The meaning and use of the area under a receiver operating characteristic (ROC) curve",
# Radiology 143:29-36, Table I: 109 CT images read on a 5-point scale (1 = definitely normal ... 5 = definitely
# abnormal). The same table is the worked example of the Stata Reference Manual, [R] roctab ("webuse hanley"), whose
# default standard error is DeLong's; it prints: ROC area 0.8932, Std. Err. 0.0307, asymptotic normal 95 % CI
# 0.83295 - 0.95339. (Hanley & McNeil's own SE, 0.032, uses their exponential approximation, not DeLong.)
HANLEY_MCNEIL_NORMAL = (33, 6, 6, 11, 2)  # counts of ratings 1..5 among the 58 normal images
HANLEY_MCNEIL_ABNORMAL = (3, 2, 2, 11, 33)  # and among the 51 abnormal images


def _from_counts(neg_counts, pos_counts):
    ratings = np.arange(1, len(neg_counts) + 1, dtype=float)
    y = np.r_[np.zeros(sum(neg_counts), int), np.ones(sum(pos_counts), int)]
    s = np.r_[np.repeat(ratings, neg_counts), np.repeat(ratings, pos_counts)]
    return y, s


def test_delong_matches_published_worked_example_hanley_mcneil_stata():
    y, s = _from_counts(HANLEY_MCNEIL_NORMAL, HANLEY_MCNEIL_ABNORMAL)
    assert len(y) == 109 and y.sum() == 51
    auc, var = delong_auc_variance(y, s)
    assert abs(auc - 0.8932) < 1e-4
    assert abs(np.sqrt(var) - 0.0307) < 1e-4  # the published DeLong standard error (4 decimals)
    _, lo, hi = delong_ci(y, s)
    assert abs(lo - 0.83295) < 1e-5 and abs(hi - 0.95339) < 1e-5  # printed to 5 decimals
    # the published table gives the exact AUC as a ratio of pair counts: 2642 / (51 * 58)
    assert auc == pytest.approx(2642 / 2958, abs=1e-12)
    # DeLong's test of this AUC against a useless reader (all ratings tied, AUC 0.5, zero variance):
    # z = (AUC - 0.5) / SE, the published numbers give z = 12.81
    a, b, z, p, _ = delong_test(y, s, np.zeros_like(s))
    assert b == 0.5 and abs(z - (0.8932 - 0.5) / 0.0307) < 0.05 and p < 1e-30


def test_delong_closed_form_cases():
    # perfectly separated: AUC 1 and zero variance
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 1.0])
    assert delong_auc_variance(y, s) == (1.0, 0.0)
    assert delong_ci(y, s) == (1.0, 1.0, 1.0)
    auc_a, auc_b, z, p, _ = delong_test(y, s, s**2)
    assert (auc_a, auc_b, z, p) == (1.0, 1.0, 0.0, 1.0)
    # constant scores: AUC 1/2, all placements 1/2, zero variance
    assert delong_auc_variance(y, np.ones(7)) == (0.5, 0.0)
    # hand-computed: positives {2, 3}, negatives {1, 4}: V10 = (1/2, 1/2), V01 = (1, 0)
    # -> AUC 1/2, S10 = 0, S01 = 1/2, var = 0/2 + (1/2)/2 = 1/4
    auc, var = delong_auc_variance([1, 1, 0, 0], [2, 3, 1, 4])
    assert (auc, var) == (0.5, 0.25)
    with pytest.raises(ValueError, match="at least 2"):
        delong_auc_variance([1, 0, 0], [0.9, 0.1, 0.2])


# -------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_percentile_coverage_binormal():
    """Coverage of the 95% percentile CI of the AUC over 400 simulated binormal data sets
    (negatives N(0, 1), positives N(d, 1), true AUC = Phi(d / sqrt(2)) = 0.760), 60 + 60 cases each.
    200 replicates per CI (not 1,000) keeps the test under a second; the limits are then a little
    noisier. This seed gives 0.9175; offline runs gave 0.9405 (2,000 data sets, 200 replicates)
    and 0.950 (1,000 data sets, 1,000 replicates). Monte-Carlo SE with 400 sets is ~0.011, so the
    0.88-0.99 band is about 3 SE wide on either side of the nominal rate."""
    d = 1.0
    true_auc = sps.norm.cdf(d / np.sqrt(2.0))
    rng = np.random.default_rng(2024)
    y = np.repeat([0, 1], 60)
    covered = 0
    n_sets = 400
    for k in range(n_sets):
        s = rng.normal(size=120) + d * y
        ci = bootstrap_ci(auroc, y, s, n_boot=200, seed=k)
        covered += ci.lower <= true_auc <= ci.upper
    coverage = covered / n_sets
    assert 0.88 <= coverage <= 0.99, coverage


def test_bootstrap_fast_path_equals_generic_path():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.normal(size=2000) + y, 2)
    fast = bootstrap_ci(auroc, y, s, n_boot=1000, seed=3)
    slow = bootstrap_ci(lambda a, b: auroc(a, b), y, s, n_boot=1000, seed=3)  # no weighted_batch twin
    np.testing.assert_allclose(fast.replicates, slow.replicates, atol=1e-12, rtol=0)
    assert (fast.lower, fast.upper) == pytest.approx((slow.lower, slow.upper), abs=1e-12)
    assert fast.estimate == auroc(y, s) and fast.lower < fast.estimate < fast.upper
    assert fast.n_valid == 1000 and fast.n_skipped == 0 and fast.resampled == "cases"
    # reproducible with the seed, different with another seed
    assert bootstrap_ci(auroc, y, s, n_boot=50, seed=3).lower == bootstrap_ci(auroc, y, s, n_boot=50, seed=3).lower
    assert bootstrap_ci(auroc, y, s, n_boot=50, seed=3).lower != bootstrap_ci(auroc, y, s, n_boot=50, seed=4).lower


def test_cluster_bootstrap_keeps_patients_together():
    """Patients with 1-4 images each; the score encodes (patient, image), so every replicate can be
    decoded: each drawn patient must bring all its images, each exactly as often as it was drawn."""
    rng = np.random.default_rng(5)
    n_patients = 30
    sizes = rng.integers(1, 5, n_patients)
    patient = np.repeat(np.arange(n_patients), sizes)
    image = np.concatenate([np.arange(k) for k in sizes])
    y = (patient % 3 == 0).astype(int)  # patient-level label
    score = patient * 10.0 + image
    images_of = {p: set(image[patient == p]) for p in range(n_patients)}

    def record(store):
        def metric(yy, ss):
            store.append(Counter(ss.tolist()))
            return auroc(yy, ss)
        return metric

    seen = []
    ci = bootstrap_ci(record(seen), y, score, groups=patient, n_boot=100, seed=1)
    replicates = seen[1:]  # the first call is the full-data estimate
    assert len(replicates) == ci.n_valid and ci.resampled == "groups" and ci.n_units == n_patients

    def together(counter):
        per_patient = {}
        for value, times in counter.items():
            per_patient.setdefault(int(value // 10), {})[int(value % 10)] = times
        return all(
            set(imgs) == images_of[p] and len(set(imgs.values())) == 1 for p, imgs in per_patient.items()
        )

    assert all(together(c) for c in replicates)
    # some patient is drawn more than once somewhere (the check above is not vacuous)
    assert any(max(c.values()) > 1 for c in replicates)
    # resampling images instead breaks patients apart
    seen_cases = []
    bootstrap_ci(record(seen_cases), y, score, n_boot=100, seed=1)
    assert not all(together(c) for c in seen_cases[1:])


def test_cluster_bootstrap_width_with_duplicated_images():
    """Six identical images per patient carry no more information than one: the cluster CI matches
    the patient-level CI, while resampling images wrongly shrinks it by about sqrt(6)."""
    rng = np.random.default_rng(7)
    n_pat = 120
    y_pat = np.repeat([0, 1], n_pat // 2)
    s_pat = rng.normal(size=n_pat) + y_pat
    y_img, s_img, g_img = np.repeat(y_pat, 6), np.repeat(s_pat, 6), np.repeat(np.arange(n_pat), 6)

    def width(ci):
        return ci.upper - ci.lower

    w_pat = width(bootstrap_ci(auroc, y_pat, s_pat, n_boot=1000, seed=0))
    w_cluster = width(bootstrap_ci(auroc, y_img, s_img, groups=g_img, n_boot=1000, seed=0))
    w_naive = width(bootstrap_ci(auroc, y_img, s_img, n_boot=1000, seed=0))
    assert w_cluster == pytest.approx(w_pat, rel=0.15)
    assert w_naive < 0.6 * w_cluster


def test_bootstrap_skips_and_counts_single_class_replicates():
    y = np.zeros(12, dtype=int)
    y[0] = 1
    s = np.linspace(0, 1, 12)
    with pytest.warns(RuntimeWarning, match="skipped"):
        ci = bootstrap_ci(auroc, y, s, n_boot=2000, seed=0)
    # P(the single positive is never drawn) = (11/12)^12 = 0.352
    assert ci.n_skipped_single_class / 2000 == pytest.approx((11 / 12) ** 12, abs=0.035)
    assert ci.n_valid + ci.n_skipped == 2000
    assert np.all(np.isfinite(ci.replicates)) and ci.replicates.size == ci.n_valid
    d = ci.as_dict()
    assert d["n_skipped"] == ci.n_skipped and "replicates" not in d


@pytest.mark.parametrize("method", ["basic", "normal", "bca"])
def test_bootstrap_other_methods_agree_with_percentile_on_large_symmetric_case(method):
    rng = np.random.default_rng(11)
    y = np.repeat([0, 1], 300)
    s = rng.normal(size=600) + 0.8 * y
    ref = bootstrap_ci(auroc, y, s, n_boot=1000, seed=2)
    ci = bootstrap_ci(auroc, y, s, n_boot=1000, seed=2, method=method)
    assert ci.method == method and ci.lower < ci.estimate < ci.upper
    assert (ci.lower, ci.upper) == pytest.approx((ref.lower, ref.upper), abs=0.01)
    # and the bootstrap SE agrees with DeLong's
    assert ci.std_error == pytest.approx(np.sqrt(delong_auc_variance(y, s)[1]), rel=0.15)


def test_bootstrap_of_paired_auc_difference_agrees_with_delong():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 200)
    base = rng.normal(size=400)
    a = base + 1.0 * y + 0.5 * rng.normal(size=400)
    b = base + 0.6 * y + 0.5 * rng.normal(size=400)
    ci = bootstrap_ci(lambda yy, ss: auroc(yy, ss[:, 0]) - auroc(yy, ss[:, 1]), y, np.stack([a, b], 1), n_boot=500)
    auc_a, auc_b, _, _, cov = delong_test(y, a, b)
    assert ci.estimate == pytest.approx(auc_a - auc_b)
    se_delong = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert ci.std_error == pytest.approx(se_delong, rel=0.2)


def test_bootstrap_bad_arguments():
    y, s = [0, 1, 0, 1], [0.1, 0.9, 0.3, 0.6]
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(auroc, y, s, method="student")
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(auroc, y, s, groups=[1, 2])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(auroc, y, s, alpha=1.5)


# ------------------------------------------------------------------------------------------ permutation
def test_permutation_identical_readers_p_is_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 80)
    res = paired_permutation_test(a, a.copy(), n_perm=2000)
    assert res.p_value == 1.0 and res.statistic == 0.0 and res.n_discordant == 0
    assert res.exact_p_value == 1.0


def test_permutation_strong_difference_is_significant():
    rng = np.random.default_rng(1)
    a = np.ones(100, dtype=int)  # reader A right on every case
    b = (rng.random(100) < 0.5).astype(int)  # reader B right on about half
    res = paired_permutation_test(a, b, n_perm=10000, seed=0)
    assert res.p_value < 0.01
    assert res.p_value == pytest.approx(1 / 10001)  # nothing as extreme in 10,000 relabellings
    assert res.statistic == pytest.approx(a.mean() - b.mean())


def test_permutation_p_matches_exact_mcnemar():
    # 30 discordant pairs split 20 / 10: exact two-sided sign-test p = 2 P(Bin(30, 1/2) <= 10)
    a = np.array([1] * 20 + [0] * 10 + [1] * 40 + [0] * 10)
    b = np.array([0] * 20 + [1] * 10 + [1] * 40 + [0] * 10)
    res = paired_permutation_test(a, b, n_perm=10000, seed=3)
    exact = 2 * sps.binom.cdf(10, 30, 0.5)
    assert res.exact_p_value == pytest.approx(exact)
    mc_se = np.sqrt(exact * (1 - exact) / 10000)
    assert abs(res.p_value - exact) < 4 * mc_se
    assert res.n_discordant == 30 and res.n_cases == 80
    # reproducible; symmetric in (a, b)
    assert paired_permutation_test(a, b, n_perm=10000, seed=3).p_value == res.p_value
    assert paired_permutation_test(b, a, n_perm=10000, seed=3).p_value == res.p_value


def test_permutation_real_valued_outcomes_and_sens_spec_helper():
    rng = np.random.default_rng(4)
    x = rng.normal(size=50)
    res = paired_permutation_test(x + 1.0, x, n_perm=2000)
    assert res.p_value < 0.01 and res.exact_p_value is None
    y = np.repeat([0, 1], 50)
    pred_a = y.copy()  # perfect
    pred_b = np.where(rng.random(100) < 0.6, y, 1 - y)
    out = compare_sensitivity_specificity(y, pred_a, pred_b, n_perm=5000)
    assert out["sensitivity"].mean_a == 1.0 and out["specificity"].mean_a == 1.0
    assert out["sensitivity"].n_cases == 50 and out["specificity"].n_cases == 50
    assert out["sensitivity"].p_value < 0.01 and out["specificity"].p_value < 0.01
    with pytest.raises(ValueError, match="0/1 calls"):
        compare_sensitivity_specificity(y, pred_a, pred_b * 0.5)


# ------------------------------------------------------------------------------------------- clustering
def test_cluster_scores_separated_and_random():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    labels = np.repeat(["benign", "malignant", "normal"], 40)
    feats = centers[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 2))
    good = cluster_scores(feats, labels)
    assert good["n_clusters"] == 3
    assert good["nmi"] > 0.95 and good["ari"] > 0.95 and good["silhouette"] > 0.6
    shuffled = rng.permutation(labels)
    bad = cluster_scores(feats, shuffled)
    assert bad["nmi"] < 0.1 and abs(bad["ari"]) < 0.1 and bad["silhouette"] < 0.05
    assert cluster_scores(feats, labels) == good  # seeded
    with pytest.raises(ValueError, match="labels"):
        cluster_scores(feats, np.zeros(120))
