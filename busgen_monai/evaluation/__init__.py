"""Clinical-grade evaluation of classifiers: metrics, statistics, plots and reports.

* :mod:`.metrics` - AUROC, AUPRC, operating-point metrics, matched-specificity/sensitivity and
  Youden thresholds, :func:`binary_report`.
* :mod:`.stats` - DeLong variance / CI / paired test (fast midrank algorithm), case or cluster
  bootstrap CIs, paired permutation tests, clustering scores for t-SNE maps.
* :mod:`.plots` - ROC / PR curves, t-SNE scatter, score distributions (PNG, no display).
* :mod:`.report` - JSON + Markdown + HTML report writer.
* :mod:`.lesion_shape` - lesion shape statistics, posterior acoustic features and speckle size of B-mode images
  (used by the phantom's ground truth, :mod:`busgen_monai.synthetic.phantom`).

Names are loaded on first use (``from busgen_monai.evaluation import auroc`` imports :mod:`.metrics` only), so
that a light user (the phantom needs :mod:`.lesion_shape`) does not pay for matplotlib and scipy.stats.
"""

from __future__ import annotations

import importlib

#: public name -> the submodule that defines it
_EXPORTS = {
    "auprc": "metrics",
    "auroc": "metrics",
    "binary_report": "metrics",
    "check_binary_inputs": "metrics",
    "confusion_counts": "metrics",
    "metrics_at_threshold": "metrics",
    "midranks": "metrics",
    "precision_recall_curve": "metrics",
    "roc_curve": "metrics",
    "threshold_at_sensitivity": "metrics",
    "threshold_at_specificity": "metrics",
    "youden_threshold": "metrics",
    "plot_pr": "plots",
    "plot_roc": "plots",
    "plot_score_distribution": "plots",
    "plot_tsne": "plots",
    "tsne_embedding": "plots",
    "format_value": "report",
    "to_jsonable": "report",
    "write_report": "report",
    "BootstrapCI": "stats",
    "PermutationTestResult": "stats",
    "bootstrap_ci": "stats",
    "cluster_scores": "stats",
    "compare_sensitivity_specificity": "stats",
    "delong_auc_variance": "stats",
    "delong_ci": "stats",
    "delong_covariance": "stats",
    "delong_placements": "stats",
    "delong_test": "stats",
    "paired_permutation_test": "stats",
    "shape_statistics": "lesion_shape",
    "posterior_contrast": "lesion_shape",
    "speckle_correlation_length": "lesion_shape",
}
_SUBMODULES = ("lesion_shape", "metrics", "plots", "report", "stats")

__all__ = [
    # metrics
    "auprc",
    "auroc",
    "binary_report",
    "check_binary_inputs",
    "confusion_counts",
    "metrics_at_threshold",
    "midranks",
    "precision_recall_curve",
    "roc_curve",
    "threshold_at_sensitivity",
    "threshold_at_specificity",
    "youden_threshold",
    # stats
    "BootstrapCI",
    "PermutationTestResult",
    "bootstrap_ci",
    "cluster_scores",
    "compare_sensitivity_specificity",
    "delong_auc_variance",
    "delong_ci",
    "delong_covariance",
    "delong_placements",
    "delong_test",
    "paired_permutation_test",
    # plots
    "plot_pr",
    "plot_roc",
    "plot_score_distribution",
    "plot_tsne",
    "tsne_embedding",
    # report
    "format_value",
    "to_jsonable",
    "write_report",
    # lesion_shape
    "posterior_contrast",
    "shape_statistics",
    "speckle_correlation_length",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
