"""The phantom's anatomy in beam space: probe geometry and scan conversion, and the breast "world"
(skin, fat lobules, Cooper's ligaments, glandular tissue, muscle, chest wall) with BI-RADS-lexicon lesions.
Part of :mod:`busgen_monai.synthetic.phantom` (its docstring describes the image model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .device_styles import PHANTOM_DEVICES


__all__ = ["PHANTOM_PATHOLOGIES", "BIRADS_CATEGORIES"]


PHANTOM_PATHOLOGIES: tuple[str, ...] = ("normal", "benign", "malignant")
"""Pathologies the phantom can draw (``normal`` = no lesion)."""

BIRADS_CATEGORIES: tuple[str, ...] = ("1", "2", "3", "4", "4a", "4b", "4c", "5", "6")
"""BI-RADS categories accepted by :func:`generate_case` (same vocabulary as the datalist)."""

_PATHOLOGY_CODE = {"normal": 0, "benign": 1, "malignant": 2}

# BI-RADS drawn when none is given: mostly consistent with pathology, with a realistic overlap.
_BIRADS_PRIOR = {
    "normal": (("1",), (1.0,)),
    "benign": (("2", "3", "4a", "4b"), (0.30, 0.45, 0.20, 0.05)),
    "malignant": (("4a", "4b", "4c", "5"), (0.05, 0.25, 0.35, 0.35)),
}


# ----------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Beam-space size and (for sectors) the scan-conversion lookup."""

    beam_shape: tuple[int, int]
    out_shape: tuple[int, int]
    coords: np.ndarray | None  # (2, H, W) beam-space coordinates of each output pixel
    fov: np.ndarray  # (H, W) bool
    pixel_cm: float


@lru_cache(maxsize=32)
def _geometry(device_name: str, size: tuple[int, int]) -> _Geometry:
    style = PHANTOM_DEVICES[device_name]
    h, w = size
    if style.geometry == "linear":
        fov = np.ones((h, w), dtype=bool)
        return _Geometry((h, w), (h, w), None, fov, style.depth_cm / h)
    # Curvilinear probe: apex above the image, probe face (radius r0) touching row 2.
    k = 0.25
    r1 = (h - 3.0) / (1.0 - k)
    r0 = k * r1
    apex_y = 2.0 - r0
    apex_x = (w - 1) / 2.0
    half = min(math.radians(style.fan_half_angle_deg), math.asin(min(1.0, (w - 1) / 2.0 / r1)))
    hb = int(round(r1 - r0))
    wb = max(8, int(round(2 * half * (r0 + r1) / 2.0)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(yy - apex_y, xx - apex_x)
    theta = np.arctan2(xx - apex_x, yy - apex_y)
    fov = (r >= r0) & (r <= r1) & (np.abs(theta) <= half)
    rows = (r - r0) / (r1 - r0) * (hb - 1)
    cols = (theta + half) / (2 * half) * (wb - 1)
    coords = np.stack([rows, cols])
    coords.setflags(write=False)
    fov.setflags(write=False)
    return _Geometry((hb, wb), (h, w), coords, fov, style.depth_cm / (r1 - r0))


def _scan_convert(beam: np.ndarray, geom: _Geometry, order: int = 1) -> np.ndarray:
    if geom.coords is None:
        return beam
    out = ndimage.map_coordinates(beam, geom.coords, order=order, mode="nearest")
    out[~geom.fov] = 0
    return out


def _crop_bilinear(arr: np.ndarray, y0: float, x0: float, h: int, w: int) -> np.ndarray:
    """Crop ``arr[y0:y0+h, x0:x0+w]`` at a fractional offset (bilinear, offsets inside bounds)."""
    iy, ix = int(math.floor(y0)), int(math.floor(x0))
    fy, fx = y0 - iy, x0 - ix
    a = arr[iy : iy + h + 1, ix : ix + w + 1]
    top = a[:h, :w] * (1 - fx) + a[:h, 1 : w + 1] * fx
    bot = a[1 : h + 1, :w] * (1 - fx) + a[1 : h + 1, 1 : w + 1] * fx
    return top * (1 - fy) + bot * fy


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return n / (n.std() + 1e-12)


def _wave(rng: np.random.Generator, n: int, period_scale: float, x0: float = 0.0) -> np.ndarray:
    """Smooth 1-D random curve (sum of 3 sinusoids), values in about [-1, 1]."""
    x = np.arange(n, dtype=np.float64) - x0
    out = np.zeros(n)
    for k in range(3):
        period = period_scale * rng.uniform(0.6, 1.6) / (k + 1) ** 0.5
        out += rng.uniform(0.5, 1.0) / (k + 1) * np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi))
    return out / 1.6


