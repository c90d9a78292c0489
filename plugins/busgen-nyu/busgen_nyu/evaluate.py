"""Outputs and the evaluation report of the NYU breast-level model.

:func:`write_outputs` (inference and evaluation) writes, from a :class:`~busgen_nyu.engine.BreastCollector`:

* ``breasts.csv``: breast id, patient id, labels, breast-level probabilities (benign, malignant);
* ``images.csv``: image id, breast id, attention weight, image-level probabilities;
* ``saliency.npz``: the saliency maps at the network's resolution (``map_<i>`` (K, 2, h, w) per breast, in
  ``breasts.csv`` order) for the Deploy app to upsample onto the image;
* ``overlays/breast<i>_img<j>.png`` (``i`` = row of ``breasts.csv``): ``overlay_n`` breasts (malignant and other
  breasts alternating), each image with its malignant (red) and benign (green)
  saliency map upsampled to the original image size.

:func:`write_nyu_report` adds the statistics (``report.json`` / ``.md`` / ``.html`` written with
:func:`busgen_monai.evaluation.write_report`):

* breast-level AUROC / AUPRC of the malignant score with 95 % CIs by a bootstrap over **patients**, the DeLong CI,
  and sensitivity / specificity / PPV / NPV at a fixed threshold and at a matched specificity;
* the benign label's AUROC (the second output);
* weakly supervised localisation against lesion masks (never used for training): pointing-game accuracy and
  Dice of the thresholded map of the image's pathology class, with patient-bootstrap CIs;
* the hybrid reader model (Shen et al. 2021): the mean of the standardised AI malignancy score and the
  standardised reader BI-RADS (BUS-BRA's BI-RADS stands in for the reader), with DeLong tests of reader vs hybrid,
  hybrid vs AI and reader vs AI. Standardisation uses the mean and SD of each score over the evaluated breasts
  (label-free).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.data.io import read_image_gray
from busgen_monai.evaluation import (
    auprc,
    auroc,
    binary_report,
    bootstrap_ci,
    delong_ci,
    delong_test,
    plot_pr,
    plot_roc,
    plot_score_distribution,
    write_report,
)
from busgen_monai.utils.io import atomic_open, atomic_save_npz, atomic_save_png

from .engine import upsample_map

__all__ = ["write_outputs", "write_nyu_report", "hybrid_scores", "threshold_metric", "mean_ci"]

logger = logging.getLogger(__name__)


def threshold_metric(name: str, threshold: float):
    """``f(y, s)`` for sensitivity / specificity / ppv / npv at a fixed threshold (NaN when undefined)."""

    def metric(y: Any, s: Any) -> float:
        y = np.asarray(y).astype(bool)
        p = np.asarray(s, dtype=np.float64) >= threshold
        tp, fp = float((p & y).sum()), float((p & ~y).sum())
        tn, fn = float((~p & ~y).sum()), float((~p & y).sum())
        num, den = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp),
                    "npv": (tn, tn + fn)}[name]
        return num / den if den > 0 else float("nan")

    metric.__name__ = f"{name}_at_{threshold:g}"
    return metric


def _ci(fn, y, s, groups, n_boot, seed) -> dict[str, Any]:
    try:
        return bootstrap_ci(fn, y, s, groups=groups, n_boot=n_boot, seed=seed).as_dict()
    except ValueError as err:  # too few usable replicates
        return {"estimate": float(fn(y, s)), "lower": None, "upper": None, "note": str(err)}


def mean_ci(values: Sequence[float], groups: Sequence[str], n_boot: int = 1000, seed: int = 0,
            alpha: float = 0.05) -> dict[str, Any]:
    """Mean of per-image values with a percentile CI from a bootstrap over groups (patients)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"estimate": None, "lower": None, "upper": None, "n": 0}
    g = np.asarray(groups)
    uniq, inv = np.unique(g, return_inverse=True)
    sums = np.bincount(inv, weights=v, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)), size=int(n_boot)).astype(np.float64)
    reps = (draws @ sums) / np.maximum(draws @ counts, 1e-12)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return {"estimate": float(v.mean()), "lower": float(lo), "upper": float(hi), "n": int(v.size),
            "n_groups": int(len(uniq)), "resampled": "patients", "replicates": int(n_boot)}


