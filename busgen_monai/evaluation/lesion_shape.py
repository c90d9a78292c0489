"""Shape and texture measurements of a lesion in a B-mode image: mask shape statistics (aspect ratio,
solidity, convexity, circularity), posterior acoustic features (enhancement / shadowing) and the speckle
correlation length. They check that the phantom's lesions follow the BI-RADS lexicon and apply to any image
with a lesion mask (a generated one, a real one).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


__all__ = ["shape_statistics", "posterior_contrast", "speckle_correlation_length"]


def shape_statistics(mask: np.ndarray) -> dict[str, float]:
    """Shape statistics of one lesion mask (pixel units).

    Returns:
        dict with ``area_px``, ``height_px``, ``width_px``, ``aspect_ratio`` (height / width: > 1 is
        "taller than wide" = not parallel), ``solidity`` (area / convex-hull area), ``convexity``
        (hull perimeter / perimeter), ``circularity`` (4 pi area / perimeter^2, 1 for a disc). The
        perimeter is the 4-connected boundary length times pi / 4 (unbiased for random orientations).
    """
    from scipy.spatial import ConvexHull

    m = np.asarray(mask, dtype=bool)
    area = float(m.sum())
    if area == 0:
        return {"area_px": 0.0, "height_px": 0.0, "width_px": 0.0, "aspect_ratio": 0.0,
                "solidity": 0.0, "convexity": 0.0, "circularity": 0.0}
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    height, width = float(rows[-1] - rows[0] + 1), float(cols[-1] - cols[0] + 1)
    p = np.pad(m, 1)
    edges = float((p[1:, :] != p[:-1, :]).sum() + (p[:, 1:] != p[:, :-1]).sum())
    perimeter = edges * math.pi / 4.0
    boundary = m & ~ndimage.binary_erosion(m)
    yy, xx = np.nonzero(boundary)
    corners = np.concatenate(
        [np.stack([xx + dx, yy + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]
    ).astype(np.float64)
    try:
        hull = ConvexHull(corners)
        hull_area, hull_perim = float(hull.volume), float(hull.area)
    except Exception:  # degenerate (a line of pixels)
        hull_area, hull_perim = area, perimeter
    return {
        "area_px": area,
        "height_px": height,
        "width_px": width,
        "aspect_ratio": height / width,
        "solidity": area / max(hull_area, area),
        "convexity": hull_perim / perimeter if perimeter else 0.0,
        "circularity": 4.0 * math.pi * area / perimeter**2 if perimeter else 0.0,
    }


def posterior_contrast(image: np.ndarray, lesion_mask: np.ndarray) -> float:
    """Posterior acoustic feature of a lesion: mean intensity below it minus beside it.

    The posterior region is the band just below the lesion (depth = half the lesion height) over the
    central 60 % of its width; the reference regions are the same depth band, equally wide, to the
    left and right of the lesion (2 px gap). Zero pixels (outside the fan) are ignored. Positive =
    enhancement (typical of benign cysts/fibroadenomas), negative = shadowing (typical of cancers).

    Args:
        image: (H, W) or (H, W, 3) image (colour is averaged).
        lesion_mask: (H, W) bool mask of one lesion.

    Returns:
        the difference of means in grey levels (``nan`` when a region is empty).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    m = np.asarray(lesion_mask, dtype=bool)
    h, w = m.shape
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return float("nan")
    lh, lw = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    r0, r1 = rows[-1] + 2, min(h, rows[-1] + 2 + max(3, lh // 2))
    c0, c1 = cols[0] + int(0.2 * lw), cols[-1] + 1 - int(0.2 * lw)
    band = img[r0:r1]
    post = band[:, c0:c1]
    side = np.concatenate(
        [band[:, max(0, cols[0] - 2 - (c1 - c0)) : max(0, cols[0] - 2)],
         band[:, min(w, cols[-1] + 3) : min(w, cols[-1] + 3 + (c1 - c0))]], axis=1
    )
    post, side = post[post > 0], side[side > 0]
    if post.size == 0 or side.size == 0:
        return float("nan")
    return float(post.mean() - side.mean())


def speckle_correlation_length(image: np.ndarray, axis: int = 1) -> float:
    """Speckle grain size: lag (pixels, interpolated) where the autocorrelation drops below 1/2.

    Computed on the high-pass (image minus a 15-pixel-wide local mean) of the non-zero region, along
    ``axis`` (1 = lateral, 0 = axial).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    valid = img > 0
    hp = img - ndimage.uniform_filter(img, 15)
    hp = np.where(valid, hp, 0.0)
    hp = np.moveaxis(hp, axis, 1)
    vmask = np.moveaxis(valid, axis, 1)
    acf = []
    for lag in range(0, 8):
        a, b = hp[:, : hp.shape[1] - lag], hp[:, lag:]
        ok = vmask[:, : hp.shape[1] - lag] & vmask[:, lag:]
        acf.append(float((a * b)[ok].mean()))
    acf = np.asarray(acf) / acf[0]
    below = np.flatnonzero(acf < 0.5)
    if below.size == 0:
        return float(len(acf))
    k = int(below[0])
    return float(k - 1 + (acf[k - 1] - 0.5) / (acf[k - 1] - acf[k]))