# ----------------------------------------------------------------------------------------------
# anatomy and lesions (beam space, "world" = frame plus motion margins)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Lesion:
    cy: float
    cx: float
    a: float  # lateral semi-axis
    b: float  # axial semi-axis
    angle: float
    radius_terms: list[tuple[int, float, float]]  # (harmonic, amplitude, phase)
    spikes: list[tuple[float, float, float]]  # (angle, width, amplitude)
    descriptors: dict[str, str]
    inside_db: float
    texture: float
    halo_db: float
    posterior_db: float
    posterior_decay: float


@dataclass
class _World:
    db: np.ndarray  # echogenicity (dB) without skin, world beam space
    lesion_masks: list[np.ndarray]  # world bool masks
    lesions: list[_Lesion]
    margin: tuple[int, int]
    frame_shape: tuple[int, int]  # beam shape of one frame
    white: np.ndarray  # tissue-fixed complex scatterers, world shape
    skin_row: float
    birads: str
    pathology: str


def _radius(lesion: _Lesion, phi: np.ndarray) -> np.ndarray:
    r = np.ones_like(phi)
    for k, amp, ph in lesion.radius_terms:
        r += amp * np.cos(k * phi + ph)
    for ang, width, amp in lesion.spikes:
        d = np.angle(np.exp(1j * (phi - ang)))
        r += amp * np.exp(-0.5 * (d / width) ** 2)
    return np.maximum(r, 0.3)


def _lesion_mask(lesion: _Lesion, shape: tuple[int, int]) -> np.ndarray:
    ext = max(lesion.a, lesion.b) * _radius(lesion, np.linspace(-np.pi, np.pi, 721)).max() + 2
    y0, y1 = max(0, int(lesion.cy - ext)), min(shape[0], int(lesion.cy + ext) + 2)
    x0, x1 = max(0, int(lesion.cx - ext)), min(shape[1], int(lesion.cx + ext) + 2)
    mask = np.zeros(shape, dtype=bool)
    if y1 <= y0 or x1 <= x0:
        return mask
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - lesion.cy, xx - lesion.cx
    ca, sa = math.cos(lesion.angle), math.sin(lesion.angle)
    u = (dx * ca + dy * sa) / lesion.a  # lateral axis of the ellipse frame
    v = (-dx * sa + dy * ca) / lesion.b  # axial axis
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    mask[y0:y1, x0:x1] = rho <= _radius(lesion, phi)
    return mask


