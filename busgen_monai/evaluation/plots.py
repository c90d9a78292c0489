"""Evaluation figures written as PNG files: ROC, precision-recall, t-SNE, score distributions.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, so no
display is needed and the global pyplot state / backend of the caller is never touched. Every
function writes its PNG atomically (:func:`busgen_monai.utils.io.atomic_save_figure`) and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from busgen_monai.evaluation.metrics import auprc, auroc, check_binary_inputs, precision_recall_curve, roc_curve
from busgen_monai.evaluation.stats import cluster_scores, delong_ci
from busgen_monai.utils.io import atomic_save_figure

__all__ = ["plot_roc", "plot_pr", "tsne_embedding", "plot_tsne", "plot_score_distribution"]

PathLike = str | os.PathLike


def _new_figure(width: float = 5.5, height: float = 5.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; give a path ending in .png, got {str(path)!r}.")
    return atomic_save_figure(fig, path, format="png", dpi=dpi, bbox_inches="tight")


def _points(value: Any) -> np.ndarray:
    """One (a, b) pair or a (k, 2) array of pairs -> (k, 2) float array."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"operating points must be (a, b) pairs or a (k, 2) array; got shape {arr.shape}.")
    return arr


def _draw_points(ax: Any, operating_points: Mapping[str, Any] | None, to_xy: Any) -> None:
    markers = "osD^vP*X"
    for i, (name, value) in enumerate((operating_points or {}).items()):
        pts = _points(value)
        xy = np.array([to_xy(a, b) for a, b in pts])
        marker = markers[i % len(markers)]
        if len(xy) == 1:
            ax.scatter(xy[:, 0], xy[:, 1], marker=marker, s=60, zorder=5, edgecolors="black", label=name)
        else:  # several readers: each one small, their mean large
            sc = ax.scatter(xy[:, 0], xy[:, 1], marker=marker, s=25, alpha=0.7, zorder=5, label=f"{name} (n={len(xy)})")
            mean = xy.mean(axis=0)
            ax.scatter([mean[0]], [mean[1]], marker=marker, s=110, zorder=6, color=sc.get_facecolor()[0],
                       edgecolors="black", label=f"{name} mean")


