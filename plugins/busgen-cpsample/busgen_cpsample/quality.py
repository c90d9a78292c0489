"""Cheap quality proxies for a generated set, to weigh a privacy gain against what it costs.

None of these is a perceptual quality metric (no FID: no ultrasound feature network ships offline); together they
catch the usual ways a sampling-time intervention damages images:

- ``mean_gap`` / ``std_ratio``: greyscale intensity mean difference and standard-deviation ratio, generated vs
  training (brightness/contrast drift, saturation);
- ``hf_ratio``: high-frequency energy (mean squared discrete Laplacian of the greyscale image at its own size),
  generated / training; > 1 means added noise, < 1 means over-smoothing;
- ``colour_std``: mean standard deviation across the RGB channels (0 for grey images: colour noise shows here);
- ``mmd_heldout``: squared maximum mean discrepancy (RBF kernel, median-distance bandwidth) between the generated
  set and *held-out real* images in the audit's feature space (lower = closer to real data the generator never
  saw); ``mmd_train_heldout`` is the same between training and held-out images, the floor to compare with;
- ``nn_heldout_mean``: mean cosine similarity of each generated image to its nearest held-out real image
  (realism without rewarding copies of the training set);
- ``rmse_to_reference``: root-mean-square pixel difference (``[0, 1]`` scale) to a reference generated set with the
  same seeds (e.g. the unguided samples): how far the intervention moved the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["quality_proxies", "rbf_mmd2"]


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between samples ``x (N, D)`` and ``y (M, D)`` with an RBF kernel (median heuristic)."""
    x, y = x.double(), y.double()
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        off = d2[~torch.eye(d2.shape[0], dtype=torch.bool)]
        bandwidth = float(off.median().clamp_min(1e-12).sqrt())
    k = torch.exp(-d2 / (2 * bandwidth ** 2))
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def _load(records: tuple, size: int | None) -> torch.Tensor:
    from .audit import load_view

    paths, _, boxes = records
    out = [load_view(p, b, True, size, size, rgb=True) for p, b in zip(paths, boxes)]
    return torch.stack([torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1) for a in out])


def _hf(x: torch.Tensor) -> float:
    g = x.mean(1, keepdim=True)
    lap = 4 * g[..., 1:-1, 1:-1] - g[..., :-2, 1:-1] - g[..., 2:, 1:-1] - g[..., 1:-1, :-2] - g[..., 1:-1, 2:]
    return float(lap.pow(2).mean())


def quality_proxies(generated: Any, training: Any, heldout: Any | None = None, reference: Any | None = None,
                    size: int | None = None, feature_extractor: Any = None,
                    generated_splits: Sequence[str] | None = None,
                    training_splits: Sequence[str] | None = ("training",),
                    heldout_splits: Sequence[str] | None = None) -> dict[str, float]:
    """The proxies of the module docstring. Image sets are datalists, folders or path lists (as for the audit);
    ``size`` resizes everything to one size (default: the generated images' size)."""
    from .audit import extract_features, image_records
    from .features import RandomConvPixelFeatures
    from .neighbours import FeatureSpace, topk_cosine

    gr = image_records(generated, generated_splits)
    tr = image_records(training, training_splits)
    g = _load(gr, size)
    size = size or g.shape[-1]
    t = _load(tr, size)
    gg, tg = g.mean(1), t.mean(1)
    out: dict[str, float] = {
        "mean_gap": float(gg.mean() - tg.mean()),
        "std_ratio": float(gg.std() / tg.std().clamp_min(1e-12)),
        "hf_ratio": _hf(g) / max(_hf(t), 1e-12),
        "colour_std": float(g.std(1).mean()),
        "colour_std_training": float(t.std(1).mean()),
    }
    if heldout is not None:
        hr = image_records(heldout, heldout_splits)
        fx = feature_extractor if feature_extractor is not None else RandomConvPixelFeatures()
        fg, ft, fh = (extract_features(r[0], fx, boxes=r[2], compare_size=size) for r in (gr, tr, hr))
        space = FeatureSpace(getattr(fx, "parts", None)).fit(torch.cat([ft, fh]))
        zg, zt, zh = space.transform(fg), space.transform(ft), space.transform(fh)
        out["mmd_heldout"] = rbf_mmd2(zg, zh)
        out["mmd_train_heldout"] = rbf_mmd2(zt, zh)
        out["nn_heldout_mean"] = float(topk_cosine(zg, zh, 1)[0].mean())
    if reference is not None:
        r = _load(image_records(reference, generated_splits), size)
        if r.shape != g.shape:
            raise ValueError(f"reference set has shape {tuple(r.shape)}, generated {tuple(g.shape)}")
        out["rmse_to_reference"] = float((g - r).pow(2).mean().sqrt())
    return out