def _draw_lesion(rng: np.random.Generator, pathology: str, m: float) -> _Lesion:
    """Draw lesion shape parameters (size relative to ``m`` = frame height in beam pixels)."""
    if pathology == "benign":
        a = rng.uniform(0.10, 0.17) * m
        if rng.random() < 0.15:
            ratio, shape = rng.uniform(0.85, 0.98), "round"
        else:
            ratio, shape = rng.uniform(0.45, 0.8), "oval"
        terms = [(k, rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
        return _Lesion(
            cy=0.0, cx=0.0, a=a, b=a * ratio, angle=rng.uniform(-0.2, 0.2), radius_terms=terms, spikes=[],
            descriptors={"shape": shape, "orientation": "parallel", "margin": "circumscribed",
                         "echo_pattern": "hypoechoic", "posterior": "enhancement"},
            inside_db=rng.uniform(-28.0, -25.0), texture=1.0, halo_db=0.0,
            posterior_db=rng.uniform(6.0, 9.0), posterior_decay=0.6,
        )
    a = rng.uniform(0.065, 0.10) * m
    ratio = rng.uniform(1.15, 1.6)
    spikes: list[tuple[float, float, float]] = []
    if rng.random() < 0.6:
        margin = "spiculated"
        terms = [(k, rng.uniform(0.02, 0.07), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
        n = int(rng.integers(7, 14))
        base = np.linspace(-np.pi, np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi / n)
        for ang in base:
            spikes.append((float(ang + rng.normal(0, 0.12)), float(rng.uniform(0.05, 0.09)),
                           float(rng.uniform(0.3, 0.6))))
    else:
        margin = "angular"
        terms = [(k, rng.uniform(0.05, 0.12) / (1 + 0.15 * k), rng.uniform(0, 2 * np.pi)) for k in range(2, 13)]
    return _Lesion(
        cy=0.0, cx=0.0, a=a, b=a * ratio, angle=rng.uniform(-0.25, 0.25), radius_terms=terms, spikes=spikes,
        descriptors={"shape": "irregular", "orientation": "not parallel", "margin": margin,
                     "echo_pattern": "hypoechoic", "posterior": "shadowing"},
        inside_db=rng.uniform(-31.0, -27.0), texture=2.5, halo_db=rng.uniform(2.0, 4.0),
        posterior_db=rng.uniform(-18.0, -14.0), posterior_decay=3.0,
    )


def _build_world(
    seed: int,
    pathology: str,
    birads: str | None,
    n_lesions: int,
    frame_shape: tuple[int, int],
    margin: tuple[int, int],
    period_w: float,
) -> _World:
    h, w = frame_shape
    my, mx = margin
    hw, ww = h + 2 * my, w + 2 * mx
    rng = np.random.default_rng([seed, 1])
    rows = (np.arange(hw, dtype=np.float64) - my)[:, None]

    # layer boundaries (frame row coordinates) per world column
    b1 = h * (0.27 + 0.045 * _wave(rng, ww, period_w, mx))[None, :]
    b2 = h * (0.66 + 0.045 * _wave(rng, ww, period_w, mx))[None, :]
    b3 = b2 + h * 0.035
    b4 = b3 + h * (0.15 + 0.012 * _wave(rng, ww, period_w, mx))[None, :]

    fat = -13.0 + 1.5 * _smooth_noise(rng, (hw, ww), (0.03 * h, 0.06 * period_w))
    lob = _smooth_noise(rng, (hw, ww), (0.045 * h, 0.09 * period_w))
    fat = np.maximum(fat, -3.0 - 60.0 * lob**2)  # Cooper's ligaments along zero contours
    gland = 3.5 * _smooth_noise(rng, (hw, ww), (0.02 * h, 0.045 * period_w))
    islands = _smooth_noise(rng, (hw, ww), (0.05 * h, 0.08 * period_w))
    gland = np.where(islands > 1.3, -10.0 + gland * 0.3, gland)
    stri = _wave(rng, ww, period_w, mx)[None, :] * 3.0
    muscle = -8.0 + 6.0 * (0.5 + 0.5 * np.sin(2 * np.pi * (rows - b3 + stri) / (0.035 * h))) ** 4
    deep = -22.0 + 2.0 * _smooth_noise(rng, (hw, ww), (0.05 * h, 0.1 * period_w))

    db = np.where(rows < b1, fat, gland)
    db = np.where(rows >= b2, -12.0, db)
    db = np.where(rows >= b3, muscle, db)
    db = np.where(rows >= b4, deep, db)
    db = ndimage.gaussian_filter(db, 0.7)
    db = np.maximum(db, 4.0 - ((rows - b3) / 1.2) ** 2 * 8.0)  # pectoral fascia
    db = np.maximum(db, 6.0 - ((rows - b4) / 1.5) ** 2 * 8.0)  # pleura / rib line

    # lesions
    lrng = np.random.default_rng([seed, 2, _PATHOLOGY_CODE[pathology]])
    if birads is None:
        cats, probs = _BIRADS_PRIOR[pathology]
        birads = str(cats[int(lrng.choice(len(cats), p=probs))])
    lesions: list[_Lesion] = []
    masks: list[np.ndarray] = []
    if pathology != "normal":
        union = np.zeros((hw, ww), dtype=bool)
        for _ in range(n_lesions):
            for _attempt in range(25):
                les = _draw_lesion(lrng, pathology, h)
                cx = lrng.uniform(0.25, 0.75) * w
                col = int(min(ww - 1, max(0, round(cx + mx))))
                top, bot = float(b1[0, col]), float(b2[0, col])
                cy = lrng.uniform(0.4, 0.6) * (top + bot)
                ext_y = les.b * 1.5
                cy = float(np.clip(cy, 0.12 * h + ext_y, 0.8 * h - ext_y))
                les.cx, les.cy = cx + mx, cy + my
                m = _lesion_mask(les, (hw, ww))
                if not (m & ndimage.binary_dilation(union, iterations=3)).any():
                    break
            else:  # could not place another lesion without overlap
                break
            lesions.append(les)
            masks.append(m)
            union |= m
        for les, m in zip(lesions, masks):
            # posterior acoustic feature: a column below the lesion, tapering laterally
            cols_any = m.any(axis=0)
            bottom = np.where(cols_any, hw - 1 - np.argmax(m[::-1], axis=0), 0).astype(np.float64)
            below = rows - bottom[None, :]
            post = cols_any[None, :] * (1 / (1 + np.exp(-(below - 1.5) / 1.2)))
            post *= np.exp(-np.clip(below, 0, None) / (les.posterior_decay * h))
            post = ndimage.gaussian_filter1d(post, 1.5, axis=1)
            db = db + les.posterior_db * post
            # halo (malignant echogenic rim) then the hypoechoic inside with a soft edge
            if les.halo_db:
                ring = ndimage.binary_dilation(m, iterations=2) & ~m
                db = db + les.halo_db * ndimage.gaussian_filter(ring.astype(np.float64), 1.0)
            inside = les.inside_db + les.texture * _smooth_noise(lrng, (hw, ww), 1.5)
            alpha = ndimage.gaussian_filter(m.astype(np.float64), 0.6 if les.halo_db == 0 else 1.0)
            alpha = np.maximum(alpha, m)
            db = db * (1 - alpha) + inside * alpha

    wrng = np.random.default_rng([seed, 3])
    white = wrng.standard_normal((2, hw, ww))
    return _World(db=db, lesion_masks=masks, lesions=lesions, margin=margin, frame_shape=frame_shape,
                  white=white, skin_row=0.02 * h + 1.0, birads=birads, pathology=pathology)
