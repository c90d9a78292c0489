"""Inference for classifier evaluation: DeLong, bootstrap, paired permutation, clustering scores.

What BUSGen reports and how it is computed here:

* 95 % CIs by 1,000 bootstrap replicates: :func:`bootstrap_ci` (cases, or whole patients with
  ``groups``).
* DeLong test for paired AUCs: :func:`delong_test` (fast algorithm of Sun & Xu 2014).
* Permutation test (10,000) for sensitivity / specificity between two readers or models on the
  same cases: :func:`paired_permutation_test`, :func:`compare_sensitivity_specificity`.
* t-SNE feature maps scored with NMI, ARI and silhouette: :func:`cluster_scores`.

DeLong in brief (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837; Sun & Xu 2014,
IEEE Signal Processing Letters 21(11):1389). For ``m`` positives ``X`` and ``n`` negatives ``Y``
and K scorers, the placement values are

    V10_k(X_i) = (1/n) sum_j psi(X_ki, Y_kj),    V01_k(Y_j) = (1/m) sum_i psi(X_ki, Y_kj),

with ``psi(x, y) = 1[x > y] + 1/2 1[x = y]``; ``AUC_k`` is the mean of either. The covariance of
the AUC estimates is ``S = S10 / m + S01 / n`` with ``S10``, ``S01`` the K x K sample covariance
matrices (divisor m - 1, n - 1) of the placements. Sun & Xu obtain the placements from midranks
in O((m + n) log(m + n)): ``V10(X_i) = (T_Z(X_i) - T_X(X_i)) / n`` and
``V01(Y_j) = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m``, where ``T_Z``, ``T_X``, ``T_Y`` are midranks within
the pooled sample, the positives and the negatives.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy import stats as sps

from busgen_monai.evaluation.metrics import check_binary_inputs, midranks

__all__ = [
    "delong_placements",
    "delong_covariance",
    "delong_auc_variance",
    "delong_ci",
    "delong_test",
    "BootstrapCI",
    "bootstrap_ci",
    "PermutationTestResult",
    "paired_permutation_test",
    "compare_sensitivity_specificity",
    "cluster_scores",
]


# ============================================================================================== DeLong
def _scores_matrix(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (N,) or (K, N); got {s.shape}.")
    rows = [check_binary_inputs(y, row, require_both_classes=True, name="scores")[1] for row in s]
    y, _ = check_binary_inputs(y, s[0], require_both_classes=True)
    return y, np.stack(rows)


def delong_placements(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong placement values by the fast midrank algorithm (Sun & Xu 2014).

    Args:
        y_true: (N,) 0/1 labels with both classes.
        scores: (N,) or (K, N) scores of K scorers on the same cases.

    Returns:
        ``(aucs, v10, v01)`` with shapes (K,), (K, m) for the m positives and (K, n) for the
        n negatives (cases in their original order within each class).
    """
    y, s = _scores_matrix(y_true, scores)
    pos = s[:, y == 1]
    neg = s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = s.shape[0]
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    aucs = np.empty(k)
    for r in range(k):
        tz = midranks(np.concatenate((pos[r], neg[r])))
        tx = midranks(pos[r])
        ty = midranks(neg[r])
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    return aucs, v10, v01


