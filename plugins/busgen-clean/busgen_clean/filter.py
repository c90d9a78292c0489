"""The cleaning filter: a :class:`busgen_monai.plugins.DatalistFilter` that removes generated images whose
content disagrees with their conditioning label (BUSGen's data cleaning), plus optional quality checks.

Checks (``checks=``; ``"label"`` by default, ``"all"`` for every one):

- ``label``: score = the judge's probability of the item's own label (``judge.label_key``); reject when
  ``score < threshold``. The threshold is given, or chosen on real validation data for a target precision
  (:func:`busgen_clean.threshold.choose_threshold`).
- ``ood``: Mahalanobis distance of the judge's penultimate features to the real training features; reject when
  above ``ood_threshold`` (default: the judge's, a percentile of real validation distances).
- ``visibility``: contrast between the conditioning box and its surrounding ring; reject when below
  ``visibility_floor`` (default: the judge's, a low percentile over real images). Items without boxes pass.
- ``blank``: reject when more than ``max_extreme_fraction`` of pixels are 0 or 255, or the grey std is below
  ``min_std``.

Each rejected item is returned with ``reject_reason`` (every failed check, ``"; "``-joined), ``reject_score``
(the score of the first failed check, in the order blank, label, visibility, ood), ``reject_checks`` (names)
and ``clean_scores`` (every computed score). Items whose label the judge does not know are kept and counted
in :attr:`CleaningFilter.last_stats` (``unjudged``), with a warning: nothing is dropped silently.

In a bundle config (e.g. ``bundles/busgen_sample/configs/inference.json``)::

    "filters": [{"_target_": "busgen_clean.filter.CleaningFilter", "judge": "runs/judge", "threshold": 0.5}]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.data.io import read_image_rgb

from .checks import blank_scores, box_visibility, is_blank

__all__ = ["CleaningFilter", "CHECKS"]

CHECKS = ("blank", "label", "visibility", "ood")
logger = logging.getLogger(__name__)


class CleaningFilter:
    """Remove generated items whose image disagrees with their label (and, optionally, odd images).

    Args:
        judge: a :class:`busgen_clean.judge.Judge` or the folder of a saved one (loaded on first use); may be
            ``None`` when only the ``blank``/``visibility`` checks run.
        threshold: reject when the judge's probability of the item's label is below it (ignored when
            ``target_precision`` is given).
        checks: names from ``("label", "ood", "visibility", "blank")`` or ``"all"``.
        target_precision: choose the threshold for this precision of kept labels on ``validation``.
        validation: real labelled datalist (file or object) for ``target_precision``.
        wrong_fraction: assumed share of wrong labels when choosing the threshold.
        ood_threshold: Mahalanobis distance limit (default: the judge's).
        visibility_floor: minimum box visibility (default: the judge's, else 0.1).
        max_extreme_fraction, min_std: blank/saturated limits.
    """

    def __init__(
        self,
        judge: Any = None,
        threshold: float = 0.5,
        checks: str | Sequence[str] = ("label",),
        *,
        target_precision: float | None = None,
        validation: str | os.PathLike | Mapping | None = None,
        wrong_fraction: float = 0.5,
        ood_threshold: float | None = None,
        visibility_floor: float | None = None,
        max_extreme_fraction: float = 0.95,
        min_std: float = 2.0,
    ) -> None:
        checks = list(CHECKS) if checks == "all" else ([checks] if isinstance(checks, str) else list(checks))
        bad = [c for c in checks if c not in CHECKS]
        if bad:
            raise ValueError(f"unknown cleaning check(s) {bad}; choose from {list(CHECKS)} or 'all'")
        if not checks:
            raise ValueError("CleaningFilter needs at least one check")
        if target_precision is not None and validation is None:
            raise ValueError("target_precision needs validation=REAL_DATALIST to estimate precision on")
        if judge is None and any(c in checks for c in ("label", "ood")):
            raise ValueError("the 'label' and 'ood' checks need a judge (a Judge or its folder; train one with "
                             "`busgen clean-train-judge REAL_DATALIST --out JUDGE_DIR`)")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
        self._judge = judge
        self.threshold = float(threshold)
        self.checks = [c for c in CHECKS if c in checks]
        self.target_precision = target_precision
        self.validation = validation
        self.wrong_fraction = wrong_fraction
        self._ood_threshold = ood_threshold
        self._visibility_floor = visibility_floor
        self.max_extreme_fraction = max_extreme_fraction
        self.min_std = min_std
        self.threshold_info: dict[str, Any] = {"threshold": self.threshold, "source": "given"}
        self._threshold_ready = target_precision is None
        self.last_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ settings
    @property
    def judge(self):
        from .judge import Judge

        if not isinstance(self._judge, Judge):
            self._judge = Judge.load(self._judge)
        return self._judge

    @property
    def needs_judge(self) -> bool:
        return any(c in self.checks for c in ("label", "ood"))

    @property
    def ood_threshold(self) -> float:
        t = self._ood_threshold if self._ood_threshold is not None else self.judge.ood_threshold
        if t is None or self.judge.ood is None:
            raise ValueError("the 'ood' check needs a judge with real-feature statistics (train_judge fits them) "
                             "or ood_threshold=...")
        return float(t)

    @property
    def visibility_floor(self) -> float:
        if self._visibility_floor is not None:
            return float(self._visibility_floor)
        judge_floor = self.judge.visibility_floor if self._judge is not None else None
        return float(judge_floor) if judge_floor is not None else 0.1

    def resolve_threshold(self) -> float:
        """The label threshold (chosen on the validation data on first use when ``target_precision`` is set)."""
        if not self._threshold_ready:
            from .threshold import choose_threshold

            info = choose_threshold(self.judge, self.validation, self.target_precision,
                                    wrong_fraction=self.wrong_fraction)
            self.threshold = info["threshold"]
            self.threshold_info = {**info, "source": "target_precision"}
            self._threshold_ready = True
        return self.threshold

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checks": self.checks}
        if "label" in self.checks:
            out["label_threshold"] = self.resolve_threshold()
            out["threshold_selection"] = self.threshold_info
            out["label_key"] = self.judge.label_key
        if "ood" in self.checks:
            out["ood_threshold"] = self.ood_threshold
        if "visibility" in self.checks:
            out["visibility_floor"] = self.visibility_floor
        if "blank" in self.checks:
            out["max_extreme_fraction"], out["min_std"] = self.max_extreme_fraction, self.min_std
        return out

    # ------------------------------------------------------------------------------------------ filtering
    def score(self, items: Sequence[Mapping], base_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
        """Per item: ``{"scores": {...}, "failed": [(check, reason, score), ...]}`` in check order."""
        images = []
        for it in items:
            p = Path(str(it["image"]))
            images.append(read_image_rgb(p if p.is_absolute() or base_dir is None else Path(base_dir) / p))
        results: list[dict[str, Any]] = [{"scores": {}, "failed": []} for _ in items]
        label_p = feats = None
        if self.needs_judge and len(items):
            judge = self.judge
            proba, feats = judge.predict(items, base_dir, images=images)
            label_p = judge.label_scores(items, proba)
        for n, (it, im) in enumerate(zip(items, images)):
            r = results[n]
            for check in self.checks:
                if check == "blank":
                    blank, reason, s = is_blank(im, self.max_extreme_fraction, self.min_std)
                    r["scores"].update(blank_scores(im))
                    if blank:
                        r["failed"].append(("blank", reason, float(s)))
                elif check == "label":
                    s = float(label_p[n])
                    if np.isnan(s):
                        r["scores"]["label_prob"] = None
                        r["unjudged"] = True
                        continue
                    r["scores"]["label_prob"] = s
                    r["scores"]["predicted"] = self.judge.classes[int(np.argmax(proba[n]))]
                    if s < self.resolve_threshold():
                        r["failed"].append(("label", f"judge disagrees with {self.judge.label_key}="
                                            f"{it.get(self.judge.label_key)} (p={s:.3f} < {self.threshold:.3f}; "
                                            f"predicted {r['scores']['predicted']})", s))
                elif check == "visibility":
                    v = box_visibility(im, it.get("boxes") or [])
                    r["scores"]["visibility"] = None if np.isnan(v) else float(v)
                    if not np.isnan(v) and v < self.visibility_floor:
                        r["failed"].append(("visibility", f"lesion not visible in its box (contrast {v:.3f} < "
                                            f"{self.visibility_floor:.3f})", float(v)))
                elif check == "ood":
                    d = float(self.judge.ood.score(feats[n:n + 1])[0])
                    r["scores"]["ood_distance"] = d
                    if d > self.ood_threshold:
                        r["failed"].append(("ood", f"out of distribution (feature distance {d:.2f} > "
                                            f"{self.ood_threshold:.2f})", d))
        return results

    def __call__(self, items: Sequence[Mapping[str, Any]], base_dir: str | os.PathLike) -> tuple[list, list]:
        items = list(items)
        results = self.score(items, base_dir)
        kept, rejected = [], []
        for it, r in zip(items, results):
            if r["failed"]:
                rejected.append({**dict(it), "reject_reason": "; ".join(f[1] for f in r["failed"]),
                                 "reject_score": r["failed"][0][2], "reject_checks": [f[0] for f in r["failed"]],
                                 "clean_scores": r["scores"]})
            else:
                kept.append(dict(it))
        unjudged = sum(1 for r in results if r.get("unjudged"))
        if unjudged:
            logger.warning("%d item(s) have a %r the judge does not know (%s): kept without the label check",
                           unjudged, self.judge.label_key, self.judge.classes)
        by_check: dict[str, int] = {}
        for r in results:
            for f in r["failed"]:
                by_check[f[0]] = by_check.get(f[0], 0) + 1
        self.last_stats = {"n": len(items), "kept": len(kept), "rejected": len(rejected), "unjudged": unjudged,
                           "failed_by_check": by_check}
        return kept, rejected

    def __repr__(self) -> str:
        return f"CleaningFilter(checks={self.checks}, threshold={self.threshold})"