def hybrid_scores(ai: Sequence[float], reader: Sequence[float]) -> np.ndarray:
    """Hybrid reader model: ``(z(ai) + z(reader)) / 2`` with ``z`` the standardisation over the given cases."""
    a = np.asarray(ai, dtype=np.float64)
    r = np.asarray(reader, dtype=np.float64)
    za = (a - a.mean()) / (a.std() or 1.0)
    zr = (r - r.mean()) / (r.std() or 1.0)
    return (za + zr) / 2.0


def _overlay(image: np.ndarray, maps: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Grey (H, W) uint8 + (2, H, W) maps in [0, 1] -> RGB uint8 (benign green, malignant red)."""
    g = image.astype(np.float32) / 255.0
    rgb = np.stack([g, g, g], -1) * (1 - alpha * np.clip(maps.max(0), 0, 1))[..., None]
    rgb[..., 0] += alpha * np.clip(maps[1], 0, 1)
    rgb[..., 1] += alpha * np.clip(maps[0], 0, 1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_outputs(breasts: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                  classes: Sequence[str] = ("benign", "malignant"), overlay_n: int = 16,
                  extra_columns: Mapping[str, Sequence[Any]] | None = None) -> dict[str, str]:
    """Write ``breasts.csv``, ``images.csv``, ``saliency.npz`` and overlay PNGs (see the module docstring).

    An image that cannot be re-read for its overlay is logged and skipped (the CSVs and arrays are complete)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    extra = dict(extra_columns or {})
    with atomic_open(out / "breasts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["breast_id", "patient_id", "n_images"] + [f"label_{c}" for c in classes]
                   + [f"prob_{c}" for c in classes] + ["birads"] + list(extra))
        for i, b in enumerate(breasts):
            w.writerow([b["breast_id"], b["patient_id"], len(b["image_ids"])] + [int(v) if v == v else "" for v in b["label"]]
                       + [f"{p:.6g}" for p in b["prob"]] + ["" if b["birads"] != b["birads"] else b["birads"]]
                       + [f"{extra[k][i]:.6g}" if isinstance(extra[k][i], float) else extra[k][i] for k in extra])
    files["breasts"] = str(out / "breasts.csv")
    with atomic_open(out / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "breast_id", "patient_id", "attention"] + [f"prob_{c}" for c in classes])
        for b in breasts:
            for j, iid in enumerate(b["image_ids"]):
                w.writerow([iid, b["breast_id"], b["patient_id"], f"{b['attention'][j]:.6g}"]
                           + [f"{p:.6g}" for p in b["image_prob"][j]])
    files["images"] = str(out / "images.csv")
    atomic_save_npz(out / "saliency.npz", breast_ids=np.asarray([b["breast_id"] for b in breasts]),
                    **{f"map_{i}": np.asarray(b["saliency"], dtype=np.float16) for i, b in enumerate(breasts)})
    files["saliency"] = str(out / "saliency.npz")
    n_written = 0
    # alternate malignant and other breasts so the overlays show both (datalists are often sorted by label)
    mal = [i for i, b in enumerate(breasts) if b["label"][-1] == 1]
    rest = [i for i, b in enumerate(breasts) if b["label"][-1] != 1]
    order = [i for pair in zip(mal, rest) for i in pair] + mal[len(rest):] + rest[len(mal):]
    for i in order[: max(0, int(overlay_n))]:
        b = breasts[i]
        for j, path in enumerate(b["images"]):
            try:
                img = read_image_gray(path)
            except Exception as err:  # noqa: BLE001 - logged, the rest goes on
                logger.warning("overlay: cannot read %s (%s); skipped", path, err)
                continue
            maps = upsample_map(np.asarray(b["saliency"][j], dtype=np.float32), img.shape)
            atomic_save_png(_overlay(img, maps), out / "overlays" / f"breast{i:04d}_img{j}.png")
            n_written += 1
    if n_written:
        files["overlays"] = str(out / "overlays")
    return files