def delong_covariance(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of K scorers on the same cases and the DeLong covariance matrix of those AUCs.

    Args:
        y_true: (N,) 0/1 labels with at least 2 positives and 2 negatives.
        scores: (N,) or (K, N) scores.

    Returns:
        ``(aucs, cov)`` of shapes (K,) and (K, K).
    """
    aucs, v10, v01 = delong_placements(y_true, scores)
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        raise ValueError(
            f"DeLong variance needs at least 2 positive and 2 negative cases; got {m} and {n}."
        )
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_auc_variance(y_true: Any, y_score: Any) -> tuple[float, float]:
    """AUC and its DeLong variance for one scorer.

    Args:
        y_true: (N,) 0/1 labels (>= 2 of each class).
        y_score: (N,) scores.

    Returns:
        ``(auc, variance)``.
    """
    aucs, cov = delong_covariance(y_true, np.asarray(y_score, dtype=np.float64)[None, :])
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(y_true: Any, y_score: Any, alpha: float = 0.05) -> tuple[float, float, float]:
    """Wald confidence interval for one AUC from the DeLong variance, clipped to [0, 1].

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores.
        alpha: 1 - confidence level.

    Returns:
        ``(auc, lower, upper)``.
    """
    auc, var = delong_auc_variance(y_true, y_score)
    half = sps.norm.ppf(1.0 - alpha / 2.0) * math.sqrt(max(var, 0.0))
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def delong_test(
    y_true: Any, score_a: Any, score_b: Any
) -> tuple[float, float, float, float, np.ndarray]:
    """Two-sided DeLong test of equal AUCs for two scorers read on the same cases.

    ``z = (AUC_a - AUC_b) / sqrt(S_aa + S_bb - 2 S_ab)``, ``p = 2 (1 - Phi(|z|))``. When the
    variance of the difference is 0 (identical scorers, or both perfect), ``z = 0`` and
    ``p = 1`` if the AUCs are equal.

    Args:
        y_true: (N,) 0/1 labels (>= 2 of each class).
        score_a: (N,) scores of scorer A.
        score_b: (N,) scores of scorer B on the same cases.

    Returns:
        ``(auc_a, auc_b, z, p_value, covariance)`` with ``covariance`` the 2 x 2 DeLong matrix.
    """
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"score_a and score_b must have the same shape; got {a.shape} and {b.shape}.")
    aucs, cov = delong_covariance(y_true, np.stack((a, b)))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-300:
        if abs(diff) <= 1e-15:
            z, p = 0.0, 1.0
        else:
            z, p = math.copysign(math.inf, diff), 0.0
    else:
        z = diff / math.sqrt(var)
        p = float(2.0 * sps.norm.sf(abs(z)))
    return float(aucs[0]), float(aucs[1]), float(z), p, cov


# =========================================================================================== bootstrap
@dataclass(frozen=True)
class BootstrapCI:
    """Result of :func:`bootstrap_ci`.

    Attributes:
        estimate: metric on the full data.
        lower, upper: confidence limits.
        confidence: confidence level (1 - alpha).
        method: "percentile", "basic", "normal" or "bca".
        n_boot: replicates drawn.
        n_valid: replicates used.
        n_skipped_single_class: replicates skipped because they held one class only.
        n_skipped_nonfinite: replicates skipped because the metric was nan/inf.
        resampled: "cases" or "groups".
        n_units: number of resampled units (cases or groups).
        std_error: standard deviation of the valid replicates.
        replicates: (n_valid,) metric values of the valid replicates.
    """

    estimate: float
    lower: float
    upper: float
    confidence: float
    method: str
    n_boot: int
    n_valid: int
    n_skipped_single_class: int
    n_skipped_nonfinite: int
    resampled: str
    n_units: int
    std_error: float
    replicates: np.ndarray = field(repr=False, compare=False)

    @property
    def n_skipped(self) -> int:
        """All skipped replicates."""
        return self.n_skipped_single_class + self.n_skipped_nonfinite

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the replicate values)."""
        return {
            "estimate": self.estimate,
            "lower": self.lower,
            "upper": self.upper,
            "confidence": self.confidence,
            "method": self.method,
            "n_boot": self.n_boot,
            "n_valid": self.n_valid,
            "n_skipped": self.n_skipped,
            "n_skipped_single_class": self.n_skipped_single_class,
            "n_skipped_nonfinite": self.n_skipped_nonfinite,
            "resampled": self.resampled,
            "n_units": self.n_units,
            "std_error": self.std_error,
        }


_METHODS = ("percentile", "basic", "normal", "bca")
_MAX_CHUNK_ELEMENTS = 4_000_000  # replicates x cases per vectorised block (~32 MB of float64)


def _unit_counts(rng: np.random.Generator, n_rep: int, n_units: int) -> np.ndarray:
    """(n_rep, n_units) multiplicities of units drawn with replacement, n_units per replicate."""
    draws = rng.integers(0, n_units, size=(n_rep, n_units))
    flat = (draws + (np.arange(n_rep) * n_units)[:, None]).ravel()
    return np.bincount(flat, minlength=n_rep * n_units).reshape(n_rep, n_units)


def _evaluate(
    metric_fn: Callable[..., float],
    y: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """Metric on each re-weighted data set; rows of ``weights`` are integer case multiplicities."""
    batched = getattr(metric_fn, "weighted_batch", None)
    if batched is not None and scores.ndim == 1:
        return np.asarray(batched(y, scores, weights), dtype=np.float64)
    idx_all = np.arange(y.shape[0])
    out = np.empty(weights.shape[0])
    for r, w in enumerate(weights):
        idx = np.repeat(idx_all, w.astype(np.int64))
        out[r] = float(metric_fn(y[idx], scores[idx]))
    return out


def _jackknife(
    metric_fn: Callable[..., float], y: np.ndarray, scores: np.ndarray, unit_of_case: np.ndarray, n_units: int
) -> np.ndarray:
    """Leave-one-unit-out metric values (nan where a class disappears)."""
    out = np.empty(n_units)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, y.shape[0]))
    for start in range(0, n_units, chunk):
        units = np.arange(start, min(n_units, start + chunk))
        w = (unit_of_case[None, :] != units[:, None]).astype(np.float64)
        n_pos = w @ y
        ok = (n_pos > 0) & (n_pos < w.sum(axis=1))
        vals = np.full(units.shape[0], np.nan)
        if ok.any():
            vals[ok] = _evaluate(metric_fn, y, scores, w[ok])
        out[units] = vals
    return out


