"""Detection metrics: matching, AP@IoU, AP for small lesions, FROC, and patient-bootstrap statistics.

Definitions (single class, ``lesion``):

* **Matching** (COCO / PASCAL greedy rule): over one image, detections in descending score order; each takes
  the still-unmatched ground-truth box with the highest IoU (``monai.data.box_utils.box_iou``) if that IoU is
  at least ``iou_threshold`` (true positive), else it is a false positive. A second detection on an
  already-matched box (a duplicate) is a false positive.
* **AP** is the all-point interpolated area under the precision-recall curve (PASCAL VOC 2010+, the
  ``precision envelope``) over all detections of all images, recall relative to all ground-truth boxes.
  Lesion-free images contribute false positives only. AP is undefined (``nan``) without ground truth.
* **AP_small** uses COCO's area-range rule with *relative* area ``(x2 - x1) * (y2 - y1)`` of the normalised
  box: ground-truth boxes at or above the threshold are ignored, detections matched to an ignored box are
  ignored, unmatched detections at or above the threshold are ignored. Thresholds: the paper's 0.068 and the
  30th percentile of the evaluated set's ground-truth areas ("smallest 30 %").
* **FROC**: sensitivity (matched ground-truth boxes / all) against mean false positives per image (all images,
  lesion-free ones included) as the score threshold falls; sensitivity at 0.5 / 1 / 2 / 4 FP per image is
  the highest sensitivity reached with at most that many.

Statistics: the project's ``busgen_monai.evaluation.stats.bootstrap_ci`` resamples *cases with a binary
label* and drops replicates holding one class only, which does not fit detection (every BUS-BRA image has a
lesion and AP is a function of the whole detection list). :func:`bootstrap_detection` therefore re-weights
images by drawn patients (all images of a drawn patient enter the replicate as often as it is drawn, the same
cluster bootstrap and percentile interval as ``bootstrap_ci``) and recomputes the metric from the matched
detections, which do not change under resampling. :func:`paired_bootstrap` compares two detectors on the
same images with the same replicates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.data.box_utils import box_iou

__all__ = [
    "PAPER_SMALL_AREA",
    "FROC_RATES",
    "MatchedDetections",
    "match_image",
    "match_detections",
    "average_precision",
    "ap_from_matches",
    "froc_curve",
    "froc_sensitivities",
    "small_area_threshold",
    "bootstrap_detection",
    "paired_bootstrap",
    "detection_summary",
]

#: the paper's small-lesion threshold on relative box area (the smallest 30 % of BUSGen's test lesions)
PAPER_SMALL_AREA = 0.068
FROC_RATES = (0.5, 1.0, 2.0, 4.0)


def _boxes(b: Any) -> np.ndarray:
    return np.asarray(b if b is not None else [], dtype=np.float64).reshape(-1, 4)


def _area(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def match_image(pred_boxes: Any, pred_scores: Any, gt_boxes: Any, iou_threshold: float = 0.5,
                max_area: float | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching of one image's detections to its ground truth.

    Args:
        pred_boxes: ``(D, 4)`` boxes (any common unit with ``gt_boxes``; normalised in this plugin).
        pred_scores: ``(D,)`` scores.
        gt_boxes: ``(G, 4)`` ground-truth boxes.
        iou_threshold: IoU needed for a match.
        max_area: area range ``[0, max_area)`` (COCO rule, see the module docstring); ``None``: all boxes count.

    Returns:
        ``(tp, ignore, n_gt)``: ``tp`` and ``ignore`` are ``(D,)`` 0/1 arrays in the input order; ``n_gt`` is the
        number of ground-truth boxes that count.
    """
    pb, gb = _boxes(pred_boxes), _boxes(gt_boxes)
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != pb.shape[0]:
        raise ValueError(f"{pb.shape[0]} boxes but {scores.shape[0]} scores")
    gt_ignore = np.zeros(gb.shape[0], bool) if max_area is None else _area(gb) >= max_area
    tp = np.zeros(pb.shape[0], np.int64)
    ignore = np.zeros(pb.shape[0], np.int64)
    if pb.shape[0] and gb.shape[0]:
        iou = np.asarray(box_iou(pb, gb), dtype=np.float64)  # (D, G)
    else:
        iou = np.zeros((pb.shape[0], gb.shape[0]))
    taken = np.zeros(gb.shape[0], bool)
    for d in np.argsort(-scores, kind="stable"):
        best, best_iou = -1, iou_threshold - 1e-12
        for pass_ignored in (False, True):  # real ground truth first, then ignored (COCO)
            for g in range(gb.shape[0]):
                if taken[g] or gt_ignore[g] != pass_ignored:
                    continue
                if iou[d, g] >= best_iou:
                    best, best_iou = g, iou[d, g]
            if best >= 0:
                break
        if best >= 0:
            taken[best] = True
            if gt_ignore[best]:
                ignore[d] = 1
            else:
                tp[d] = 1
        elif max_area is not None and _area(pb[d:d + 1])[0] >= max_area:
            ignore[d] = 1
    return tp, ignore, int((~gt_ignore).sum())


