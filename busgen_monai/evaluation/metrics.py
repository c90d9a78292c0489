"""Threshold-free and threshold-based metrics for binary classifiers.

Conventions used throughout this module:

* ``y_true`` holds 0/1 labels (1 = positive class, e.g. malignant); booleans are accepted.
* ``y_score`` holds real-valued scores where *higher means more likely positive*.
* A case is called positive at threshold ``t`` when ``y_score >= t`` (the convention of
  :func:`sklearn.metrics.roc_curve`, whose thresholds are observed score values).
* Ratios whose denominator is zero (e.g. PPV when nothing is called positive) are ``nan``.

Every function is pure numpy, O(N log N) at worst, and validated against scikit-learn in
``tests/evaluation/test_metrics.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "check_binary_inputs",
    "midranks",
    "auroc",
    "auprc",
    "roc_curve",
    "precision_recall_curve",
    "confusion_counts",
    "metrics_at_threshold",
    "threshold_at_specificity",
    "threshold_at_sensitivity",
    "youden_threshold",
    "binary_report",
]


# --------------------------------------------------------------------------------------------- inputs
def check_binary_inputs(
    y_true: Any, y_score: Any, *, require_both_classes: bool = False, name: str = "y_score"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert binary labels and scores.

    Args:
        y_true: array-like of shape (N,) with values in {0, 1} (or booleans).
        y_score: array-like of shape (N,) with finite real scores.
        require_both_classes: raise if ``y_true`` holds only one class.
        name: name of the score argument used in error messages.

    Returns:
        ``(y_true, y_score)`` as an int64 array of 0/1 and a float64 array, both of shape (N,).

    Raises:
        ValueError: naming the argument and what to fix.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D (one label per case); got shape {y.shape}.")
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per case); got shape {s.shape}.")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"y_true and {name} must have the same length; got {y.shape[0]} labels and {s.shape[0]} scores."
        )
    if y.shape[0] == 0:
        raise ValueError("y_true is empty: at least one case is needed.")
    if y.dtype == bool:
        y = y.astype(np.int64)
    else:
        try:
            yf = y.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                "y_true must contain only 0/1 labels (1 = positive class); "
                f"got non-numeric values such as {y.ravel()[:3].tolist()}."
            ) from err
        bad = ~np.isin(yf, (0.0, 1.0))
        if bad.any():
            raise ValueError(
                "y_true must contain only 0/1 labels (1 = positive class); "
                f"got {np.unique(y[bad])[:5].tolist()}. Map your classes to 0/1 first."
            )
        y = yf.astype(np.int64)
    if not np.all(np.isfinite(s)):
        n_bad = int((~np.isfinite(s)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (nan/inf); remove or impute them first.")
    if require_both_classes:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.shape[0]:
            raise ValueError(
                "y_true must contain both classes for this metric; got "
                f"{n_pos} positive and {y.shape[0] - n_pos} negative case(s)."
            )
    return y, s


def midranks(x: Any) -> np.ndarray:
    """1-based ranks of ``x`` where tied values share the mean of their ranks ("midranks").

    Args:
        x: array-like of shape (N,).

    Returns:
        float64 array of shape (N,); e.g. ``midranks([3, 1, 3]) == [2.5, 1.0, 2.5]``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)
    # ranks start+1 ... end (1-based) -> their mean
    mean_rank = (starts + 1 + ends) / 2.0
    out = np.empty(n, dtype=np.float64)
    out[order] = np.repeat(mean_rank, ends - starts)
    return out


