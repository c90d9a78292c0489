"""Clinical-grade evaluation of classifiers: metrics, statistics, plots and reports.

* :mod:`.metrics` - AUROC, AUPRC, operating-point metrics, matched-specificity/sensitivity and
  Youden thresholds, :func:`binary_report`.
* :mod:`.stats` - DeLong variance / CI / paired test (fast midrank algorithm), case or cluster
  bootstrap CIs, paired permutation tests, clustering scores for t-SNE maps.
* :mod:`.plots` - ROC / PR curves, t-SNE scatter, score distributions (PNG, no display).
* :mod:`.report` - JSON + Markdown + HTML report writer.
"""

from busgen_monai.evaluation.metrics import (
    auprc,
    auroc,
    binary_report,
    check_binary_inputs,
    confusion_counts,
    metrics_at_threshold,
    midranks,
    precision_recall_curve,
    roc_curve,
    threshold_at_sensitivity,
    threshold_at_specificity,
    youden_threshold,
)
from busgen_monai.evaluation.plots import (
    plot_pr,
    plot_roc,
    plot_score_distribution,
    plot_tsne,
    tsne_embedding,
)
from busgen_monai.evaluation.report import format_value, to_jsonable, write_report
from busgen_monai.evaluation.stats import (
    BootstrapCI,
    PermutationTestResult,
    bootstrap_ci,
    cluster_scores,
    compare_sensitivity_specificity,
    delong_auc_variance,
    delong_ci,
    delong_covariance,
    delong_placements,
    delong_test,
    paired_permutation_test,
)

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
]
