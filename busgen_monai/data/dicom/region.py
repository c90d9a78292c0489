"""The ultrasound imaging region of a frame: from ``SequenceOfUltrasoundRegions`` (:func:`select_region`) or
detected in the pixels (:func:`detect_imaging_region`); burned-in text outside it is cropped away.

Part of :mod:`busgen_monai.data.dicom` (its docstring describes the cropping rules)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .metadata import UltrasoundRegion


__all__ = [
    "CropSpec",
    "select_region",
    "detect_imaging_region",
]


# ---------------------------------------------------------------------------------------------- cropping
@dataclass
class CropSpec:
    """Crop box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) in source pixels, how it was found, the spacing in
    mm of the cropped image (``None`` when unknown) and an optional keep-mask (box-sized, bool)."""

    box: tuple[int, int, int, int]
    source: str  # "regions", "detected", "none"
    spacing_mm: tuple[float, float] | None = None
    mask: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def select_region(regions: Sequence[UltrasoundRegion], rows: int, columns: int, *, tolerance: int = 2
                  ) -> tuple[UltrasoundRegion | None, str | None]:
    """Choose the 2-D tissue region: ``RegionSpatialFormat`` 1, ``RegionDataType`` 1 preferred, then the
    largest. Returns ``(region or None, warning or None)``; a region outside the image is not used."""
    two_d = [r for r in regions if r.spatial_format == 1 and r.area > 0]
    if not two_d:
        return None, None
    tissue = [r for r in two_d if r.data_type == 1]
    best = max(tissue or two_d, key=lambda r: r.area)
    if best.x0 < -tolerance or best.y0 < -tolerance or best.x1 > columns + tolerance or best.y1 > rows + tolerance:
        return None, (f"the ultrasound region ({best.x0},{best.y0})-({best.x1},{best.y1}) lies outside the "
                      f"{columns}x{rows} image (resized export?); ignored it and detected the image region")
    clipped = UltrasoundRegion(max(0, best.x0), max(0, best.y0), min(columns, best.x1), min(rows, best.y1),
                               best.spatial_format, best.data_type, best.spacing_mm)
    if clipped.area < 16:
        return None, "the ultrasound region is empty; detected the image region instead"
    return clipped, None


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else frame.max(axis=-1)


def _convex_hull_mask(component: np.ndarray) -> np.ndarray:
    """Filled convex hull of a boolean mask (same shape)."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(component)
    h, w = component.shape
    # per-row extremes (pixel corners) are enough to define the hull
    order = np.argsort(ys, kind="stable")
    ys, xs = ys[order], xs[order]
    rows, starts = np.unique(ys, return_index=True)
    mins = np.minimum.reduceat(xs, starts)
    maxs = np.maximum.reduceat(xs, starts)
    # pixel centres of the row extremes define the hull; PIL fills the polygon including its outline
    pts = np.concatenate([np.stack([mins, rows], 1), np.stack([maxs, rows], 1)]).astype(float)
    try:
        hull = ConvexHull(pts)
        poly = [tuple(p) for p in pts[hull.vertices]]
    except (QhullError, ValueError):
        return component.copy()
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon(poly, fill=1, outline=1)
    return np.asarray(img, dtype=bool) | component


def detect_imaging_region(frame: np.ndarray, *, dark: int = 12, flat_std: float = 1.5,
                          stroke_fraction: float = 0.02, min_area_fraction: float = 0.02, min_side: int = 64
                          ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Find the ultrasound image in a screen-like frame (fallback when there is no region metadata).

    Args:
        frame: uint8 ``(H, W)`` or ``(H, W, 3)`` (the pixel-wise max of a few frames of a cine).
        dark: grey level at or below which a pixel is background.
        flat_std: local standard deviation (3x3) below which a non-dark pixel belongs to a flat panel
            (UI bars, solid text backgrounds), not to speckle.
        stroke_fraction: a connected component of the non-dark, textured mask is text/graphics unless some
            pixel of it lies deeper inside it than this fraction of the frame's short side (at least
            7 px): glyph strokes, lines, markers and even dense lines of text are a few pixels thick,
            tissue is solid.
        min_area_fraction: smallest accepted image region, as a fraction of the frame.
        min_side: frames smaller than this (thumbnails) are not searched: ``None`` is returned.

    Returns:
        ``((x0, y0, x1, y1), mask)`` with ``mask`` the box-sized convex hull of the region, or ``None``.
    """
    from scipy import ndimage

    g = _gray(np.asarray(frame)).astype(np.float32)
    h, w = g.shape
    if min(h, w) < min_side:
        return None
    # 3x3 texture: the halo of a flat band next to the image (or around glyphs) is one pixel thin, so text
    # a few pixels away from the image is not connected to it
    mean = ndimage.uniform_filter(g, 3)
    var = ndimage.uniform_filter(g * g, 3) - mean * mean
    textured = np.sqrt(np.maximum(var, 0)) >= flat_std
    content = (g > dark) & textured
    # a 3x3 opening cuts one-pixel bridges (the edge of a band, a frame line) between text and the image
    content = ndimage.binary_opening(content, structure=np.ones((3, 3), bool))
    # 1. drop components of the raw mask without a thick interior: glyphs, words, text blocks, lines,
    #    callipers, markers (strokes a few pixels wide) and small specks
    labels, n = ndimage.label(content)
    if n == 0:
        return None
    edt = ndimage.distance_transform_edt(content)
    thickness = np.zeros(n + 1)
    thickness[1:] = ndimage.maximum(edt, labels, index=np.arange(1, n + 1))
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    stroke = max(7.0, stroke_fraction * min(h, w))
    keep = (thickness >= stroke) & (areas >= max(16, int(0.0005 * h * w)))
    keep[0] = False
    content = keep[labels]
    if not content.any():
        return None
    # 2. join speckle (dark tissue between bright speckle), cut thin bridges, keep the largest region
    k = max(1, int(round(min(h, w) / 160)))
    # square structuring elements are separable: min/max filters are much faster than binary_closing
    m = content.astype(np.uint8)
    pad = 2 * k + 2
    padded = np.pad(m, pad)
    closed = ndimage.minimum_filter(ndimage.maximum_filter(padded, size=2 * k + 1), size=2 * k + 1)
    closed = closed[pad:-pad, pad:-pad]
    r = max(3, int(round(min(h, w) / 40)))
    eroded = ndimage.minimum_filter(closed, size=2 * r + 1, mode="constant", cval=0)
    opened = ndimage.maximum_filter(eroded, size=2 * r + 1, mode="constant", cval=0).astype(bool)
    labels, n = ndimage.label(opened)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] < min_area_fraction * h * w:
        return None
    component = labels == best
    component = ndimage.binary_fill_holes(component)
    hull = _convex_hull_mask(component)
    ys, xs = np.nonzero(hull)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return (x0, y0, x1, y1), hull[y0:y1, x0:x1]