# ------------------------------------------------------------------------------------- ranking metrics
def auroc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic with midranks (ties count 1/2).

    ``AUC = (sum of positive midranks - m (m + 1) / 2) / (m n)`` for ``m`` positives and
    ``n`` negatives, i.e. ``P(score_pos > score_neg) + P(score_pos == score_neg) / 2``.

    Args:
        y_true: (N,) 0/1 labels with both classes present.
        y_score: (N,) scores, higher = more likely positive.

    Returns:
        The AUROC in [0, 1].
    """
    y, s = check_binary_inputs(y_true, y_score, require_both_classes=True)
    m = int(y.sum())
    n = y.shape[0] - m
    ranks = midranks(s)
    return float((ranks[y == 1].sum() - m * (m + 1) / 2.0) / (m * n))


def _auroc_weighted_batch(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of many re-weighted copies of one data set at once (used by the bootstrap).

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores.
        weights: (B, N) non-negative case multiplicities (e.g. bootstrap counts).

    Returns:
        (B,) AUROCs; ``nan`` for rows with zero positive or zero negative weight.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    starts = np.flatnonzero(np.concatenate(([True], ss[1:] != ss[:-1])))
    w = w[:, order]
    wp = w * y[order]
    wn = w - wp
    pos = np.add.reduceat(wp, starts, axis=1)  # (B, G) positive weight per tie group
    neg = np.add.reduceat(wn, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# Protocol used by busgen_monai.evaluation.stats.bootstrap_ci: a metric may expose a vectorised
# ``weighted_batch(y_true, y_score, weights (B, N)) -> (B,)`` twin to skip the per-replicate loop.
auroc.weighted_batch = _auroc_weighted_batch  # type: ignore[attr-defined]


def _binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct threshold, thresholds descending."""
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    yy = y[order]
    last_of_group = np.flatnonzero(np.concatenate((ss[1:] != ss[:-1], [True])))
    tps = np.cumsum(yy)[last_of_group].astype(np.float64)
    fps = (last_of_group + 1) - tps
    return fps, tps, ss[last_of_group]


def roc_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve at every distinct score (no point dropping).

    Args:
        y_true: (N,) 0/1 labels with both classes present.
        y_score: (N,) scores.

    Returns:
        ``(fpr, tpr, thresholds)``, each of shape (G + 1,) for G distinct scores; thresholds are
        descending and start with ``+inf`` (nothing called positive), so the curve runs from
        (0, 0) to (1, 1).
    """
    y, s = check_binary_inputs(y_true, y_score, require_both_classes=True)
    fps, tps, thr = _binary_clf_curve(y, s)
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    return fpr, tpr, np.concatenate(([np.inf], thr))


def precision_recall_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, thresholds descending.

    Args:
        y_true: (N,) 0/1 labels with at least one positive.
        y_score: (N,) scores.

    Returns:
        ``(precision, recall, thresholds)`` of shape (G,) each (recall increasing).
    """
    y, s = check_binary_inputs(y_true, y_score)
    if y.sum() == 0:
        raise ValueError("precision/recall are undefined without positive cases in y_true.")
    fps, tps, thr = _binary_clf_curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return precision, recall, thr


def auprc(y_true: Any, y_score: Any) -> float:
    """Area under the precision-recall curve as step-wise average precision.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds (no interpolation), the same
    estimator as :func:`sklearn.metrics.average_precision_score`.

    Args:
        y_true: (N,) 0/1 labels with at least one positive.
        y_score: (N,) scores.

    Returns:
        Average precision in [0, 1].
    """
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(steps * precision))