def bootstrap_ci(
    metric_fn: Callable[..., float],
    y_true: Any,
    y_score: Any,
    groups: Any = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    method: str = "percentile",
) -> BootstrapCI:
    """Non-parametric bootstrap confidence interval of ``metric_fn(y_true, y_score)``.

    Cases are resampled with replacement; with ``groups`` (e.g. pseudonymous patient ids) whole
    groups are resampled instead (cluster bootstrap): all images of a drawn patient enter the
    replicate together, as many times as the patient is drawn. Replicates holding one class only
    are skipped and counted, as are replicates where the metric is not finite.

    ``metric_fn`` may carry a vectorised twin ``metric_fn.weighted_batch(y_true, y_score,
    weights)`` taking (B, N) case multiplicities (``auroc`` has one), in which case all
    replicates are evaluated at once; otherwise the metric is called once per replicate. Both
    paths see the same resamples for a given seed.

    Args:
        metric_fn: ``f(y_true, y_score) -> float``.
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores, or (N, ...) per-case data (e.g. (N, 2) for a paired difference
            ``lambda y, s: auroc(y, s[:, 0]) - auroc(y, s[:, 1])``).
        groups: optional (N,) group label per case.
        n_boot: number of replicates.
        alpha: 1 - confidence level.
        seed: seed of the numpy Generator.
        method: "percentile" (default), "basic" (reverse percentile), "normal"
            (estimate +- z * bootstrap SE) or "bca" (bias-corrected and accelerated, with a
            leave-one-unit-out jackknife).

    Returns:
        :class:`BootstrapCI`.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}.")
    n_boot = int(n_boot)
    scores = np.asarray(y_score)
    if scores.ndim == 0 or scores.shape[0] != np.asarray(y_true).shape[0]:
        raise ValueError(
            "y_score must have one entry per case along its first axis; got "
            f"{scores.shape} for {np.asarray(y_true).shape[0]} labels."
        )
    y, _ = check_binary_inputs(y_true, np.zeros(scores.shape[0]))
    if scores.ndim == 1:
        scores = check_binary_inputs(y, scores)[1]
    n = y.shape[0]
    if groups is None:
        unit_of_case = np.arange(n)
        n_units = n
        resampled = "cases"
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), one group id per case; got {g.shape}.")
        _, unit_of_case = np.unique(g, return_inverse=True)
        unit_of_case = unit_of_case.ravel()
        n_units = int(unit_of_case.max()) + 1
        resampled = "groups"

    estimate = float(metric_fn(y, scores))
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(n, n_units))
    values = []
    n_single = 0
    yf = y.astype(np.float64)
    for start in range(0, n_boot, chunk):
        n_rep = min(chunk, n_boot - start)
        counts = _unit_counts(rng, n_rep, n_units)
        weights = counts[:, unit_of_case] if groups is not None else counts
        n_pos = weights @ yf
        ok = (n_pos > 0) & (n_pos < weights.sum(axis=1))
        n_single += int((~ok).sum())
        if ok.any():
            values.append(_evaluate(metric_fn, y, scores, weights[ok]))
    reps = np.concatenate(values) if values else np.zeros(0)
    finite = np.isfinite(reps)
    n_nonfinite = int((~finite).sum())
    reps = reps[finite]
    if reps.size < 2:
        raise ValueError(
            f"only {reps.size} of {n_boot} bootstrap replicates were usable "
            f"({n_single} held one class only, {n_nonfinite} gave a non-finite metric); "
            "the data set is too small or too unbalanced for a bootstrap CI."
        )
    if reps.size < 0.9 * n_boot:
        warnings.warn(
            f"{n_boot - reps.size} of {n_boot} bootstrap replicates were skipped "
            f"({n_single} single-class, {n_nonfinite} non-finite); the CI may be unreliable.",
            RuntimeWarning,
            stacklevel=2,
        )

    q_lo, q_hi = alpha / 2.0, 1.0 - alpha / 2.0
    se = float(np.std(reps, ddof=1))
    if method == "percentile":
        lower, upper = np.quantile(reps, [q_lo, q_hi])
    elif method == "basic":
        hi, lo = np.quantile(reps, [q_hi, q_lo])
        lower, upper = 2.0 * estimate - hi, 2.0 * estimate - lo
    elif method == "normal":
        half = sps.norm.ppf(q_hi) * se
        lower, upper = estimate - half, estimate + half
    else:  # bca (Efron 1987)
        prop = (np.sum(reps < estimate) + 0.5 * np.sum(reps == estimate)) / reps.size
        prop = min(max(prop, 1.0 / (reps.size + 1)), 1.0 - 1.0 / (reps.size + 1))
        z0 = sps.norm.ppf(prop)
        jack = _jackknife(metric_fn, y, scores, unit_of_case, n_units)
        jack = jack[np.isfinite(jack)]
        d = jack.mean() - jack if jack.size else np.zeros(1)
        den = 6.0 * float(np.sum(d**2)) ** 1.5
        acc = float(np.sum(d**3)) / den if den > 0 else 0.0
        adj = []
        for q in (q_lo, q_hi):
            zq = sps.norm.ppf(q)
            adj.append(float(sps.norm.cdf(z0 + (z0 + zq) / (1.0 - acc * (z0 + zq)))))
        lower, upper = np.quantile(reps, adj)
    return BootstrapCI(
        estimate=estimate,
        lower=float(lower),
        upper=float(upper),
        confidence=1.0 - alpha,
        method=method,
        n_boot=n_boot,
        n_valid=int(reps.size),
        n_skipped_single_class=n_single,
        n_skipped_nonfinite=n_nonfinite,
        resampled=resampled,
        n_units=n_units,
        std_error=se,
        replicates=reps,
    )


# ========================================================================================= permutation
@dataclass(frozen=True)
class PermutationTestResult:
    """Result of :func:`paired_permutation_test`.

    Attributes:
        statistic: mean(a) - mean(b) (e.g. difference in sensitivity).
        p_value: two-sided Monte-Carlo p-value, ``(1 + #{|T*| >= |T|}) / (1 + n_perm)``.
        mean_a, mean_b: the two rates.
        n_cases: paired cases.
        n_discordant: cases where a and b differ (only these carry information).
        n_perm: random relabellings drawn.
        exact_p_value: for 0/1 outcomes, the exact permutation p-value (the exact McNemar /
            sign test on the discordant pairs); ``None`` otherwise.
    """

    statistic: float
    p_value: float
    mean_a: float
    mean_b: float
    n_cases: int
    n_discordant: int
    n_perm: int
    exact_p_value: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return dict(self.__dict__)


def paired_permutation_test(
    correct_a: Any, correct_b: Any, n_perm: int = 10000, seed: int = 0
) -> PermutationTestResult:
    """Two-sided paired permutation test for a difference in mean outcome on the same cases.

    Under H0 the two readers/models are exchangeable on every case, so each case's pair of
    outcomes is swapped with probability 1/2, independently across cases; the statistic is the
    difference of the means. Typical use: ``correct_* = (prediction == 1)`` on the positive cases
    (sensitivity) or ``(prediction == 0)`` on the negatives (specificity).

    Args:
        correct_a: (N,) outcome of reader/model A per case (0/1, or any real value).
        correct_b: (N,) outcome of B on the same cases.
        n_perm: random relabellings.
        seed: seed of the numpy Generator.

    Returns:
        :class:`PermutationTestResult`; identical inputs give ``p_value == 1``.
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must be 1-D of equal length; got {a.shape} and {b.shape}.")
    if a.size == 0:
        raise ValueError("no paired cases given.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired outcomes must be finite (no nan/inf).")
    if int(n_perm) < 1:
        raise ValueError(f"n_perm must be >= 1; got {n_perm}.")
    n_perm = int(n_perm)
    d = a - b
    nz = d[d != 0.0]
    observed = float(np.sum(nz))
    tol = 1e-9 * max(1.0, float(np.sum(np.abs(nz))))
    if nz.size == 0:
        p = 1.0
    else:
        rng = np.random.default_rng(seed)
        chunk = max(1, _MAX_CHUNK_ELEMENTS // nz.size)
        hits = 0
        for start in range(0, n_perm, chunk):
            n_rep = min(chunk, n_perm - start)
            signs = rng.integers(0, 2, size=(n_rep, nz.size), dtype=np.int8) * 2 - 1
            perm = signs @ nz
            hits += int(np.sum(np.abs(perm) >= abs(observed) - tol))
        p = (hits + 1.0) / (n_perm + 1.0)
    exact = None
    if np.all(np.isin(a, (0.0, 1.0))) and np.all(np.isin(b, (0.0, 1.0))):
        n_disc = nz.size
        k = int(np.sum(nz > 0))
        exact = 1.0 if n_disc == 0 else float(min(1.0, 2.0 * sps.binom.cdf(min(k, n_disc - k), n_disc, 0.5)))
    return PermutationTestResult(
        statistic=float(a.mean() - b.mean()),
        p_value=float(p),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        n_cases=int(a.size),
        n_discordant=int(nz.size),
        n_perm=n_perm,
        exact_p_value=exact,
    )


def compare_sensitivity_specificity(
    y_true: Any, pred_a: Any, pred_b: Any, n_perm: int = 10000, seed: int = 0
) -> dict[str, PermutationTestResult]:
    """Paired permutation tests of sensitivity and of specificity for two binary readers/models.

    Args:
        y_true: (N,) 0/1 truth with both classes.
        pred_a: (N,) 0/1 calls of A (e.g. a model thresholded at matched specificity).
        pred_b: (N,) 0/1 calls of B (e.g. a radiologist's BI-RADS >= 4A).
        n_perm: random relabellings per test.
        seed: seed (the specificity test uses ``seed + 1``).

    Returns:
        ``{"sensitivity": result, "specificity": result}``.
    """
    y, pa = check_binary_inputs(y_true, pred_a, require_both_classes=True, name="pred_a")
    _, pb = check_binary_inputs(y, pred_b, name="pred_b")
    for name, p in (("pred_a", pa), ("pred_b", pb)):
        if not np.all(np.isin(p, (0.0, 1.0))):
            raise ValueError(f"{name} must hold 0/1 calls; threshold the scores first.")
    pos, neg = y == 1, y == 0
    return {
        "sensitivity": paired_permutation_test(pa[pos] == 1, pb[pos] == 1, n_perm=n_perm, seed=seed),
        "specificity": paired_permutation_test(pa[neg] == 0, pb[neg] == 0, n_perm=n_perm, seed=seed + 1),
    }


# ========================================================================================== clustering
def cluster_scores(features: Any, labels: Any, seed: int = 0, n_init: int = 10) -> dict[str, float]:
    """How well features (e.g. a t-SNE map of [CLS] features) separate the labels.

    NMI and ARI compare the labels with a k-means partition (k = number of distinct labels,
    seeded); the silhouette is computed on the features with the true labels.

    Args:
        features: (N, D) features.
        labels: (N,) class labels (any hashable values), at least 2 distinct and fewer than N.
        seed: k-means random state.
        n_init: k-means restarts.

    Returns:
        dict with ``nmi``, ``ari``, ``silhouette`` and ``n_clusters``.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, D); got {x.shape}.")
    lab = np.asarray(labels)
    if lab.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},); got {lab.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain nan/inf.")
    _, codes = np.unique(lab, return_inverse=True)
    codes = codes.ravel()
    k = int(codes.max()) + 1
    if k < 2 or k >= x.shape[0]:
        raise ValueError(f"need 2 <= number of labels < number of samples; got {k} labels for {x.shape[0]} samples.")
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return {
        "nmi": float(normalized_mutual_info_score(codes, clusters)),
        "ari": float(adjusted_rand_score(codes, clusters)),
        "silhouette": float(silhouette_score(x, codes)),
        "n_clusters": k,
    }