@dataclass
class MatchedDetections:
    """All detections of an evaluated set after matching (what every metric is computed from).

    Attributes:
        image: ``(D,)`` index of each detection's image.
        score: ``(D,)`` scores.
        tp: ``(D,)`` 1 for a true positive.
        ignore: ``(D,)`` 1 for a detection that does not count (area-range rule).
        n_gt: ``(I,)`` ground-truth boxes that count, per image.
        n_images: number of images ``I``.
    """

    image: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ignore: np.ndarray
    n_gt: np.ndarray
    n_images: int
    meta: dict = field(default_factory=dict)


def match_detections(predictions: Sequence[Mapping[str, Any]], truths: Sequence[Mapping[str, Any]],
                     iou_threshold: float = 0.5, max_area: float | None = None) -> MatchedDetections:
    """Match every image. ``predictions[i]``: ``{"boxes": (D, 4), "scores": (D,)}``; ``truths[i]``:
    ``{"boxes": (G, 4)}`` (same image order)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions but {len(truths)} ground-truth entries")
    img, sc, tp, ig, ngt = [], [], [], [], []
    for i, (p, t) in enumerate(zip(predictions, truths)):
        scores = np.asarray(p.get("scores", []), dtype=np.float64).reshape(-1)
        t_, ig_, n = match_image(p.get("boxes"), scores, t.get("boxes"), iou_threshold, max_area)
        img.append(np.full(scores.shape[0], i, np.int64))
        sc.append(scores)
        tp.append(t_)
        ig.append(ig_)
        ngt.append(n)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return MatchedDetections(cat(img, np.int64), cat(sc, np.float64), cat(tp, np.int64), cat(ig, np.int64),
                             np.asarray(ngt, np.int64), len(truths),
                             {"iou_threshold": iou_threshold, "max_area": max_area})


def average_precision(scores: Any, tp: Any, n_gt: float, weights: Any = None) -> float:
    """All-point interpolated AP of detections ``(scores, tp)`` against ``n_gt`` ground-truth boxes.

    ``weights`` (optional, ``(D,)``) count each detection that many times (bootstrap multiplicities);
    ``n_gt`` must be weighted the same way by the caller. Ties in score are broken by input order.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.asarray(tp, dtype=np.float64).reshape(-1)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if n_gt <= 0:
        return float("nan")
    if s.size == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    t, w = t[order], w[order]
    keep = w > 0
    t, w = t[keep], w[keep]
    if t.size == 0:
        return 0.0
    ctp = np.cumsum(w * t)
    cfp = np.cumsum(w * (1.0 - t))
    recall = ctp / float(n_gt)
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    # precision envelope (monotone from the right), then sum over recall steps
    env = np.maximum.accumulate(precision[::-1])[::-1]
    r_prev = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - r_prev) * env))


def ap_from_matches(m: MatchedDetections, image_weights: Any = None) -> float:
    """AP from :class:`MatchedDetections`, optionally with per-image multiplicities ``(I,)``."""
    iw = np.ones(m.n_images) if image_weights is None else np.asarray(image_weights, dtype=np.float64)
    keep = m.ignore == 0
    return average_precision(m.score[keep], m.tp[keep], float(iw @ m.n_gt), iw[m.image[keep]])