# ---------------------------------------------------------------------------------- threshold metrics
def confusion_counts(y_true: Any, y_score: Any, threshold: float) -> dict[str, int]:
    """Confusion-matrix counts when cases with ``y_score >= threshold`` are called positive.

    Returns:
        dict with integer ``tp``, ``fp``, ``tn``, ``fn``.
    """
    y, s = check_binary_inputs(y_true, y_score)
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _metrics_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    sens = _ratio(tp, tp + fn)
    ppv = _ratio(tp, tp + fp)
    return {
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "ppv": ppv,
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def metrics_at_threshold(y_true: Any, y_score: Any, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, accuracy and F1 at one threshold.

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores; a case is called positive when ``y_score >= threshold``.
        threshold: decision threshold (``+inf`` calls nothing positive).

    Returns:
        dict with ``threshold``, the six ratios (``nan`` where the denominator is 0) and the
        counts ``tp``, ``fp``, ``tn``, ``fn``.
    """
    counts = confusion_counts(y_true, y_score, threshold)
    out: dict[str, float] = {"threshold": float(threshold)}
    out.update(_metrics_from_counts(**counts))
    out.update(counts)
    return out


def _operating_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """All candidate thresholds (descending, starting at +inf) with their tp and tn counts."""
    fps, tps, thr = _binary_clf_curve(y, s)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    tp = np.concatenate(([0.0], tps))
    tn = n_neg - np.concatenate(([0.0], fps))
    return np.concatenate(([np.inf], thr)), tp, tn, n_pos, n_neg


def _check_target(target: float, name: str) -> float:
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {target}.")
    return target


def threshold_at_specificity(y_true: Any, y_score: Any, target: float) -> float:
    """Threshold whose specificity on these data is >= ``target`` and closest to it.

    Among the thresholds reaching the closest specificity, the lowest one (highest
    sensitivity) is returned. This is how a model is put at a reader's specificity
    ("sensitivity at matched specificity").

    Args:
        y_true: (N,) 0/1 labels with both classes.
        y_score: (N,) scores.
        target: required specificity in [0, 1].

    Returns:
        An observed score value, or ``+inf`` when only calling nothing positive reaches the target.
    """
    target = _check_target(target, "target specificity")
    y, s = check_binary_inputs(y_true, y_score, require_both_classes=True)
    thr, _, tn, _, n_neg = _operating_points(y, s)
    # tn is non-increasing as the threshold decreases; keep the last index with tn/n_neg >= target
    ok = tn >= target * n_neg - 1e-9 * n_neg
    return float(thr[np.flatnonzero(ok)[-1]])


def threshold_at_sensitivity(y_true: Any, y_score: Any, target: float) -> float:
    """Threshold whose sensitivity on these data is >= ``target`` and closest to it.

    Among the thresholds reaching the closest sensitivity, the highest one (highest
    specificity) is returned.

    Args:
        y_true: (N,) 0/1 labels with both classes.
        y_score: (N,) scores.
        target: required sensitivity in [0, 1].

    Returns:
        An observed score value (``+inf`` if ``target`` is 0).
    """
    target = _check_target(target, "target sensitivity")
    y, s = check_binary_inputs(y_true, y_score, require_both_classes=True)
    thr, tp, _, n_pos, _ = _operating_points(y, s)
    ok = tp >= target * n_pos - 1e-9 * n_pos
    return float(thr[np.flatnonzero(ok)[0]])


def youden_threshold(y_true: Any, y_score: Any) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Ties in J are broken towards the highest threshold (the most specific operating point).

    Returns:
        An observed score value.
    """
    y, s = check_binary_inputs(y_true, y_score, require_both_classes=True)
    thr, tp, tn, n_pos, n_neg = _operating_points(y, s)
    # J * n_pos * n_neg on an exact integer scale, so float rounding cannot break ties
    j_scaled = tp * n_neg + tn * n_pos
    best = int(np.flatnonzero(j_scaled == j_scaled.max())[0])
    return float(thr[best])


def _as_float(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def binary_report(
    y_true: Any,
    y_score: Any,
    threshold: float = 0.5,
    target_specificity: float | None = None,
    target_sensitivity: float | None = None,
) -> dict[str, Any]:
    """All point estimates clinicians ask for, in one JSON-friendly dict.

    Args:
        y_true: (N,) 0/1 labels with both classes.
        y_score: (N,) scores (higher = more likely positive).
        threshold: fixed decision threshold (``y_score >= threshold`` is positive).
        target_specificity: if given, also report the operating point at matched specificity
            (see :func:`threshold_at_specificity`).
        target_sensitivity: if given, also report the operating point at matched sensitivity.

    Returns:
        dict with ``n``, ``n_positive``, ``n_negative``, ``prevalence``, ``auroc``, ``auprc``,
        ``at_threshold``, ``youden`` (with ``youden_j``) and, when requested,
        ``at_target_specificity`` / ``at_target_sensitivity`` (each with its ``target``).
        Each operating point holds threshold, sensitivity, specificity, PPV, NPV, accuracy, F1
        and the confusion counts.
    """
    y, s = check_binary_inputs(y_true, y_score, require_both_classes=True)
    n_pos = int(y.sum())
    report: dict[str, Any] = {
        "n": int(y.shape[0]),
        "n_positive": n_pos,
        "n_negative": int(y.shape[0] - n_pos),
        "prevalence": n_pos / y.shape[0],
        "auroc": auroc(y, s),
        "auprc": auprc(y, s),
        "at_threshold": metrics_at_threshold(y, s, threshold),
    }
    you = metrics_at_threshold(y, s, youden_threshold(y, s))
    you["youden_j"] = you["sensitivity"] + you["specificity"] - 1.0
    report["youden"] = you
    if target_specificity is not None:
        op = metrics_at_threshold(y, s, threshold_at_specificity(y, s, target_specificity))
        op["target"] = float(target_specificity)
        report["at_target_specificity"] = op
    if target_sensitivity is not None:
        op = metrics_at_threshold(y, s, threshold_at_sensitivity(y, s, target_sensitivity))
        op["target"] = float(target_sensitivity)
        report["at_target_sensitivity"] = op
    return {k: ({kk: _as_float(vv) for kk, vv in v.items()} if isinstance(v, dict) else _as_float(v))
            for k, v in report.items()}