def write_nyu_report(
    collector: Any,
    out_dir: str | os.PathLike,
    classes: Sequence[str] = ("benign", "malignant"),
    threshold: float = 0.5,
    target_specificity: float | None = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
    overlay_n: int = 16,
    model_name: str = "NYU-style breast model",
    title: str = "Breast-level classifier (NYU-style) evaluation",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the outputs and the evaluation report (see the module docstring).

    Args:
        collector: a :class:`~busgen_nyu.engine.BreastCollector` after an evaluation run (or anything with
            ``breasts`` and ``localisation`` lists of the same form).
        out_dir: report folder.
        threshold: fixed decision threshold on the breast-level malignant probability.
        target_specificity: matched-specificity operating point (``None`` skips it).
        n_boot: bootstrap replicates (over patients).
        overlay_n: breasts drawn as saliency overlays.
        extra: settings to record in the report.

    Returns:
        ``{"results": dict, "files": {name: path}}``.
    """
    out = Path(out_dir)
    breasts = [b for b in collector.breasts if all(v == v for v in b["label"])]
    if not breasts:
        raise ValueError("write_nyu_report: no evaluated breast has a label")
    y = np.asarray([b["label"][1] for b in breasts], dtype=np.int64)
    s = np.asarray([b["prob"][1] for b in breasts], dtype=np.float64)
    pats = np.asarray([b["patient_id"] for b in breasts])
    if y.min() == y.max():
        raise ValueError(f"the evaluated breasts are all {'malignant' if y[0] else 'non-malignant'}; "
                         "AUROC needs both (use a larger test split)")
    birads = np.asarray([b["birads"] for b in breasts], dtype=np.float64)
    hyb_col = np.full(len(breasts), np.nan)
    have_r = np.isfinite(birads)
    if have_r.sum() >= 4 and 0 < y[have_r].sum() < have_r.sum():
        hyb_col[have_r] = hybrid_scores(s[have_r], birads[have_r])
    files = write_outputs(breasts, out, classes, overlay_n, extra_columns={"hybrid": [float(v) for v in hyb_col]})

    results: dict[str, Any] = {
        "model": model_name,
        "n_breasts": int(len(y)), "n_patients": int(len(set(pats.tolist()))),
        "n_malignant_breasts": int(y.sum()),
        "n_benign_breasts": int(sum(b["label"][0] for b in breasts)),
        "n_images": int(sum(len(b["image_ids"]) for b in breasts)),
    }
    results["breast_auroc (malignant)"] = _ci(auroc, y, s, pats, n_boot, seed)
    results["breast_auprc (malignant)"] = _ci(auprc, y, s, pats, n_boot, seed)
    auc, lo, hi = delong_ci(y, s)
    results["breast_auroc_delong_ci"] = {"estimate": auc, "lower": lo, "upper": hi, "confidence": 0.95}
    yb = np.asarray([b["label"][0] for b in breasts], dtype=np.int64)
    if 0 < yb.sum() < len(yb):
        results["breast_auroc (benign)"] = _ci(auroc, yb, np.asarray([b["prob"][0] for b in breasts]), pats, n_boot, seed)
    rep = binary_report(y, s, threshold=threshold, target_specificity=target_specificity)
    ops = {"at_threshold": rep["at_threshold"]}
    if "at_target_specificity" in rep:
        ops["at_matched_specificity"] = rep["at_target_specificity"]
    for name, op in ops.items():
        entry = {"threshold": float(op["threshold"])}
        for m in ("sensitivity", "specificity", "ppv", "npv"):
            entry[m] = _ci(threshold_metric(m, op["threshold"]), y, s, pats, n_boot, seed)
        entry.update({k: op[k] for k in ("tp", "fp", "tn", "fn") if k in op})
        results[name] = entry
    results["bootstrap"] = {"replicates": int(n_boot), "resampled": "patients", "method": "percentile", "seed": seed}

    # image level: image malignant probability vs the image's own pathology
    img_y, img_s, img_g = [], [], []
    for b in breasts:
        for j, _ in enumerate(b["image_ids"]):
            pj = b.get("image_pathology", [None] * len(b["image_ids"]))
            img_s.append(b["image_prob"][j][1])
            img_g.append(b["patient_id"])
            img_y.append(int(b["label"][1]) if pj is None or pj[j] is None else int(pj[j] == "malignant"))
    img_y_a = np.asarray(img_y)
    if 0 < img_y_a.sum() < len(img_y_a):
        results["image_auroc (malignant)"] = _ci(auroc, img_y_a, np.asarray(img_s), np.asarray(img_g), n_boot, seed)

    loc = list(getattr(collector, "localisation", []) or [])
    if loc:
        groups = [r["patient_id"] for r in loc]
        results["localisation"] = {
            "images_with_masks": len(loc),
            "pointing_game": mean_ci([r["hit"] for r in loc], groups, n_boot, seed),
            "pointing_game_strict (peak inside the mask)": mean_ci([r["hit_strict"] for r in loc], groups, n_boot, seed),
            "pointing_tolerance": "15 px at 224 px (Zhang et al., ECCV 2016), scaled to the evaluated image size",
            f"dice (saliency >= {getattr(collector, 'dice_threshold', 0.5):g})": mean_ci([r["dice"] for r in loc], groups, n_boot, seed),
            "dice (saliency >= 0.5 x its maximum)": mean_ci([r["dice_relative"] for r in loc], groups, n_boot, seed),
            "by_class": {c: {"n": sum(r["class"] == c for r in loc),
                             "pointing_game": float(np.mean([r["hit"] for r in loc if r["class"] == c]))
                             if any(r["class"] == c for r in loc) else None} for c in classes},
            "note": "masks are used for evaluation only, never for training",
        }
        with atomic_open(out / "localisation.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "breast_id", "patient_id", "class", "hit", "hit_strict", "dice", "dice_relative"])
            for r in loc:
                w.writerow([r["image_id"], r["breast_id"], r["patient_id"], r["class"], int(r["hit"]), int(r["hit_strict"]),
                            f"{r['dice']:.4f}", f"{r['dice_relative']:.4f}"])
        files["localisation"] = str(out / "localisation.csv")

    curves = {model_name: (y, s)}
    if np.isfinite(hyb_col).any():
        m = have_r
        yr, sr, rr, hr = y[m], s[m], birads[m], hyb_col[m]
        h: dict[str, Any] = {"n_breasts": int(m.sum()), "reader": "BI-RADS (ordinal; 4a/4b/4c as 4.2/4.5/4.8)",
                             "hybrid": "(z(AI malignant probability) + z(BI-RADS)) / 2, z over the evaluated breasts"}
        for name, sc in (("ai", sr), ("reader", rr), ("hybrid", hr)):
            a, lo_, hi_ = delong_ci(yr, sc)
            h[f"auroc_{name}"] = {"estimate": a, "lower": lo_, "upper": hi_, "ci": "DeLong 95 %"}
        for a_name, a_sc, b_name, b_sc in (("hybrid", hr, "reader", rr), ("hybrid", hr, "ai", sr), ("ai", sr, "reader", rr)):
            auc_a, auc_b, z, p, _ = delong_test(yr, a_sc, b_sc)
            h[f"delong {a_name} vs {b_name}"] = {"auroc_difference": auc_a - auc_b, "z": z, "p_value": p}
        results["hybrid_reader_model"] = h
        curves = {model_name: (yr, sr), "reader (BI-RADS)": (yr, rr), "hybrid": (yr, hr)}
    elif not have_r.any():
        results["hybrid_reader_model"] = {"skipped": "no BI-RADS in the evaluated data"}

    plots: dict[str, str] = {}
    ci = None
    if results["breast_auroc (malignant)"].get("lower") is not None and len(curves) == 1:
        ci = {model_name: (results["breast_auroc (malignant)"]["lower"], results["breast_auroc (malignant)"]["upper"])}
    plots["ROC (breast level, malignant)"] = str(plot_roc(out / "roc.png", curves, ci=ci, title="Breast-level ROC: malignant"))
    plots["PR (breast level, malignant)"] = str(plot_pr(out / "pr.png", curves, title="Breast-level PR: malignant"))
    plots["Breast-level score distribution"] = str(plot_score_distribution(out / "scores.png", y, s,
                                                                           class_names=("not malignant", "malignant")))
    if extra:
        results["settings"] = dict(extra)
    paths = write_report(out, results, plots, title=title)
    files.update({"json": str(paths[0]), "markdown": str(paths[1]), "html": str(paths[2])})
    return {"results": results, "files": files}
