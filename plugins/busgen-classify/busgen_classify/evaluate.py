"""The clinical evaluation report of a classifier.

:func:`write_clinical_report` turns collected predictions (see
:class:`~busgen_classify.handlers.PredictionCollector` or :func:`predict`) into

* ``predictions.csv`` - one row per image (ids, label, class probabilities, score);
* AUROC and AUPRC with 95 % CIs from a bootstrap over **patients** (1,000 replicates by default:
  every image of a drawn patient enters the replicate together) and a DeLong CI for AUROC;
* sensitivity, specificity, PPV, NPV (with patient-bootstrap CIs) at a fixed threshold, at a matched
  specificity and at a matched sensitivity (thresholds chosen on the evaluated set, then held fixed
  inside the bootstrap), and at Youden's optimum;
* optionally a comparison with a second model's scores on the same images: DeLong test of the paired
  AUCs, a patient-bootstrap CI of the AUC difference and paired permutation tests of sensitivity and
  specificity at the threshold;
* ROC and PR curves, score histogram / reliability diagram, t-SNE of penultimate features (NMI, ARI,
  silhouette) and a Grad-CAM grid (PNG);
* ``report.json`` / ``report.md`` / ``report.html`` written with :func:`busgen_monai.evaluation.write_report`.

For more than two classes the report holds one-vs-rest AUROCs (macro mean), accuracy and the confusion
matrix; the clinical binary part uses ``positive_class`` against the rest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from busgen_monai.evaluation import (
    auprc,
    auroc,
    binary_report,
    bootstrap_ci,
    cluster_scores,
    compare_sensitivity_specificity,
    delong_ci,
    delong_test,
    plot_pr,
    plot_roc,
    plot_score_distribution,
    plot_tsne,
    tsne_embedding,
    write_report,
)

from .handlers import read_predictions_csv, write_predictions_csv

__all__ = ["predict", "write_clinical_report", "threshold_metric", "cross_entropy"]

logger = logging.getLogger(__name__)

_OP_METRICS = ("sensitivity", "specificity", "ppv", "npv")


def threshold_metric(name: str, threshold: float):
    """``f(y_true, y_score) -> float`` for one operating-point metric at a fixed threshold, with the
    vectorised ``weighted_batch`` twin :func:`busgen_monai.evaluation.bootstrap_ci` uses for speed.

    ``name``: ``sensitivity``, ``specificity``, ``ppv``, ``npv`` or ``accuracy``.
    """
    if name not in _OP_METRICS + ("accuracy",):
        raise ValueError(f"unknown operating-point metric {name!r}")

    def counts(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
        pred = (s >= threshold).astype(np.float64)
        yp = y.astype(np.float64)
        tp = w @ (pred * yp)
        fp = w @ (pred * (1 - yp))
        fn = w @ ((1 - pred) * yp)
        tn = w @ ((1 - pred) * (1 - yp))
        return tp, fp, tn, fn

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    def batch(y_true: Any, y_score: Any, weights: Any) -> np.ndarray:
        y = np.asarray(y_true)
        s = np.asarray(y_score, dtype=np.float64)
        tp, fp, tn, fn = counts(y, s, np.asarray(weights, dtype=np.float64))
        return {"sensitivity": lambda: ratio(tp, tp + fn), "specificity": lambda: ratio(tn, tn + fp),
                "ppv": lambda: ratio(tp, tp + fp), "npv": lambda: ratio(tn, tn + fn),
                "accuracy": lambda: ratio(tp + tn, tp + fp + tn + fn)}[name]()

    def metric(y_true: Any, y_score: Any) -> float:
        y = np.asarray(y_true)
        return float(batch(y, y_score, np.ones((1, y.shape[0])))[0])

    metric.weighted_batch = batch  # type: ignore[attr-defined]
    metric.__name__ = f"{name}_at_{threshold:g}"
    return metric


def cross_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the true classes (the classifier's test loss)."""
    p = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)
    return float(-np.mean(np.log(p)))


