"""Statistics of a reader study: exact binomial intervals and tests, Cohen's and Fleiss' kappa.

Written by hand because neither MONAI nor busgen-monai has them (scipy's ``binomtest`` is used for the exact
test; the interval is computed from the beta quantiles directly and checked against scipy and published values
in the tests). Bootstrap intervals come from :func:`busgen_monai.evaluation.stats.bootstrap_ci`.

* Clopper-Pearson interval (Clopper & Pearson 1934, Biometrika 26:404): for ``k`` successes in ``n`` trials,
  ``lower = Beta(alpha/2; k, n - k + 1)`` (0 when k = 0) and ``upper = Beta(1 - alpha/2; k + 1, n - k)``
  (1 when k = n), the quantiles of the beta distribution.
* Exact two-sided binomial test against ``p0`` (the sum of the probabilities of all outcomes no more likely than
  the observed one; scipy's ``binomtest``).
* Cohen's kappa (Cohen 1960; weighted: Cohen 1968): ``kappa = (p_o - p_e) / (1 - p_e)`` with the observed
  agreement ``p_o`` and the agreement expected from the two raters' marginals ``p_e``; the weighted form uses
  disagreement weights ``w_ij`` (linear ``|i - j|`` or quadratic ``(i - j)^2``):
  ``kappa_w = 1 - sum w_ij o_ij / sum w_ij e_ij``.
* Fleiss' kappa (Fleiss 1971, Psychological Bulletin 76:378) for N subjects each rated by the same number n of
  raters into k categories, from the N x k count table ``n_ij``: ``P_i = (sum_j n_ij^2 - n) / (n (n - 1))``,
  ``P_bar = mean P_i``, ``p_j = sum_i n_ij / (N n)``, ``P_e = sum_j p_j^2``,
  ``kappa = (P_bar - P_e) / (1 - P_e)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = [
    "Proportion",
    "clopper_pearson",
    "binomial_test",
    "proportion",
    "cohen_kappa",
    "fleiss_kappa",
    "fleiss_table",
]


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided ``1 - alpha`` interval of a binomial proportion ``k / n``."""
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1; got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    lower = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2.0, k, n - k + 1))
    upper = 1.0 if k == n else float(sps.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return lower, upper


def binomial_test(k: int, n: int, p0: float = 0.5) -> float:
    """Exact two-sided binomial test of ``k`` successes in ``n`` trials against ``p0``; returns the p-value."""
    if n < 1:
        raise ValueError(f"need at least one trial; got n={n}")
    return float(sps.binomtest(int(k), int(n), p0, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class Proportion:
    """A proportion with its exact interval and the exact test against ``p0``."""

    k: int
    n: int
    estimate: float
    lower: float
    upper: float
    p_value: float
    p0: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def proportion(k: int, n: int, p0: float = 0.5, alpha: float = 0.05) -> Proportion | None:
    """``k / n`` with its Clopper-Pearson interval and exact test against ``p0``; None when ``n == 0``."""
    if n == 0:
        return None
    lo, hi = clopper_pearson(k, n, alpha)
    return Proportion(int(k), int(n), k / n, lo, hi, binomial_test(k, n, p0), p0)


def cohen_kappa(a: Sequence[Any], b: Sequence[Any], categories: Sequence[Any] | None = None,
                weights: str | None = None) -> float:
    """Cohen's kappa between two raters' labels ``a`` and ``b`` (same cases, same order).

    Args:
        a, b: labels per case.
        categories: the ordered label set (needed for weights; default: the sorted union of labels).
        weights: None (unweighted), "linear" or "quadratic" (ordinal labels, e.g. BI-RADS).

    Returns:
        kappa; nan when the expected disagreement is 0 (both raters used one and the same category).
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"the two raters must label the same cases; got {len(a)} and {len(b)} labels")
    if not a:
        return float("nan")
    cats = list(categories) if categories is not None else sorted(set(a) | set(b), key=str)
    index = {c: i for i, c in enumerate(cats)}
    missing = sorted({str(x) for x in a + b if x not in index})
    if missing:
        raise ValueError(f"labels {missing} are not among the categories {cats}")
    k = len(cats)
    table = np.zeros((k, k))
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    observed = table / table.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((k, k))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j).astype(float)
    elif weights == "quadratic":
        w = ((i - j) ** 2).astype(float)
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic'; got {weights!r}")
    denom = float((w * expected).sum())
    if denom == 0.0:
        return float("nan")
    return 1.0 - float((w * observed).sum()) / denom


def fleiss_table(ratings: Sequence[Sequence[Any]], categories: Sequence[Any] | None = None) -> np.ndarray:
    """N x k count table from per-subject rating lists (each subject: the labels its raters gave)."""
    cats = list(categories) if categories is not None else sorted({x for r in ratings for x in r}, key=str)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(ratings), len(cats)), dtype=np.int64)
    for s, r in enumerate(ratings):
        for x in r:
            table[s, index[x]] += 1
    return table


def fleiss_kappa(table: Any) -> float:
    """Fleiss' kappa from an N x k table of counts (every row sums to the same number of raters n >= 2).

    Returns nan when all ratings fall into one category (P_e = 1)."""
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] < 1:
        raise ValueError(f"table must be N x k with N >= 1; got shape {t.shape}")
    n_raters = t.sum(axis=1)
    if not np.all(n_raters == n_raters[0]) or n_raters[0] < 2:
        raise ValueError(f"every subject needs the same number (>= 2) of ratings; got row sums {sorted(set(n_raters))}")
    n = n_raters[0]
    p_i = ((t**2).sum(axis=1) - n) / (n * (n - 1))
    p_j = t.sum(axis=0) / t.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1.0:
        return float("nan")
    return (float(p_i.mean()) - p_e) / (1.0 - p_e)
