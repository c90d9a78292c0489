"""Detection report: predictions files, statistics (:mod:`busgen_detect.metrics`), PR / FROC plots, a grid of
detections with ground truth, and JSON + Markdown + HTML via ``busgen_monai.evaluation.write_report``.

Files in ``out_dir``: ``report.json|md|html``, ``predictions.json`` (every box and score, normalised, one
entry per image; the input of a later paired comparison), ``predictions.csv`` (one row per box), ``pr.png``,
``froc.png``, ``detections.png``. No image header text or patient names: ids are the datalist's pseudonyms.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.evaluation import write_report
from busgen_monai.utils.io import atomic_save_figure, atomic_write_text, to_jsonable

from .metrics import (
    FROC_RATES,
    PAPER_SMALL_AREA,
    ap_from_matches,
    detection_summary,
    froc_curve,
    match_detections,
    paired_bootstrap,
    small_area_threshold,
)

__all__ = ["write_predictions", "read_predictions", "compare_detectors", "plot_pr_curves", "plot_froc",
           "plot_detection_grid", "write_detection_report"]

PathLike = str | os.PathLike


def write_predictions(records: Sequence[Mapping[str, Any]], out_dir: PathLike) -> tuple[Path, Path]:
    """``predictions.json`` (per image) and ``predictions.csv`` (per box), atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"image_id": r["image_id"], "patient_id": r["patient_id"],
             "boxes": np.asarray(r["boxes"]).reshape(-1, 4).round(6).tolist(),
             "scores": np.asarray(r["scores"]).reshape(-1).round(6).tolist(),
             "truth": np.asarray(r.get("truth", [])).reshape(-1, 4).round(6).tolist()} for r in records]
    jpath = atomic_write_text(out / "predictions.json", json.dumps({"images": rows}, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_id", "patient_id", "x1", "y1", "x2", "y2", "score"])
    for r in rows:
        for b, s in zip(r["boxes"], r["scores"]):
            w.writerow([r["image_id"], r["patient_id"], *b, s])
    cpath = atomic_write_text(out / "predictions.csv", buf.getvalue())
    return jpath, cpath


def read_predictions(path: PathLike) -> list[dict]:
    """Records from a ``predictions.json`` written by :func:`write_predictions`."""
    p = Path(path)
    if p.is_dir():
        p = p / "predictions.json"
    if not p.is_file():
        raise FileNotFoundError(f"predictions file {p} not found (config key 'compare_predictions'); "
                                "give the predictions.json of another detector's evaluation")
    data = json.loads(p.read_text())
    if "images" not in data:
        raise ValueError(f"{p} is not a detector predictions.json (no 'images' key)")
    return [{"image_id": r["image_id"], "patient_id": r["patient_id"], "boxes": np.asarray(r["boxes"]).reshape(-1, 4),
             "scores": np.asarray(r["scores"]).reshape(-1), "truth": np.asarray(r["truth"]).reshape(-1, 4)}
            for r in data["images"]]


def compare_detectors(records_a: Sequence[Mapping], records_b: Sequence[Mapping], iou_threshold: float = 0.5,
                      small_area: float = PAPER_SMALL_AREA, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired patient bootstrap of A - B (AP@IoU, AP_small, AP_small of the smallest 30 %) on the images
    both evaluated (matched by ``image_id``)."""
    b_by_id = {r["image_id"]: r for r in records_b}
    common = [r for r in records_a if r["image_id"] in b_by_id]
    if not common:
        raise ValueError("the two prediction sets share no image_id; evaluate both detectors on the same split")
    ra, rb = common, [b_by_id[r["image_id"]] for r in common]
    truths = [{"boxes": r["truth"]} for r in ra]
    groups = [r["patient_id"] for r in ra]
    q = small_area_threshold(truths)
    out: dict[str, Any] = {"images": len(common)}
    for name, area in (("ap50", None), ("ap_small", small_area), ("ap_small_q30", q)):
        ma = match_detections(ra, truths, iou_threshold, area)
        mb = match_detections(rb, truths, iou_threshold, area)
        out[name] = paired_bootstrap(lambda w, m=ma: ap_from_matches(m, w), lambda w, m=mb: ap_from_matches(m, w),
                                     len(common), groups, n_boot, seed=seed)
    return out


def _figure(w: float = 5.5, h: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _pr_points(m) -> tuple[np.ndarray, np.ndarray]:
    keep = m.ignore == 0
    s, t = m.score[keep], m.tp[keep].astype(float)
    order = np.argsort(-s, kind="stable")
    t = t[order]
    ctp, cfp = np.cumsum(t), np.cumsum(1 - t)
    n = max(float(m.n_gt.sum()), 1e-12)
    return np.r_[0.0, ctp / n], np.r_[1.0, ctp / np.maximum(ctp + cfp, 1e-12)]


def plot_pr_curves(curves: Mapping[str, Any], path: PathLike, title: str = "Precision-recall (IoU 0.5)") -> Path:
    """``curves``: ``{label: MatchedDetections}``; one PR curve each, AP in the legend."""
    fig = _figure()
    ax = fig.add_subplot(111)
    for label, m in curves.items():
        r, p = _pr_points(m)
        ax.step(r, p, where="post", label=f"{label} (AP {ap_from_matches(m):.3f})")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return atomic_save_figure(fig, Path(path), format="png", dpi=120, bbox_inches="tight")


def plot_froc(curves: Mapping[str, Any], path: PathLike, rates: Sequence[float] = FROC_RATES) -> Path:
    """FROC curves (sensitivity vs false positives per image, log x axis) with the operating rates marked."""
    fig = _figure()
    ax = fig.add_subplot(111)
    for label, m in curves.items():
        fpi, sens, _ = froc_curve(m)
        ax.step(np.maximum(fpi, 1e-3), sens, where="post", label=label)
    for r in rates:
        ax.axvline(r, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set(xlim=(0.05, max(8.0, max(rates) * 2)), ylim=(0, 1.02), xlabel="false positives per image",
           ylabel="sensitivity", title="FROC (IoU 0.5)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return atomic_save_figure(fig, Path(path), format="png", dpi=120, bbox_inches="tight")


def plot_detection_grid(records: Sequence[Mapping[str, Any]], path: PathLike, n: int = 16, score_threshold: float = 0.5,
                        seed: int = 0, cols: int = 4) -> Path | None:
    """Images with ground truth (green) and detections at or above ``score_threshold`` (red, with score);
    lesion-free images are included when present. Images are read with ``busgen_monai.data.io``."""
    from busgen_monai.data.io import read_image_gray

    usable = [r for r in records if r.get("image_path") and Path(r["image_path"]).is_file()]
    if not usable or n <= 0:
        return None
    rng = np.random.default_rng(seed)
    free = [r for r in usable if len(np.asarray(r["truth"]).reshape(-1, 4)) == 0]
    lesion = [r for r in usable if len(np.asarray(r["truth"]).reshape(-1, 4)) > 0]
    k_free = min(len(free), max(1, n // 4)) if free else 0
    pick = [free[i] for i in rng.permutation(len(free))[:k_free]] + \
           [lesion[i] for i in rng.permutation(len(lesion))[: n - k_free]]
    rows = int(np.ceil(len(pick) / cols))
    fig = _figure(2.2 * cols, 2.3 * rows)
    for i, r in enumerate(pick):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = read_image_gray(r["image_path"])
        h, w = img.shape
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        for b in np.asarray(r["truth"]).reshape(-1, 4):
            ax.add_patch(_rect(b, w, h, "lime"))
        for b, s in zip(np.asarray(r["boxes"]).reshape(-1, 4), np.asarray(r["scores"]).reshape(-1)):
            if s >= score_threshold:
                ax.add_patch(_rect(b, w, h, "red"))
                ax.text(b[0] * w, b[1] * h, f"{s:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(("no lesion" if not len(np.asarray(r["truth"]).reshape(-1, 4)) else "lesion"), fontsize=7)
        ax.axis("off")
    fig.suptitle(f"green: ground truth, red: detections with score >= {score_threshold:g}", fontsize=8)
    return atomic_save_figure(fig, Path(path), format="png", dpi=110, bbox_inches="tight")


def _rect(b: Sequence[float], w: int, h: int, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((b[0] * w, b[1] * h), (b[2] - b[0]) * w, (b[3] - b[1]) * h, fill=False, edgecolor=color, lw=1.0)


def write_detection_report(
    records: Sequence[Mapping[str, Any]],
    out_dir: PathLike,
    model_name: str = "detector",
    iou_threshold: float = 0.5,
    small_area: float = PAPER_SMALL_AREA,
    score_threshold: float = 0.5,
    n_bootstrap: int = 1000,
    compare_predictions: PathLike | None = None,
    compare_name: str = "comparison detector",
    grid_n: int = 16,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Statistics, plots and the JSON/Markdown/HTML report of one detector's predictions.

    Args:
        records: :class:`busgen_detect.engine.DetectionCollector` records (normalised boxes; ``truth`` per image).
        out_dir: report folder.
        model_name: name in the report.
        iou_threshold: IoU for a match (0.5: AP@0.5).
        small_area: relative-area threshold of AP_small (paper: 0.068).
        score_threshold: operating threshold for the detection grid and the lesion-free false-positive count.
        n_bootstrap: patient-bootstrap replicates for the CIs and the paired test.
        compare_predictions: another detector's ``predictions.json`` (same images): paired bootstrap p-values.
        grid_n: images in ``detections.png`` (0: none).

    Returns:
        ``{"results", "report": json path, "predictions": json path, "plots"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in records if r.get("has_truth", True)] or list(records)
    jpath, _ = write_predictions(records, out)
    truths = [{"boxes": r["truth"]} for r in records]
    groups = [r["patient_id"] for r in records]
    results: dict[str, Any] = {"model": model_name, "iou_threshold": iou_threshold}
    results["detection"] = detection_summary(records, truths, groups, iou_threshold, small_area,
                                             score_threshold=score_threshold, n_boot=n_bootstrap, seed=seed)
    q = results["detection"]["small_q30_threshold"]
    curves = {"all lesions": match_detections(records, truths, iou_threshold),
              f"small (< {small_area:g})": match_detections(records, truths, iou_threshold, small_area)}
    if np.isfinite(q):
        curves[f"smallest 30% (< {q:.3f})"] = match_detections(records, truths, iou_threshold, q)
    plots = {"Precision-recall": plot_pr_curves(curves, out / "pr.png"),
             "FROC": plot_froc({"all lesions": curves["all lesions"]}, out / "froc.png")}
    grid = plot_detection_grid(records, out / "detections.png", grid_n, score_threshold, seed)
    if grid is not None:
        plots["Detections (green: truth, red: detector)"] = grid
    if compare_predictions:
        other = read_predictions(compare_predictions)
        results["comparison"] = {"against": compare_name, **compare_detectors(records, other, iou_threshold, small_area,
                                                                              n_bootstrap, seed)}
    if extra:
        results["run"] = dict(extra)
    jrep, _, _ = write_report(out, to_jsonable(results), {k: str(v) for k, v in plots.items()},
                              title=f"Lesion detection report: {model_name}")
    return {"results": results, "report": str(jrep), "predictions": str(jpath), "plots": {k: str(v) for k, v in plots.items()}}