@torch.no_grad()
def predict(network: nn.Module, dataset: Sequence[dict], batch_size: int = 64, device: torch.device | str | None = None,
            features: bool = True, num_workers: int = 0) -> dict[str, Any]:
    """Softmax probabilities (and penultimate features) of ``network`` over a preprocessed dataset.

    Returns the same dict as :meth:`PredictionCollector.predictions`.
    """
    from monai.data import DataLoader

    from .networks import FeatureHook

    dev = torch.device(device) if device is not None else next(network.parameters()).device
    was_training = network.training
    network.eval()
    hook = FeatureHook(network) if features else None
    probs, labels, pids, iids, feats = [], [], [], [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            logits = network(torch.as_tensor(batch["image"]).float().to(dev))
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels += [int(v) for v in torch.as_tensor(batch["label"]).reshape(-1).tolist()]
            pids += [str(v) for v in batch.get("patient_id", [""] * logits.shape[0])]
            iids += [str(v) for v in batch.get("image_id", [""] * logits.shape[0])]
            if hook is not None:
                feats.append(hook.pop().numpy())
    finally:
        if hook is not None:
            hook.remove()
        network.train(was_training)
    return {"probs": np.concatenate(probs), "labels": np.asarray(labels, dtype=np.int64), "patient_ids": pids,
            "image_ids": iids, "features": np.concatenate(feats) if feats else None}


def _ci(metric_fn, y, s, groups, n_boot, seed) -> dict[str, Any]:
    try:
        return bootstrap_ci(metric_fn, y, s, groups=groups, n_boot=n_boot, seed=seed).as_dict()
    except ValueError as err:  # too few usable replicates (tiny or one-sided data)
        return {"estimate": float(metric_fn(y, s)), "lower": None, "upper": None, "note": str(err)}


def _operating_point(op: Mapping[str, Any], y, s, groups, n_boot, seed) -> dict[str, Any]:
    out = {"threshold": op["threshold"]}
    if "target" in op:
        out["target"] = op["target"]
    for name in _OP_METRICS:
        out[name] = _ci(threshold_metric(name, op["threshold"]), y, s, groups, n_boot, seed)
    out.update({k: op[k] for k in ("accuracy", "f1", "tp", "fp", "tn", "fn")})
    return out


def _load_comparison(compare: str | os.PathLike | Mapping, image_ids: Sequence[str]) -> np.ndarray:
    table = read_predictions_csv(compare) if not isinstance(compare, Mapping) else {
        k: (v if isinstance(v, Mapping) else {"score": float(v)}) for k, v in compare.items()}
    missing = [i for i in image_ids if i not in table]
    if missing:
        raise ValueError(f"comparison scores lack {len(missing)} of the {len(image_ids)} evaluated images "
                         f"(e.g. {missing[:5]}); both models must be scored on the same images (match 'image_id')")
    return np.asarray([float(table[i]["score"]) for i in image_ids], dtype=np.float64)


def _multiclass(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    pred = probs.argmax(1)
    per_class = {}
    for c, name in enumerate(classes):
        yc = (labels == c).astype(int)
        per_class[name] = auroc(yc, probs[:, c]) if 0 < yc.sum() < len(yc) else None
    valid = [v for v in per_class.values() if v is not None]
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(labels, pred):
        cm[t, p] += 1
    return {"accuracy": float((pred == labels).mean()), "macro_auroc_ovr": float(np.mean(valid)) if valid else None,
            "auroc_one_vs_rest": per_class,
            "confusion_matrix (rows: truth, columns: prediction)": {classes[i]: cm[i].tolist() for i in range(len(classes))}}


def write_clinical_report(
    predictions: Mapping[str, Any],
    out_dir: str | os.PathLike,
    classes: Sequence[str] = ("benign", "malignant"),
    positive_class: str | None = None,
    threshold: float = 0.5,
    target_specificity: float | None = 0.9,
    target_sensitivity: float | None = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
    compare_predictions: str | os.PathLike | Mapping | None = None,
    compare_name: str = "comparison model",
    model_name: str = "model",
    tsne: bool = True,
    network: nn.Module | None = None,
    dataset: Sequence[dict] | None = None,
    gradcam_n: int = 16,
    gradcam_layer: str | None = None,
    title: str = "Lesion classifier evaluation",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the evaluation report of one classifier (see the module docstring).

    Args:
        predictions: ``{"probs": (N, C), "labels": (N,), "patient_ids", "image_ids", "features": (N, D) | None}``.
        out_dir: report folder.
        classes: class names (column order of ``probs``).
        positive_class: the class scored as positive (default: the last class, e.g. ``malignant``).
        threshold: fixed decision threshold on the positive-class probability.
        target_specificity, target_sensitivity: matched operating points (``None`` skips one).
        n_boot: bootstrap replicates (resampling patients).
        seed: bootstrap / t-SNE seed.
        compare_predictions: a second model's ``predictions.csv`` (or ``{image_id: score}``) for the DeLong test.
        compare_name, model_name: display names.
        tsne: draw the t-SNE map of the penultimate features (when present).
        network, dataset: the network and the preprocessed dataset for the Grad-CAM grid (``gradcam_n`` images).
        gradcam_layer: Grad-CAM target layer (default ``layer4`` for ResNets).
        title: report title.
        extra: more results to put into the report (e.g. training settings).

    Returns:
        ``{"results": dict, "files": {name: path}}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in classes]
    probs = np.asarray(predictions["probs"], dtype=np.float64)
    labels = np.asarray(predictions["labels"], dtype=np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[1] != len(classes):
        raise ValueError(f"predictions: probs {probs.shape} must be (N, {len(classes)}) with N = {labels.shape[0]} labels")
    known = labels >= 0
    if not known.all():
        logger.warning("write_clinical_report: %d image(s) without a known label are left out of the statistics",
                       int((~known).sum()))
    image_ids = [i for i, k in zip(predictions["image_ids"], known) if k]
    patients = np.asarray([p for p, k in zip(predictions["patient_ids"], known) if k])
    feats = predictions.get("features")
    probs, labels = probs[known], labels[known]
    feats = np.asarray(feats)[known] if feats is not None else None
    pos = classes.index(positive_class) if positive_class is not None else len(classes) - 1
    y = (labels == pos).astype(np.int64)
    s = probs[:, pos]
    files: dict[str, str] = {}
    files["predictions"] = str(write_predictions_csv(out / "predictions.csv", {**predictions, "probs": probs,
                                                     "labels": labels, "image_ids": image_ids,
                                                     "patient_ids": list(patients)}, classes, pos))
    results: dict[str, Any] = {
        "model": model_name,
        "positive_class": classes[pos],
        "n_images": int(len(y)),
        "n_patients": int(len(set(patients.tolist()))),
        "n_positive": int(y.sum()),
        "test_loss (cross-entropy)": cross_entropy(probs, labels),
    }
    if y.min() == y.max():
        raise ValueError(f"the evaluated set holds only {'positive' if y[0] else 'negative'} cases; "
                         "AUROC and the operating points need both classes")
    rep = binary_report(y, s, threshold=threshold, target_specificity=target_specificity,
                        target_sensitivity=target_sensitivity)
    results["auroc"] = _ci(auroc, y, s, patients, n_boot, seed)
    results["auprc"] = _ci(auprc, y, s, patients, n_boot, seed)
    auc, lo, hi = delong_ci(y, s)
    results["auroc_delong_ci"] = {"estimate": auc, "lower": lo, "upper": hi, "confidence": 0.95}
    results["bootstrap"] = {"replicates": int(n_boot), "resampled": "patients", "n_patients": results["n_patients"],
                            "method": "percentile", "seed": seed}
    results["at_threshold"] = _operating_point(rep["at_threshold"], y, s, patients, n_boot, seed)
    if "at_target_specificity" in rep:
        results["at_matched_specificity"] = _operating_point(rep["at_target_specificity"], y, s, patients, n_boot, seed)
    if "at_target_sensitivity" in rep:
        results["at_matched_sensitivity"] = _operating_point(rep["at_target_sensitivity"], y, s, patients, n_boot, seed)
    results["youden"] = {k: rep["youden"][k] for k in ("threshold", "youden_j", "sensitivity", "specificity", "ppv", "npv")}
    if len(classes) > 2:
        results["multiclass"] = _multiclass(probs, labels, classes)

    curves = {model_name: (y, s)}
    ci = {model_name: (results["auroc"]["lower"], results["auroc"]["upper"])} if results["auroc"]["lower"] is not None else None
    if compare_predictions is not None:
        sb = _load_comparison(compare_predictions, image_ids)
        auc_a, auc_b, z, p, _ = delong_test(y, s, sb)
        diff = _ci(lambda yy, ss: auroc(yy, ss[:, 0]) - auroc(yy, ss[:, 1]), y, np.stack([s, sb], 1), patients, n_boot, seed)
        perm = compare_sensitivity_specificity(y, (s >= threshold).astype(int), (sb >= threshold).astype(int), seed=seed)
        results["comparison"] = {
            "other_model": compare_name,
            "auroc_model": auc_a,
            "auroc_other": auc_b,
            "delong_z": z,
            "delong_p_value": p,
            "auroc_difference (patient bootstrap)": diff,
            f"sensitivity difference at {threshold:g} (paired permutation)": perm["sensitivity"].as_dict(),
            f"specificity difference at {threshold:g} (paired permutation)": perm["specificity"].as_dict(),
        }
        curves[compare_name] = (y, sb)

    plots: dict[str, str] = {}
    ops = {f"threshold {threshold:g}": (results["at_threshold"]["sensitivity"]["estimate"],
                                        results["at_threshold"]["specificity"]["estimate"])}
    plots["ROC curve"] = str(plot_roc(out / "roc.png", curves, ci=ci, operating_points=ops,
                                      title=f"ROC: {classes[pos]} vs rest"))
    plots["Precision-recall curve"] = str(plot_pr(out / "pr.png", curves, title=f"PR: {classes[pos]} vs rest"))
    plots["Score distribution"] = str(plot_score_distribution(
        out / "scores.png", y, s, class_names=("other" if len(classes) > 2 else classes[1 - pos], classes[pos])))

    if tsne and feats is not None and len(feats) >= 4:
        emb = tsne_embedding(feats, seed=seed)
        names = np.asarray([classes[int(v)] for v in labels])
        plots["t-SNE of penultimate features"] = str(plot_tsne(out / "tsne.png", names, embedding=emb, seed=seed,
                                                               title="t-SNE of penultimate features"))
        results["tsne"] = {"feature_dim": int(feats.shape[1]), **cluster_scores(emb, names, seed=seed)}
        np.savez_compressed(out / "features.npz", features=feats.astype(np.float32), embedding=emb.astype(np.float32),
                            labels=labels, image_ids=np.asarray(image_ids))
        files["features"] = str(out / "features.npz")

    if network is not None and dataset is not None and gradcam_n > 0:
        from .gradcam import save_gradcam_grid

        try:
            path, _ = save_gradcam_grid(network, dataset, out / "gradcam.png", n=gradcam_n, target_layer=gradcam_layer,
                                        class_names=classes, class_index=pos)
            plots[f"Grad-CAM ({classes[pos]})"] = str(path)
            results["gradcam"] = {"images": int(min(gradcam_n, len(dataset))), "layer": gradcam_layer or "layer4",
                                  "class": classes[pos]}
        except ValueError as err:
            results["gradcam"] = {"skipped": str(err)}
    if extra:
        results["settings"] = dict(extra)
    paths = write_report(out, results, plots, title=title)
    files.update({"json": str(paths[0]), "markdown": str(paths[1]), "html": str(paths[2])})
    files.update({name: p for name, p in plots.items()})
    return {"results": results, "files": files}
