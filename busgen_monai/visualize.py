"""Picture helpers: sample grids with captions and boxes (PNG), used by every stage that shows images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from busgen_monai.utils.io import atomic_save_figure

__all__ = ["save_image_grid"]


def _to_uint8_rgb(img) -> np.ndarray:
    arr = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # channel-first tensor -> HWC
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        lo, hi = (-1.0, 1.0) if arr.min() < 0 else (0.0, 1.0 if arr.max() <= 1.0 else 255.0)
        arr = ((np.clip(arr, lo, hi) - lo) / (hi - lo) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def save_image_grid(
    images: Sequence,
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    boxes: Sequence[Sequence[Sequence[float]]] | None = None,
    ncols: int = 8,
    title: str | None = None,
    tile: float = 1.6,
) -> Path:
    """Save images (uint8 HW/HWC arrays, or float tensors in [-1, 1] / [0, 1], CHW or HWC) as one PNG grid.

    Args:
        images: the images.
        path: PNG to write (folders are created).
        labels: optional caption per image.
        boxes: optional normalised ``[x1, y1, x2, y2]`` boxes per image, drawn in yellow.
        ncols: grid columns.
        title: optional figure title.
        tile: inches per tile.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    if n == 0:
        raise ValueError("save_image_grid: no images to draw")
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile * ncols, tile * nrows + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        arr = _to_uint8_rgb(images[k])
        h, w = arr.shape[:2]
        ax.imshow(arr, interpolation="nearest")
        for b in (boxes[k] if boxes is not None else []) or []:
            x1, y1, x2, y2 = b
            ax.add_patch(Rectangle((x1 * w - 0.5, y1 * h - 0.5), (x2 - x1) * w, (y2 - y1) * h,
                                   fill=False, edgecolor="yellow", linewidth=0.8))
        if labels is not None:
            ax.set_title(str(labels[k]), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return atomic_save_figure(fig, path, format="png", dpi=110)
    finally:
        plt.close(fig)