def froc_curve(m: MatchedDetections, image_weights: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fp_per_image, sensitivity, thresholds)`` as the score threshold falls through every detection score
    (starting at ``(0, 0)``)."""
    iw = np.ones(m.n_images) if image_weights is None else np.asarray(image_weights, dtype=np.float64)
    keep = m.ignore == 0
    s, t, w = m.score[keep], m.tp[keep].astype(np.float64), iw[m.image[keep]]
    order = np.argsort(-s, kind="stable")
    s, t, w = s[order], t[order], w[order]
    n_gt = float(iw @ m.n_gt)
    n_img = float(iw.sum())
    # one point per distinct score: the last index of each tie group
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.zeros(0, np.int64)
    ctp, cfp = np.cumsum(w * t), np.cumsum(w * (1 - t))
    sens = ctp[last] / n_gt if n_gt > 0 else np.full(last.size, np.nan)
    fpi = cfp[last] / max(n_img, 1e-12)
    return np.r_[0.0, fpi], np.r_[0.0, sens], np.r_[np.inf, s[last]]


def froc_sensitivities(m: MatchedDetections, rates: Sequence[float] = FROC_RATES, image_weights: Any = None) -> dict[str, float]:
    """Sensitivity at each FP-per-image rate, plus their mean (``mean``, the usual FROC score)."""
    fpi, sens, _ = froc_curve(m, image_weights)
    out = {}
    for r in rates:
        ok = fpi <= r + 1e-12
        out[f"{r:g}"] = float(np.max(sens[ok])) if ok.any() else 0.0
    out["mean"] = float(np.mean([out[f"{r:g}"] for r in rates]))
    return out


def small_area_threshold(truths: Sequence[Mapping[str, Any]], fraction: float = 0.3) -> float:
    """Relative area below which the smallest ``fraction`` of the ground-truth boxes lie (the evaluated
    set's own "smallest 30 %" threshold)."""
    areas = np.concatenate([_area(_boxes(t.get("boxes"))) for t in truths]) if truths else np.zeros(0)
    if areas.size == 0:
        return float("nan")
    return float(np.quantile(areas, fraction))


def _unit_weights(rng: np.random.Generator, n_rep: int, unit_of_image: np.ndarray, n_units: int) -> np.ndarray:
    draws = rng.integers(0, n_units, size=(n_rep, n_units))
    counts = np.stack([np.bincount(row, minlength=n_units) for row in draws])
    return counts[:, unit_of_image].astype(np.float64)


def _groups(groups: Any, n_images: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n_images), n_images
    g = np.asarray([str(x) for x in groups])
    if g.shape != (n_images,):
        raise ValueError(f"groups needs one patient id per image ({n_images}), got {g.shape}")
    _, inv = np.unique(g, return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1 if inv.size else 0


def bootstrap_detection(metric: Callable[[Any], float], n_images: int, groups: Any = None, n_boot: int = 1000,
                        alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Patient (cluster) bootstrap percentile CI of ``metric(image_weights)``.

    Args:
        metric: ``f(image_weights (I,)) -> float``, e.g. ``lambda w: ap_from_matches(m, w)``.
        n_images: ``I``.
        groups: ``(I,)`` patient ids (default: each image its own unit).
        n_boot, alpha, seed: replicates, 1 - confidence, seed.

    Returns:
        ``{"estimate", "lower", "upper", "confidence", "n_boot", "n_valid", "resampled", "n_units", "std_error"}``
        (the fields of ``BootstrapCI.as_dict``), replicates that give ``nan`` (no ground truth drawn) skipped.
    """
    unit, n_units = _groups(groups, n_images)
    est = float(metric(np.ones(n_images)))
    rng = np.random.default_rng(seed)
    reps = np.array([metric(w) for w in _unit_weights(rng, int(n_boot), unit, n_units)]) if n_units else np.zeros(0)
    reps = reps[np.isfinite(reps)]
    lo, hi = (np.quantile(reps, [alpha / 2, 1 - alpha / 2]) if reps.size >= 2 else (np.nan, np.nan))
    return {"estimate": est, "lower": float(lo), "upper": float(hi), "confidence": 1 - alpha, "method": "percentile",
            "n_boot": int(n_boot), "n_valid": int(reps.size), "resampled": "patients" if groups is not None else "images",
            "n_units": n_units, "std_error": float(np.std(reps, ddof=1)) if reps.size >= 2 else float("nan")}


def paired_bootstrap(metric_a: Callable[[Any], float], metric_b: Callable[[Any], float], n_images: int,
                     groups: Any = None, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Paired patient bootstrap of ``metric_a - metric_b`` on the same images (same replicates for both).

    The two-sided p-value tests "no difference" by the shifted bootstrap distribution:
    ``p = (1 + #{|d* - d| >= |d|}) / (1 + B)`` with ``d`` the observed difference and ``d*`` the replicates.
    """
    unit, n_units = _groups(groups, n_images)
    ones = np.ones(n_images)
    diff = float(metric_a(ones) - metric_b(ones))
    rng = np.random.default_rng(seed)
    reps = np.array([metric_a(w) - metric_b(w) for w in _unit_weights(rng, int(n_boot), unit, n_units)])
    reps = reps[np.isfinite(reps)]
    if reps.size < 2:
        return {"difference": diff, "lower": float("nan"), "upper": float("nan"), "p_value": float("nan"),
                "n_boot": int(n_boot), "n_valid": int(reps.size)}
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    p = (1.0 + float(np.sum(np.abs(reps - diff) >= abs(diff) - 1e-15))) / (1.0 + reps.size)
    return {"difference": diff, "lower": float(lo), "upper": float(hi), "p_value": min(1.0, p),
            "confidence": 1 - alpha, "n_boot": int(n_boot), "n_valid": int(reps.size),
            "resampled": "patients" if groups is not None else "images", "n_units": n_units}


def detection_summary(predictions: Sequence[Mapping[str, Any]], truths: Sequence[Mapping[str, Any]],
                      groups: Any = None, iou_threshold: float = 0.5, small_area: float = PAPER_SMALL_AREA,
                      small_fraction: float = 0.3, froc_rates: Sequence[float] = FROC_RATES,
                      score_threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every headline number with patient-bootstrap CIs: AP@IoU, AP_small (paper threshold and smallest
    ``small_fraction`` of this set), FROC, and false positives on lesion-free images at ``score_threshold``."""
    n = len(truths)
    m_all = match_detections(predictions, truths, iou_threshold)
    q_thr = small_area_threshold(truths, small_fraction)
    m_small = match_detections(predictions, truths, iou_threshold, max_area=small_area)
    m_q = match_detections(predictions, truths, iou_threshold, max_area=q_thr) if np.isfinite(q_thr) else None
    ci = lambda f: bootstrap_detection(f, n, groups, n_boot, seed=seed)  # noqa: E731
    tag = str(int(round(iou_threshold * 100)))
    out: dict[str, Any] = {
        f"ap{tag}": ci(lambda w: ap_from_matches(m_all, w)),
        "ap_small": ci(lambda w: ap_from_matches(m_small, w)),
        "ap_small_q30": ci(lambda w: ap_from_matches(m_q, w)) if m_q is not None else None,
        "small_area_threshold": small_area,
        "small_q30_threshold": q_thr,
        "n_small_paper": int(m_small.n_gt.sum()),
        "n_small_q30": int(m_q.n_gt.sum()) if m_q is not None else 0,
    }
    for r in froc_rates:
        out[f"froc_sens@{r:g}fp"] = ci(lambda w, r=r: froc_sensitivities(m_all, (r,), w)[f"{r:g}"])
    out["froc_mean"] = froc_sensitivities(m_all, froc_rates)["mean"]
    free = [i for i, t in enumerate(truths) if len(_boxes(t.get("boxes"))) == 0]
    if free:
        n_fp = [int(np.sum(np.asarray(predictions[i].get("scores", []), dtype=float) >= score_threshold)) for i in free]
        out["lesion_free"] = {"images": len(free), "score_threshold": score_threshold,
                              "images_with_fp": int(sum(k > 0 for k in n_fp)),
                              "fp_per_image": float(np.mean(n_fp))}
    out["counts"] = {"images": n, "boxes": int(m_all.n_gt.sum()), "lesion_free_images": len(free),
                     "detections": int(m_all.score.size), "patients": len(set(groups)) if groups is not None else n}
    return out
