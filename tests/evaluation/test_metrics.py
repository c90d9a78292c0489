"""Tests for busgen_monai.evaluation.metrics: agreement with scikit-learn and brute-force oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from busgen_monai.evaluation.metrics import (
    auprc,
    auroc,
    binary_report,
    confusion_counts,
    metrics_at_threshold,
    midranks,
    precision_recall_curve,
    roc_curve,
    threshold_at_sensitivity,
    threshold_at_specificity,
    youden_threshold,
)


def _tied_data(seed: int, n: int = 300, levels: int = 7):
    """Labels and heavily tied scores (few distinct values), both classes present."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    s = np.round(rng.normal(size=n) + 0.8 * y, 1)
    s = np.clip(np.round(s * levels / 4) / levels, -1, 1)  # coarse grid -> many ties
    return y, s


def _brute_force_points(y, s):
    """(threshold, sensitivity, specificity) at every observed score and at +inf, by explicit loops."""
    pts = []
    for t in list(np.unique(s)) + [math.inf]:
        tp = sum(1 for yi, si in zip(y, s) if yi == 1 and si >= t)
        tn = sum(1 for yi, si in zip(y, s) if yi == 0 and si < t)
        pts.append((t, tp / sum(y), tn / (len(y) - sum(y))))
    return pts


def test_midranks_ties():
    np.testing.assert_array_equal(midranks([3, 1, 3, 2, 3]), [4.0, 1.0, 4.0, 2.0, 4.0])
    np.testing.assert_array_equal(midranks([5.0]), [1.0])


@pytest.mark.parametrize("seed", range(5))
def test_auroc_auprc_match_sklearn_with_ties(seed):
    y, s = _tied_data(seed)
    assert len(np.unique(s)) < len(s) / 10  # the data really are tied
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    # booleans are accepted as labels
    assert auroc(y.astype(bool), s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_curves_match_sklearn(seed):
    y, s = _tied_data(seed)
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf
    prec, rec, pthr = precision_recall_curve(y, s)
    sk_p, sk_r, sk_t = skm.precision_recall_curve(y, s)
    # sklearn: increasing thresholds plus a final (precision 1, recall 0) point
    np.testing.assert_allclose(prec, sk_p[:-1][::-1], atol=1e-12)
    np.testing.assert_allclose(rec, sk_r[:-1][::-1], atol=1e-12)
    np.testing.assert_allclose(pthr, sk_t[::-1])


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.25, 0.4, 2.0])
def test_threshold_metrics_match_sklearn(threshold):
    y, s = _tied_data(11)
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert confusion_counts(y, s, threshold) == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    m = metrics_at_threshold(y, s, threshold)
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["npv"] == pytest.approx(skm.precision_score(1 - y, 1 - pred, zero_division=np.nan), nan_ok=True)
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred, zero_division=np.nan), nan_ok=True)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=np.nan), nan_ok=True)
    if threshold == 2.0:  # nothing called positive: PPV undefined, not 0
        assert math.isnan(m["ppv"]) and m["specificity"] == 1.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.0, 0.33, 0.5, 0.8, 0.9, 0.95, 1.0])
def test_matched_thresholds_against_brute_force(seed, target):
    y, s = _tied_data(seed, n=120)
    pts = _brute_force_points(y, s)
    # matched specificity: smallest specificity >= target; among those the best sensitivity
    ok = [p for p in pts if p[2] >= target - 1e-12]
    best_spec = min(p[2] for p in ok)
    best = max((p for p in ok if p[2] == best_spec), key=lambda p: p[1])
    t = threshold_at_specificity(y, s, target)
    m = metrics_at_threshold(y, s, t)
    assert m["specificity"] == pytest.approx(best[2]) and m["sensitivity"] == pytest.approx(best[1])
    assert m["specificity"] >= target
    # matched sensitivity: smallest sensitivity >= target; among those the best specificity
    ok = [p for p in pts if p[1] >= target - 1e-12]
    best_sens = min(p[1] for p in ok)
    best = max((p for p in ok if p[1] == best_sens), key=lambda p: p[2])
    m = metrics_at_threshold(y, s, threshold_at_sensitivity(y, s, target))
    assert m["sensitivity"] == pytest.approx(best[1]) and m["specificity"] == pytest.approx(best[2])


@pytest.mark.parametrize("seed", range(4))
def test_youden_against_brute_force(seed):
    y, s = _tied_data(seed, n=150)
    best_j = max(p[1] + p[2] - 1 for p in _brute_force_points(y, s))
    m = metrics_at_threshold(y, s, youden_threshold(y, s))
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(best_j, abs=1e-12)


def test_binary_report_is_consistent():
    y, s = _tied_data(3)
    rep = binary_report(y, s, threshold=0.25, target_specificity=0.9, target_sensitivity=0.9)
    assert rep["n"] == len(y) and rep["n_positive"] + rep["n_negative"] == len(y)
    assert rep["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert rep["auprc"] == pytest.approx(skm.average_precision_score(y, s))
    assert rep["at_threshold"] == metrics_at_threshold(y, s, 0.25)
    assert rep["at_target_specificity"]["specificity"] >= 0.9
    assert rep["at_target_specificity"]["target"] == 0.9
    assert rep["at_target_sensitivity"]["sensitivity"] >= 0.9
    you = rep["youden"]
    assert you["youden_j"] == pytest.approx(you["sensitivity"] + you["specificity"] - 1)
    assert all(isinstance(v, (int, float)) for v in rep["at_threshold"].values())
    assert "at_target_specificity" not in binary_report(y, s)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0/1 labels"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite"):
        auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_at_specificity([0, 1], [0.1, 0.2], 1.5)
