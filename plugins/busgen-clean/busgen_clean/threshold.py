"""Threshold of the label check for a target precision of kept labels.

The filter keeps an item when the judge's probability of its conditioning label is >= ``t``. *Precision* is
the fraction of kept items whose label is right. It cannot be measured on generated data (the truth is unknown),
so it is estimated on real validation data, where labels are known, by pairing every real image with every
candidate label: the pair (image, true label) is a *right* item, each (image, other label) a *wrong* one.
``wrong_fraction`` is the assumed share of wrong items among the generated ones (right pairs weigh
``1 - wrong_fraction``, the ``C - 1`` wrong pairs of an image ``wrong_fraction / (C - 1)`` each); 0.5 is
deliberately pessimistic. The thresholds are swept and the lowest ``t`` whose precision, and that of every higher
threshold, reaches the target is chosen (the one keeping the most right items).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["precision_curve", "threshold_for_precision", "label_pairs", "choose_threshold"]

logger = logging.getLogger(__name__)


def precision_curve(scores: Any, correct: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each candidate threshold (the distinct scores, ascending): precision and recall of right items when
    keeping ``score >= t``. Returns ``(thresholds, precision, recall)``."""
    s = np.asarray(scores, np.float64).ravel()
    c = np.asarray(correct, bool).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64).ravel()
    if not (len(s) == len(c) == len(w)) or len(s) == 0:
        raise ValueError(f"scores, correct and weights must be non-empty and of equal length "
                         f"({len(s)}, {len(c)}, {len(w)})")
    order = np.argsort(-s, kind="stable")
    s, c, w = s[order], c[order], w[order]
    kept_right = np.cumsum(w * c)
    kept = np.cumsum(w)
    last = np.r_[s[1:] != s[:-1], True]  # last index of each distinct score (descending)
    thr, prec = s[last], kept_right[last] / np.maximum(kept[last], 1e-300)
    rec = kept_right[last] / max(float((w * c).sum()), 1e-300)
    return thr[::-1].copy(), prec[::-1].copy(), rec[::-1].copy()


def threshold_for_precision(scores: Any, correct: Any, target: float, weights: Any = None) -> dict[str, Any]:
    """Lowest threshold ``t`` such that keeping ``score >= t`` has precision >= ``target`` at ``t`` and at
    every higher candidate threshold.

    Returns ``{"threshold", "precision", "recall", "achieved"}`` (estimated on the given pairs). When no
    threshold reaches the target, the one with the highest precision is returned with ``achieved=False``.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    thr, prec, rec = precision_curve(scores, correct, weights)
    ok = prec >= target - 1e-12
    suffix_ok = np.flip(np.logical_and.accumulate(np.flip(ok)))  # ok here and at every higher threshold
    if suffix_ok.any():
        i = int(np.argmax(suffix_ok))
        return {"threshold": float(thr[i]), "precision": float(prec[i]), "recall": float(rec[i]), "achieved": True}
    i = int(np.argmax(prec))
    logger.warning("no threshold reaches precision %.3f (best %.3f at t=%.3f)", target, prec[i], thr[i])
    return {"threshold": float(thr[i]), "precision": float(prec[i]), "recall": float(rec[i]), "achieved": False}


def label_pairs(proba: np.ndarray, labels: Sequence[int], wrong_fraction: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, candidate label) pairs of real images with known labels: ``(scores, correct, weights)``."""
    proba = np.asarray(proba, np.float64)
    n, c = proba.shape
    if not 0.0 < wrong_fraction < 1.0:
        raise ValueError(f"wrong_fraction must be in (0, 1), got {wrong_fraction}")
    labels = np.asarray(labels)
    scores = proba.ravel()
    correct = (np.arange(c)[None, :] == labels[:, None]).ravel()
    weights = np.where(correct, 1.0 - wrong_fraction, wrong_fraction / max(c - 1, 1))
    return scores, correct, weights


def choose_threshold(judge: Any, validation: str | os.PathLike | Mapping, target_precision: float,
                     splits: Sequence[str] | None = ("validation",), wrong_fraction: float = 0.5) -> dict[str, Any]:
    """Threshold of the label check for ``target_precision`` of kept labels, estimated on real labelled data.

    Args:
        judge: a :class:`busgen_clean.judge.Judge` (or its folder).
        validation: real datalist with labels the judge did not train on.
        target_precision: wanted fraction of kept items whose label is right.
        splits: splits of ``validation`` to use (``None``: all; falls back to all when these are empty).
        wrong_fraction: assumed share of wrong labels among the items to clean (see the module docstring).

    Returns:
        ``{"threshold", "precision", "recall", "achieved", "n_images", "target_precision", "wrong_fraction"}``.
    """
    from .judge import Judge, read_split_items

    if not isinstance(judge, Judge):
        judge = Judge.load(judge)
    items, base, _ = read_split_items(validation, splits)
    if not items and splits is not None:
        items, base, _ = read_split_items(validation, None)
    idx = {c: i for i, c in enumerate(judge.classes)}
    items = [it for it in items if str(it.get(judge.label_key)) in idx]
    if not items:
        raise ValueError(f"no validation items with a {judge.label_key!r} label in {judge.classes}")
    proba = judge.predict_proba(items, base)
    labels = [idx[str(it[judge.label_key])] for it in items]
    scores, correct, weights = label_pairs(proba, labels, wrong_fraction)
    res = threshold_for_precision(scores, correct, target_precision, weights=weights)
    return {**res, "n_images": len(items), "target_precision": float(target_precision),
            "wrong_fraction": float(wrong_fraction)}
