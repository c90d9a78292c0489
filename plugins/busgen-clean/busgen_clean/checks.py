"""Image-level checks of the cleaning filter and the feature-space out-of-distribution score.

All checks take uint8 images (``(H, W)`` grey or ``(H, W, 3)`` RGB) and return a scalar score; the filter
compares the score with a threshold. They are deterministic and cheap (no network).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["to_gray", "extreme_fraction", "blank_scores", "is_blank", "box_visibility", "MahalanobisScorer"]


def to_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` uint8 -> ``(H, W)`` float32 grey (ITU-R 601 luma for RGB)."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return arr.astype(np.float32)


def extreme_fraction(image: np.ndarray) -> float:
    """Fraction of pixels at 0 or 255 in every channel (black or saturated white)."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        low = np.all(arr[..., :3] == 0, axis=-1)
        high = np.all(arr[..., :3] == 255, axis=-1)
    else:
        low, high = arr == 0, arr == 255
    return float(np.mean(low | high))


def blank_scores(image: np.ndarray) -> dict[str, float]:
    """``{"extreme_fraction", "std"}`` of an image (std of the grey image, 0..255 scale)."""
    return {"extreme_fraction": extreme_fraction(image), "std": float(to_gray(image).std())}


def is_blank(image: np.ndarray, max_extreme_fraction: float = 0.95, min_std: float = 2.0) -> tuple[bool, str, float]:
    """Blank/saturated test. Returns ``(blank, reason, score)``; ``score`` is the failing statistic
    (``extreme_fraction`` or ``std``; the extreme fraction when the image passes).

    Ultrasound frames have black borders (a convex probe's sector leaves ~30-40 % of the frame black), so the
    default ``max_extreme_fraction`` is high (0.95): only nearly empty or burnt-out frames fail.
    """
    s = blank_scores(image)
    if s["extreme_fraction"] > max_extreme_fraction:
        return True, f"blank/saturated: {100 * s['extreme_fraction']:.1f} % of pixels at 0 or 255 " \
                     f"(> {100 * max_extreme_fraction:.0f} %)", s["extreme_fraction"]
    if s["std"] < min_std:
        return True, f"blank: intensity std {s['std']:.2f} < {min_std:g}", s["std"]
    return False, "", s["extreme_fraction"]


def box_visibility(image: np.ndarray, boxes: Sequence[Sequence[float]], ring: float = 0.5) -> float:
    """Lesion visibility inside the conditioning box(es): ``|mean(box) - mean(ring)| / (std(ring) + 1)``.

    The ring is the box grown by ``ring`` x its size on each side (clipped to the image) minus the box.
    With several boxes the smallest visibility is returned (every requested lesion must be visible);
    ``nan`` when there is no box (nothing to check).

    Args:
        image: uint8 ``(H, W)`` or ``(H, W, 3)``.
        boxes: normalised ``[x1, y1, x2, y2]`` boxes.
        ring: ring width as a fraction of the box width/height.
    """
    gray = to_gray(image)
    h, w = gray.shape
    values = []
    for b in boxes or []:
        x1, y1, x2, y2 = (float(v) for v in b)
        bx1, bx2 = int(np.floor(x1 * w)), max(int(np.ceil(x2 * w)), int(np.floor(x1 * w)) + 1)
        by1, by2 = int(np.floor(y1 * h)), max(int(np.ceil(y2 * h)), int(np.floor(y1 * h)) + 1)
        dx, dy = max(1, int(round(ring * (bx2 - bx1)))), max(1, int(round(ring * (by2 - by1))))
        rx1, rx2, ry1, ry2 = max(0, bx1 - dx), min(w, bx2 + dx), max(0, by1 - dy), min(h, by2 + dy)
        inside = np.zeros((h, w), bool)
        inside[max(0, by1):min(h, by2), max(0, bx1):min(w, bx2)] = True
        outer = np.zeros((h, w), bool)
        outer[ry1:ry2, rx1:rx2] = True
        ring_mask = outer & ~inside
        if inside.sum() == 0 or ring_mask.sum() == 0:
            values.append(0.0)
            continue
        r = gray[ring_mask]
        values.append(float(abs(gray[inside].mean() - r.mean()) / (r.std() + 1.0)))
    return float(min(values)) if values else float("nan")


class MahalanobisScorer:
    """Mahalanobis distance of feature vectors to a Gaussian fitted on real features (Ledoit-Wolf shrinkage).

    ``fit(features)`` stores the mean and the precision matrix; ``score(features)`` returns distances
    ``sqrt((f - mu)^T P (f - mu))``; :meth:`state` / :meth:`from_state` make it serialisable.
    """

    def __init__(self, mean: np.ndarray | None = None, precision: np.ndarray | None = None) -> None:
        self.mean = None if mean is None else np.asarray(mean, np.float64)
        self.precision = None if precision is None else np.asarray(precision, np.float64)

    def fit(self, features: np.ndarray) -> MahalanobisScorer:
        from sklearn.covariance import LedoitWolf

        f = np.asarray(features, np.float64)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"MahalanobisScorer.fit needs (N >= 2, D) features, got shape {f.shape}")
        lw = LedoitWolf().fit(f)
        self.mean, self.precision = lw.location_, lw.precision_
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("MahalanobisScorer is not fitted")
        d = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "precision": self.precision}

    @classmethod
    def from_state(cls, state) -> MahalanobisScorer:
        return cls(state["mean"], state["precision"])
