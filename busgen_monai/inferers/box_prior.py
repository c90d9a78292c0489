"""Box priors: where lesions sit, how big and how elongated they are, per pathology.

BUSGen samples the lesion box that conditions generation from per-pathology kernel density estimates of
box centre, aspect ratio and area fitted on the training boxes. :class:`BoxPrior` does the same with
scikit-learn's :class:`~sklearn.neighbors.KernelDensity` on the features

    (cx, cy, log(w / h), log(w * h))      (normalised image coordinates)

with a Gaussian kernel whose bandwidth follows Scott's rule on standardised features. Sampled boxes are
kept only when they lie inside the image (rejection; after ``max_tries`` the box is clipped to the image),
so every box is a valid ``[x1, y1, x2, y2]`` in [0, 1]. The prior is saved as JSON next to a trained bundle
(the fitted points, scaler and bandwidth), so sampling is reproducible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["BoxPrior", "box_features", "features_to_boxes"]

_EPS = 1e-6


def box_features(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` normalised boxes -> ``(N, 4)`` features ``(cx, cy, log aspect, log area)``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.clip(b[:, 2] - b[:, 0], _EPS, None)
    h = np.clip(b[:, 3] - b[:, 1], _EPS, None)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, np.log(w / h), np.log(w * h)], axis=1)


def features_to_boxes(f: np.ndarray) -> np.ndarray:
    """Inverse of :func:`box_features`."""
    f = np.asarray(f, dtype=np.float64).reshape(-1, 4)
    area, aspect = np.exp(f[:, 3]), np.exp(f[:, 2])
    w, h = np.sqrt(area * aspect), np.sqrt(area / aspect)
    return np.stack([f[:, 0] - w / 2, f[:, 1] - h / 2, f[:, 0] + w / 2, f[:, 1] + h / 2], axis=1)


class BoxPrior:
    """Per-pathology KDE over lesion boxes.

    Args:
        max_points: at most this many boxes are kept per pathology (a seeded subsample) to bound the file size.
        bandwidth_scale: multiplies Scott's bandwidth (smaller = closer to the training boxes).
    """

    def __init__(self, max_points: int = 5000, bandwidth_scale: float = 1.0):
        self.max_points = int(max_points)
        self.bandwidth_scale = float(bandwidth_scale)
        self.points: dict[str, np.ndarray] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        self.bandwidth: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------------- fit
    def fit(self, items: Iterable[Mapping], seed: int = 0) -> BoxPrior:
        """Fit from datalist items (every box of every item, grouped by the item's pathology)."""
        grouped: dict[str, list] = {}
        for it in items:
            for box in it.get("boxes") or []:
                grouped.setdefault(str(it["pathology"]), []).append(box)
        if not grouped:
            raise ValueError("BoxPrior.fit: the items carry no boxes; a box prior needs lesion boxes")
        rng = np.random.default_rng(seed)
        for pathology, boxes in sorted(grouped.items()):
            f = box_features(np.asarray(boxes))
            if len(f) > self.max_points:
                f = f[rng.choice(len(f), self.max_points, replace=False)]
            self._set(pathology, f)
        return self

    def _set(self, pathology: str, f: np.ndarray) -> None:
        mean = f.mean(axis=0)
        std = f.std(axis=0) if len(f) > 1 else np.ones(4)
        std = np.where(std < 1e-3, 1e-3, std)
        n, d = f.shape
        self.points[pathology] = f
        self.mean[pathology] = mean
        self.std[pathology] = std
        self.bandwidth[pathology] = self.bandwidth_scale * float(max(n, 2) ** (-1.0 / (d + 4)))  # Scott

    @property
    def pathologies(self) -> list[str]:
        return sorted(self.points)

    def _kde(self, pathology: str):
        from sklearn.neighbors import KernelDensity

        if pathology not in self.points:
            raise KeyError(f"the box prior has no boxes for pathology {pathology!r}; it knows {self.pathologies}")
        z = (self.points[pathology] - self.mean[pathology]) / self.std[pathology]
        return KernelDensity(kernel="gaussian", bandwidth=self.bandwidth[pathology]).fit(z)

    # ---------------------------------------------------------------------------------------------- use
    def sample(self, pathology: str, n: int, seed: int | np.random.Generator = 0, max_tries: int = 50,
               min_size: float = 0.02) -> np.ndarray:
        """``(n, 4)`` boxes inside the image drawn from the pathology's prior (deterministic by seed)."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        kde = self._kde(pathology)
        out = np.zeros((0, 4))
        for _ in range(max_tries):
            need = n - len(out)
            if need <= 0:
                break
            z = kde.sample(max(need * 2, 8), random_state=int(rng.integers(2**31 - 1)))
            boxes = features_to_boxes(z * self.std[pathology] + self.mean[pathology])
            ok = (
                (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= 1) & (boxes[:, 3] <= 1)
                & (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
            )
            out = np.concatenate([out, boxes[ok][:need]])
        if len(out) < n:  # pathological prior (boxes at the border): clip what is left
            z = kde.sample(n - len(out), random_state=int(rng.integers(2**31 - 1)))
            boxes = np.clip(features_to_boxes(z * self.std[pathology] + self.mean[pathology]), 0, 1)
            boxes[:, 2] = np.maximum(boxes[:, 2], np.minimum(boxes[:, 0] + min_size, 1))
            boxes[:, 3] = np.maximum(boxes[:, 3], np.minimum(boxes[:, 1] + min_size, 1))
            boxes[:, 0] = np.minimum(boxes[:, 0], boxes[:, 2] - min_size)
            boxes[:, 1] = np.minimum(boxes[:, 1], boxes[:, 3] - min_size)
            out = np.concatenate([out, boxes])
        return out

    def log_density(self, pathology: str, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """Log density of boxes under the pathology's prior (standardised feature space)."""
        z = (box_features(np.asarray(boxes)) - self.mean[pathology]) / self.std[pathology]
        return self._kde(pathology).score_samples(z)

    # ---------------------------------------------------------------------------------------------- io
    def resampled(self, n: int = 500, seed: int = 0) -> BoxPrior:
        """A prior fitted on ``n`` boxes per pathology drawn from this one: the same distribution (up to one more
        kernel smoothing) without storing any training box, for priors shipped with a model."""
        rng = np.random.default_rng(seed)
        items = []
        for p in self.pathologies:
            for b in self.sample(p, int(n), seed=rng):
                items.append({"pathology": p, "boxes": [list(map(float, b))]})
        return type(self)(self.max_points, self.bandwidth_scale).fit(items, seed=seed)

    def to_dict(self) -> dict:
        return {
            "type": "busgen_monai.inferers.BoxPrior",
            "features": ["cx", "cy", "log_aspect_w_over_h", "log_area"],
            "max_points": self.max_points,
            "bandwidth_scale": self.bandwidth_scale,
            "pathologies": {
                p: {"points": self.points[p].round(6).tolist(), "mean": self.mean[p].tolist(),
                    "std": self.std[p].tolist(), "bandwidth": self.bandwidth[p]}
                for p in self.pathologies
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> BoxPrior:
        prior = cls(data.get("max_points", 5000), data.get("bandwidth_scale", 1.0))
        for p, d in data["pathologies"].items():
            prior.points[p] = np.asarray(d["points"], dtype=np.float64)
            prior.mean[p] = np.asarray(d["mean"], dtype=np.float64)
            prior.std[p] = np.asarray(d["std"], dtype=np.float64)
            prior.bandwidth[p] = float(d["bandwidth"])
        return prior

    def save(self, path: str | os.PathLike) -> Path:
        from ..data.schema import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BoxPrior:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"box prior {path} does not exist (fit one with BoxPrior().fit(items).save(path))")
        return cls.from_dict(json.loads(path.read_text()))