def plot_roc(
    path: PathLike,
    curves: Mapping[str, tuple[Any, Any]],
    *,
    ci: Mapping[str, tuple[float, float]] | None = None,
    operating_points: Mapping[str, Any] | None = None,
    alpha: float = 0.05,
    title: str = "ROC curve",
) -> Path:
    """ROC curve(s) with the AUC and its CI in the legend, plus optional reader operating points.

    Args:
        path: output ``.png``.
        curves: ``{name: (y_true, y_score)}``.
        ci: optional ``{name: (lower, upper)}`` (e.g. bootstrap limits); curves without one get a
            DeLong CI at level ``1 - alpha``.
        operating_points: optional ``{name: (sensitivity, specificity)}`` or
            ``{name: (k, 2) array}`` for k readers (drawn with their mean).
        alpha: 1 - confidence level of the DeLong CIs.
        title: axes title.

    Returns:
        The PNG path.
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve.")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    level = f"{100 * (1 - alpha):g}%"
    for name, (y_true, y_score) in curves.items():
        fpr, tpr, _ = roc_curve(y_true, y_score)
        if ci is not None and name in ci:
            lo, hi = ci[name]
            auc = auroc(y_true, y_score)
        else:
            auc, lo, hi = delong_ci(y_true, y_score, alpha=alpha)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name}: AUC {auc:.3f} ({level} CI {lo:.3f}-{hi:.3f})")
    _draw_points(ax, operating_points, lambda sens, spec: (1.0 - spec, sens))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(
    path: PathLike,
    curves: Mapping[str, tuple[Any, Any]],
    *,
    operating_points: Mapping[str, Any] | None = None,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curve(s) (step-wise, as average precision is computed) with AP in the legend.

    Args:
        path: output ``.png``.
        curves: ``{name: (y_true, y_score)}``.
        operating_points: optional ``{name: (recall, precision)}`` or ``{name: (k, 2) array}``.
        title: axes title.

    Returns:
        The PNG path.
    """
    if not curves:
        raise ValueError("plot_pr needs at least one curve.")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, (y_true, y_score) in curves.items():
        precision, recall, _ = precision_recall_curve(y_true, y_score)
        y, _ = check_binary_inputs(y_true, y_score)
        line = ax.step(np.concatenate(([0.0], recall)), np.concatenate(([precision[0]], precision)), where="pre",
                       linewidth=1.8, label=f"{name}: AP {auprc(y_true, y_score):.3f}")
        ax.axhline(y.mean(), linestyle=":", linewidth=1, color=line[0].get_color())
    _draw_points(ax, operating_points, lambda rec, prec: (rec, prec))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title(title + " (dotted: prevalence)")
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def tsne_embedding(features: Any, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE map of features (scikit-learn ``TSNE``, PCA initialisation, seeded).

    Args:
        features: (N, D) features, N >= 4.
        seed: random state.
        perplexity: clipped to ``(N - 1) / 3`` for small N.

    Returns:
        (N, 2) embedding.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4:
        raise ValueError(f"features must have shape (N, D) with N >= 4; got {x.shape}.")
    perp = float(min(perplexity, max(1.0, (x.shape[0] - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(
    path: PathLike,
    labels: Any,
    *,
    features: Any = None,
    embedding: Any = None,
    label_names: Mapping[Any, str] | None = None,
    seed: int = 0,
    perplexity: float = 30.0,
    show_scores: bool = True,
    title: str = "t-SNE",
) -> Path:
    """t-SNE scatter coloured by label, with NMI / ARI / silhouette of the map in the title.

    Args:
        path: output ``.png``.
        labels: (N,) labels.
        features: (N, D) features to embed (ignored when ``embedding`` is given).
        embedding: precomputed (N, 2) map (e.g. from :func:`tsne_embedding`).
        label_names: optional display names per label value.
        seed, perplexity: t-SNE settings when ``features`` are embedded here.
        show_scores: add :func:`~busgen_monai.evaluation.stats.cluster_scores` of the map.
        title: axes title.

    Returns:
        The PNG path.
    """
    lab = np.asarray(labels)
    if embedding is None:
        if features is None:
            raise ValueError("plot_tsne needs features or a precomputed embedding.")
        embedding = tsne_embedding(features, seed=seed, perplexity=perplexity)
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] != 2 or emb.shape[0] != lab.shape[0]:
        raise ValueError(f"embedding must have shape ({lab.shape[0]}, 2); got {emb.shape}.")
    fig = _new_figure(6.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for value in np.unique(lab):
        sel = lab == value
        name = (label_names or {}).get(value.item() if hasattr(value, "item") else value, str(value))
        ax.scatter(emb[sel, 0], emb[sel, 1], s=10, alpha=0.75, label=f"{name} (n={int(sel.sum())})")
    if show_scores and len(np.unique(lab)) >= 2:
        sc = cluster_scores(emb, lab, seed=seed)
        title = f"{title}\nNMI {sc['nmi']:.3f}  ARI {sc['ari']:.3f}  silhouette {sc['silhouette']:.3f}"
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2)
    return _save(fig, path)


def plot_score_distribution(
    path: PathLike,
    y_true: Any,
    y_score: Any,
    *,
    bins: int = 20,
    class_names: tuple[str, str] = ("negative", "positive"),
    calibration: bool | None = None,
    title: str = "Scores per class",
) -> Path:
    """Histogram of scores per class and, for probabilities, a reliability (calibration) diagram.

    Args:
        path: output ``.png``.
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores.
        bins: histogram bins (also the number of calibration bins).
        class_names: display names of label 0 and label 1.
        calibration: draw the reliability diagram; default: when all scores lie in [0, 1].
        title: figure title.

    Returns:
        The PNG path.
    """
    y, s = check_binary_inputs(y_true, y_score)
    if calibration is None:
        calibration = bool(s.min() >= 0.0 and s.max() <= 1.0)
    fig = _new_figure(10.0 if calibration else 5.5, 4.5)
    ax = fig.add_subplot(1, 2 if calibration else 1, 1)
    edges = np.linspace(s.min(), s.max() if s.max() > s.min() else s.min() + 1.0, bins + 1)
    for label, name in ((0, class_names[0]), (1, class_names[1])):
        if np.any(y == label):
            ax.hist(s[y == label], bins=edges, alpha=0.55, label=f"{name} (n={int(np.sum(y == label))})")
    ax.set_xlabel("Score")
    ax.set_ylabel("Cases")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if calibration:
        ax2 = fig.add_subplot(1, 2, 2)
        cal_edges = np.linspace(0.0, 1.0, bins + 1)
        which = np.clip(np.digitize(s, cal_edges[1:-1]), 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        used = counts > 0
        mean_score = np.bincount(which, weights=s, minlength=bins)[used] / counts[used]
        frac_pos = np.bincount(which, weights=y.astype(np.float64), minlength=bins)[used] / counts[used]
        ax2.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        ax2.plot(mean_score, frac_pos, marker="o", label="model")
        ax2.set_xlim(0, 1)
        ax2.set_ylim(0, 1)
        ax2.set_xlabel("Mean predicted probability (bin)")
        ax2.set_ylabel(f"Fraction {class_names[1]}")
        ax2.set_title("Reliability diagram")
        ax2.legend(fontsize=8)
    return _save(fig, path)
