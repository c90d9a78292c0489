"""A deterministic breast-ultrasound phantom with known ground truth.

The phantom produces B-mode-like breast ultrasound images (and cines) whose lesion masks, boxes,
pathology, BI-RADS category and device style are known exactly. It is the test bed of every stage of
busgen-monai (ingestion, training, sampling, cleaning, downstream evaluation) when no real data is at
hand, and it is fast: a 128 x 128 image takes a few milliseconds (numpy and ``scipy.ndimage`` only).

Physics-inspired image model
----------------------------
Everything is built in *beam space* (rows = depth along the beam, columns = lateral position / beam
angle), which equals the image for linear probes and is scan-converted into a fan for sector
(curvilinear) probes.

1. **Echogenicity map** ``E(r, c)`` in dB relative to glandular tissue (0 dB):

   - skin entry echo (bright, about +10 dB) and dermis just below the probe;
   - subcutaneous fat (about -13 dB), lobulated by thin bright Cooper's ligaments drawn along the
     zero-level contours of a smooth random field;
   - fibroglandular tissue (0 dB, heterogeneous +-3.5 dB texture, small fat islands);
   - retromammary fat, the bright pectoral fascia, the striated pectoral muscle (about -7 dB), and the
     chest wall (bright pleura/rib line with a dark region below);
   - lesions (hypoechoic, -25 to -31 dB) whose outline is a star-shaped polar curve
     ``rho(phi) <= r(phi)`` in an ellipse frame. The shapes follow the BI-RADS ultrasound lexicon:
     *benign* = oval/round, circumscribed (smooth low-order harmonics), parallel orientation (wider
     than tall), posterior acoustic **enhancement** (+7 dB column below the lesion); *malignant* =
     irregular with spiculated or angular margins (narrow radial spikes or high-order radius noise),
     not parallel (taller than wide), an echogenic halo and posterior acoustic **shadowing**
     (-16 dB column below the lesion).

2. **Speckle**: complex circular Gaussian scatterers weighted by ``sqrt`` of the echogenicity are
   convolved with a Gaussian point-spread function (grain size per device, anisotropic: the lateral
   PSF is wider than the axial one); the envelope ``|.|`` is Rayleigh distributed (fully developed
   speckle), multiplicative and spatially correlated.

3. **Device chain** (:class:`DeviceStyle`): extra resolution blur of the envelope, depth attenuation
   against time-gain compensation (TGC), overall gain, log compression to a dynamic range of
   ``dynamic_range_db`` and quantisation to 8 bits (tissue is always >= 1, so 0 means "no data"),
   sector scan conversion (black outside the fan) and an optional RGB tint (colour map).

Cines (:func:`generate_cine`) image a larger "world" of the same anatomy under smooth probe motion
(lateral sweep plus a small depth change from probe pressure); the speckle is a mix of a
tissue-fixed scatterer field (moves with the tissue) and a fresh, temporally correlated field
(decorrelation), so consecutive frames are correlated but not identical.

Determinism: every random draw comes from ``numpy.random.default_rng`` seeded with ``[seed, stream]``,
so the same arguments always give identical arrays, and the anatomy of a given seed does not depend on
the pathology (the lesion stream does).

Example:
    >>> case = generate_case(3, "malignant", "PhantomMed-C5")
    >>> case.image.shape, case.boxes[0] == mask_to_box(case.lesion_masks[0])
    ((128, 128), True)
"""

from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from busgen_monai.utils.io import atomic_save_png, atomic_write_bytes, atomic_write_json

__all__ = [
    "DeviceStyle",
    "PHANTOM_DEVICES",
    "PHANTOM_PATHOLOGIES",
    "BIRADS_CATEGORIES",
    "PhantomCase",
    "get_device_style",
    "generate_case",
    "generate_cine",
    "write_dataset",
    "sample_grid",
    "mask_to_box",
    "shape_statistics",
    "posterior_contrast",
    "speckle_correlation_length",
]

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


@dataclass(frozen=True)
class DeviceStyle:
    """Acquisition style of one (fictional) ultrasound system.

    Attributes:
        name: canonical device name (the datalist ``device`` value), e.g. ``"PhantomMed-L7"``.
        manufacturer: DICOM Manufacturer (0008,0070).
        model: DICOM ManufacturerModelName (0008,1090).
        geometry: ``"linear"`` (rectangular image) or ``"sector"`` (curvilinear fan, black outside).
        gain_db: overall receive gain added before log compression (brighter when larger).
        tgc_db: time-gain compensation, dB added linearly from the top to the bottom of the image.
        attenuation_db: tissue attenuation, dB lost linearly from top to bottom (TGC fights it).
        dynamic_range_db: log-compression window; wide = grey, low contrast; narrow = contrasty.
        speckle_grain: Gaussian PSF sigma (axial, lateral) in beam-space pixels = speckle grain size.
        resolution_sigma: extra Gaussian blur (pixels) of the envelope (lower resolution when larger).
        tint: ``None`` for greyscale, else the RGB colour (0-255) mid-grey is mapped to (colour map).
        fan_half_angle_deg: half opening angle of the fan (sector geometry only; may be narrowed to
            fit the image width).
        frequency_mhz: nominal centre frequency (used for DICOM TransducerData only).
        depth_cm: imaging depth shown by the image height (sets the pixel spacing).
        frame_rate: cine frame rate in frames per second.
        transducer_type: DICOM TransducerType (``LINEAR`` / ``CURVED LINEAR``).
    """

    name: str
    manufacturer: str
    model: str
    geometry: str
    gain_db: float
    tgc_db: float
    attenuation_db: float
    dynamic_range_db: float
    speckle_grain: tuple[float, float]
    resolution_sigma: float
    tint: tuple[int, int, int] | None = None
    fan_half_angle_deg: float = 0.0
    frequency_mhz: float = 7.5
    depth_cm: float = 4.0
    frame_rate: float = 30.0
    transducer_type: str = "LINEAR"

    @property
    def is_color(self) -> bool:
        """True when images are RGB (tinted colour map)."""
        return self.tint is not None


PHANTOM_DEVICES: dict[str, DeviceStyle] = {
    s.name: s
    for s in (
        DeviceStyle(
            name="PhantomMed-L7", manufacturer="PhantomMed", model="L7", geometry="linear",
            gain_db=0.0, tgc_db=12.0, attenuation_db=14.0, dynamic_range_db=48.0,
            speckle_grain=(1.1, 1.8), resolution_sigma=0.5, tint=None,
            frequency_mhz=7.5, depth_cm=4.0, frame_rate=30.0, transducer_type="LINEAR",
        ),
        DeviceStyle(
            name="PhantomMed-L12", manufacturer="PhantomMed", model="L12", geometry="linear",
            gain_db=6.0, tgc_db=16.0, attenuation_db=18.0, dynamic_range_db=45.0,
            speckle_grain=(0.75, 1.05), resolution_sigma=0.0, tint=None,
            frequency_mhz=12.0, depth_cm=3.0, frame_rate=40.0, transducer_type="LINEAR",
        ),
        DeviceStyle(
            name="PhantomMed-C5", manufacturer="PhantomMed", model="C5", geometry="sector",
            gain_db=-3.0, tgc_db=22.0, attenuation_db=12.0, dynamic_range_db=54.0,
            speckle_grain=(1.6, 2.6), resolution_sigma=0.6, tint=None, fan_half_angle_deg=38.0,
            frequency_mhz=4.0, depth_cm=7.0, frame_rate=20.0, transducer_type="CURVED LINEAR",
        ),
        DeviceStyle(
            name="PhantomMed-T9", manufacturer="PhantomMed", model="T9", geometry="linear",
            gain_db=0.0, tgc_db=13.0, attenuation_db=14.0, dynamic_range_db=66.0,
            speckle_grain=(1.1, 1.5), resolution_sigma=0.5, tint=(176, 138, 96),
            frequency_mhz=9.0, depth_cm=4.0, frame_rate=25.0, transducer_type="LINEAR",
        ),
    )
}
"""The four canonical phantom devices, keyed by canonical name."""

_DISPLAY_REF_DB = 16.0  # level (dB re. glandular RMS) shown as white, before gain


def get_device_style(device: str | DeviceStyle) -> DeviceStyle:
    """Return the :class:`DeviceStyle` for a canonical name (or pass a style through).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(device, DeviceStyle):
        return device
    try:
        return PHANTOM_DEVICES[device]
    except KeyError:
        raise ValueError(
            f"unknown phantom device {device!r}; use one of {sorted(PHANTOM_DEVICES)}"
        ) from None


@dataclass
class PhantomCase:
    """One phantom image with its ground truth.

    Attributes:
        image: (H, W) uint8 greyscale, or (H, W, 3) uint8 RGB for tinted devices.
        mask: (H, W) uint8, 255 inside any lesion, else 0.
        lesion_masks: one (H, W) bool mask per visible lesion.
        boxes: one tight box ``[x1, y1, x2, y2]`` per lesion mask, normalised by W and H
            (``x2 = (max_col + 1) / W``), see :func:`mask_to_box`.
        pathology: ``normal``, ``benign`` or ``malignant``.
        birads: BI-RADS category (``"1"`` for normal).
        device: canonical device name.
        seed: the generator seed.
        shape_stats: one dict per lesion: measured statistics (:func:`shape_statistics`) and the
            BI-RADS descriptors the lesion was drawn with (shape, orientation, margin, posterior).
        fov_mask: (H, W) bool, True inside the field of view (the fan for sector devices).
        spacing: (dy, dx) pixel spacing in cm.
        frame: frame index within a cine, ``None`` for a still image.
    """

    image: np.ndarray
    mask: np.ndarray
    lesion_masks: list[np.ndarray]
    boxes: list[list[float]]
    pathology: str
    birads: str
    device: str
    seed: int
    shape_stats: list[dict[str, Any]]
    fov_mask: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    spacing: tuple[float, float] = (0.0, 0.0)
    frame: int | None = None


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


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _psf_gain(sig_a: float, sig_l: float) -> float:
    d = np.zeros((41, 41))
    d[20, 20] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(d, (sig_a, sig_l)) ** 2).sum()))


@lru_cache(maxsize=16)
def _tint_lut(tint: tuple[int, int, int]) -> np.ndarray:
    g = np.arange(256, dtype=np.float64)[:, None] / 255.0
    mid = np.asarray(tint, dtype=np.float64)[None, :] / 255.0
    top = np.array([[0.98, 0.96, 0.92]])
    rgb = np.where(g <= 0.5, 2 * g * mid, mid + (2 * g - 1) * (top - mid))
    lut = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    lut[0] = 0
    return lut


def _render_frame(
    world: _World,
    style: DeviceStyle,
    geom: _Geometry,
    offset: tuple[float, float],
    fresh: np.ndarray | None,
    rho: float,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render one frame (uint8 image, lesion masks in output pixels) at a world offset."""
    hb, wb = world.frame_shape
    my, mx = world.margin
    oy, ox = my + offset[0], mx + offset[1]
    db = _crop_bilinear(world.db, oy, ox, hb, wb) if (oy or ox) else world.db[:hb, :wb].copy()
    rows = np.arange(hb, dtype=np.float64)[:, None]
    # skin (fixed to the probe): entry echo and dermis
    sk = world.skin_row
    db = np.where(rows < sk + 0.035 * hb, np.maximum(db, -5.0), db)
    db = np.maximum(db, 10.0 - ((rows - sk) / 1.3) ** 2 * 6.0)

    iy, ix = int(round(oy)), int(round(ox))
    scat = world.white[:, iy : iy + hb, ix : ix + wb]
    if fresh is not None:
        scat = rho * scat + math.sqrt(max(0.0, 1 - rho * rho)) * fresh
    amp = 10.0 ** (db / 20.0)
    sig = style.speckle_grain
    field_ri = ndimage.gaussian_filter(scat * amp[None], (0, sig[0], sig[1]), mode="reflect")
    env = np.hypot(field_ri[0], field_ri[1]) / (_psf_gain(*sig) * math.sqrt(2.0))
    if style.resolution_sigma > 0:
        env = ndimage.gaussian_filter(env, style.resolution_sigma)
    depth = rows / hb
    level = 20.0 * np.log10(env + 1e-6) + style.gain_db + (style.tgc_db - style.attenuation_db) * depth
    disp = (level - (_DISPLAY_REF_DB - style.dynamic_range_db)) / style.dynamic_range_db
    disp = 1.0 + 254.0 * np.clip(disp, 0.0, 1.0)

    masks: list[np.ndarray] = []
    for wm in world.lesion_masks:
        if oy or ox:
            fm = _crop_bilinear(wm.astype(np.float64), oy, ox, hb, wb) >= 0.5
        else:
            fm = wm[:hb, :wb]
        masks.append(fm)
    if geom.coords is not None:
        disp = _scan_convert(disp, geom)
        masks = [(_scan_convert(m.astype(np.float64), geom) >= 0.5) for m in masks]
        img = np.where(geom.fov, np.clip(np.round(disp), 1, 255), 0).astype(np.uint8)
    else:
        img = np.round(disp).astype(np.uint8)
    if style.tint is not None:
        img = _tint_lut(tuple(style.tint))[img]
    return img, [np.ascontiguousarray(m) for m in masks]


# ----------------------------------------------------------------------------------------------
# ground-truth helpers
# ----------------------------------------------------------------------------------------------


def mask_to_box(mask: np.ndarray) -> list[float]:
    """Tight normalised box ``[x1, y1, x2, y2]`` of a non-empty 2-D mask.

    ``x1 = min_col / W``, ``y1 = min_row / H``, ``x2 = (max_col + 1) / W``, ``y2 = (max_row + 1) / H``.

    Raises:
        ValueError: if the mask is empty.
    """
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask_to_box: the mask is empty")
    h, w = mask.shape[:2]
    return [float(cols[0] / w), float(rows[0] / h), float((cols[-1] + 1) / w), float((rows[-1] + 1) / h)]


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


# ----------------------------------------------------------------------------------------------
# public generators
# ----------------------------------------------------------------------------------------------


def _check_args(seed: int, pathology: str, birads: str | None, n_lesions: int, size) -> tuple[int, int]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if pathology not in _PATHOLOGY_CODE:
        raise ValueError(f"unknown phantom pathology {pathology!r}; use one of {list(PHANTOM_PATHOLOGIES)}")
    if birads is not None and str(birads) not in BIRADS_CATEGORIES:
        raise ValueError(f"unknown BI-RADS category {birads!r}; use one of {list(BIRADS_CATEGORIES)}")
    if pathology != "normal" and n_lesions < 1:
        raise ValueError(f"n_lesions must be >= 1 for pathology {pathology!r} (use pathology='normal')")
    h, w = (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least (32, 32), got {tuple(size)}")
    return h, w


def _make_case(img, masks, world: _World, style: DeviceStyle, geom: _Geometry, seed: int, frame) -> PhantomCase:
    kept, boxes, stats = [], [], []
    for les, m in zip(world.lesions, masks):
        if not m.any():
            continue  # lesion outside the field of view in this frame
        kept.append(m)
        boxes.append(mask_to_box(m))
        s: dict[str, Any] = dict(shape_statistics(m))
        s.update(les.descriptors)
        stats.append(s)
    union = np.zeros(geom.out_shape, dtype=np.uint8)
    for m in kept:
        union[m] = 255
    return PhantomCase(
        image=img, mask=union, lesion_masks=kept, boxes=boxes, pathology=world.pathology,
        birads=world.birads, device=style.name, seed=int(seed), shape_stats=stats,
        fov_mask=geom.fov.copy(), spacing=(geom.pixel_cm, geom.pixel_cm), frame=frame,
    )


def generate_case(
    seed: int,
    pathology: str = "benign",
    device: str = "PhantomMed-L7",
    size: tuple[int, int] = (128, 128),
    birads: str | None = None,
    n_lesions: int = 1,
) -> PhantomCase:
    """Generate one phantom B-mode image with ground truth.

    Args:
        seed: non-negative seed; the anatomy depends on the seed only, the lesion on seed + pathology.
        pathology: ``normal`` (no lesion), ``benign`` or ``malignant``.
        device: canonical phantom device name (see :data:`PHANTOM_DEVICES`).
        size: output (H, W) in pixels.
        birads: BI-RADS category to record; drawn consistently with the pathology when ``None``.
        n_lesions: lesions to place (non-overlapping; fewer if they do not fit). Ignored for normal.

    Returns:
        a :class:`PhantomCase` (image (H, W) uint8, or (H, W, 3) for tinted devices).

    Raises:
        ValueError: unknown device/pathology/BI-RADS, bad seed or size.
    """
    h, w = _check_args(seed, pathology, birads, n_lesions, size)
    style = get_device_style(device)
    geom = _geometry(style.name, (h, w))
    world = _build_world(int(seed), pathology, None if birads is None else str(birads), n_lesions,
                         geom.beam_shape, (0, 0), float(geom.beam_shape[1]))
    img, masks = _render_frame(world, style, geom, (0.0, 0.0), None, 1.0)
    return _make_case(img, masks, world, style, geom, seed, None)


def generate_cine(
    seed: int,
    pathology: str = "benign",
    device: str = "PhantomMed-L7",
    size: tuple[int, int] = (128, 128),
    n_frames: int = 8,
    birads: str | None = None,
    n_lesions: int = 1,
    sweep: float = 0.1,
    depth_motion: float = 0.025,
    speckle_correlation: float = 0.8,
) -> list[PhantomCase]:
    """Generate a cine loop: the same anatomy under smooth probe motion.

    The probe sweeps laterally by ``+-sweep`` of the beam width (smooth-step in time, random
    direction) while pressure changes the depth by up to ``depth_motion`` of the height (a half
    sine). Speckle = ``speckle_correlation`` x tissue-fixed scatterers + the rest from a fresh field
    that is AR(1)-correlated in time, so frames decorrelate gradually.

    Args:
        seed, pathology, device, size, birads, n_lesions: as in :func:`generate_case`.
        n_frames: number of frames (>= 1).
        sweep: lateral sweep amplitude (fraction of the width, each side).
        depth_motion: maximum depth change (fraction of the height).
        speckle_correlation: weight of the tissue-fixed speckle in [0, 1].

    Returns:
        ``n_frames`` :class:`PhantomCase` objects (``frame`` = 0..n-1) with per-frame masks/boxes; a
        lesion that leaves the field of view has no box in that frame.
    """
    h, w = _check_args(seed, pathology, birads, n_lesions, size)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    style = get_device_style(device)
    geom = _geometry(style.name, (h, w))
    hb, wb = geom.beam_shape
    mrng = np.random.default_rng([int(seed), 5])
    ax = abs(sweep) * wb * mrng.uniform(0.7, 1.0)
    ay = abs(depth_motion) * hb * mrng.uniform(0.5, 1.0)
    direction = 1.0 if mrng.random() < 0.5 else -1.0
    margin = (int(math.ceil(ay)) + 2, int(math.ceil(ax)) + 2)
    world = _build_world(int(seed), pathology, None if birads is None else str(birads), n_lesions,
                         (hb, wb), margin, float(wb))
    frng = np.random.default_rng([int(seed), 4])
    a = 0.7
    fresh = frng.standard_normal((2, hb, wb))
    cases = []
    for t in range(n_frames):
        s = t / (n_frames - 1) if n_frames > 1 else 0.5
        smooth = s * s * (3 - 2 * s)
        ox = direction * ax * (2 * smooth - 1) + mrng.normal(0, 0.15)
        oy = ay * math.sin(math.pi * s) - ay / 2 + mrng.normal(0, 0.1)
        ox = float(np.clip(ox, -margin[1] + 1, margin[1] - 1))
        oy = float(np.clip(oy, -margin[0] + 1, margin[0] - 1))
        if t:
            fresh = a * fresh + math.sqrt(1 - a * a) * frng.standard_normal((2, hb, wb))
        img, masks = _render_frame(world, style, geom, (oy, ox), fresh, speckle_correlation)
        cases.append(_make_case(img, masks, world, style, geom, seed, t))
    return cases


# ----------------------------------------------------------------------------------------------
# data set writer and sample grid
# ----------------------------------------------------------------------------------------------


def _save_image(arr: np.ndarray, path: pathlib.Path, fmt: str) -> None:
    if fmt == "png":
        atomic_save_png(arr, path, optimize=False, compress_level=6)
        return
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    atomic_write_bytes(path, buf.getvalue())


def write_dataset(
    out_dir: str | os.PathLike,
    n: int = 200,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    devices: Sequence[str] | None = None,
    pathologies: Sequence[str] = ("benign", "malignant"),
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    image_format: str = "png",
) -> pathlib.Path:
    """Write a phantom data set (images, masks and a schema-1 datalist) to ``out_dir``.

    Items are balanced over pathology x device (round robin). Within each pathology x device cell,
    images are grouped into pseudonymous patients (``PH-P0001``; about a third have two images, one
    study ``PH-S0001`` each), and patients are split into training/validation/test by
    ``split_fractions`` within each cell, so no patient crosses splits and every split sees every
    cell when the cell is large enough. Output is byte-identical for identical arguments.

    Layout::

        out_dir/images/ph_000000.png   out_dir/masks/ph_000000.png   out_dir/datalist.json

    Args:
        out_dir: output folder (created).
        n: number of images.
        seed: data-set seed (per-image seeds are derived from it and stored in ``provenance``).
        size: image (H, W).
        devices: canonical phantom device names (default: all four).
        pathologies: pathologies to draw (``normal``, ``benign``, ``malignant``).
        split_fractions: (training, validation, test) fractions of patients.
        image_format: ``"png"`` (default) or ``"jpg"``; masks are always PNG.

    Returns:
        the path of ``datalist.json``.
    """
    out = pathlib.Path(out_dir)
    devices = list(PHANTOM_DEVICES) if devices is None else [get_device_style(d).name for d in devices]
    pathologies = list(pathologies)
    for p in pathologies:
        if p not in _PATHOLOGY_CODE:
            raise ValueError(f"unknown phantom pathology {p!r}; use one of {list(PHANTOM_PATHOLOGIES)}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fr = np.asarray(split_fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers, got {split_fractions!r}")
    fr = fr / fr.sum()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    cells = [(p, d) for p in pathologies for d in devices]
    item_seeds = np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint32)
    rng = np.random.default_rng([int(seed), 77])
    by_cell: dict[int, list[int]] = {}
    for i in range(n):
        by_cell.setdefault(i % len(cells), []).append(i)

    split_names = ("training", "validation", "test")
    patient_of: dict[int, tuple[str, str, str]] = {}
    pcount = 0
    for ci in range(len(cells)):
        idx = by_cell.get(ci, [])
        groups: list[list[int]] = []
        k = 0
        while k < len(idx):
            size_g = 2 if (k + 1 < len(idx) and rng.random() < 0.35) else 1
            groups.append(idx[k : k + size_g])
            k += size_g
        order = rng.permutation(len(groups))
        n_val = int(round(fr[1] * len(groups)))
        n_test = int(round(fr[2] * len(groups)))
        n_val = min(n_val, len(groups))
        n_test = min(n_test, len(groups) - n_val)
        for rank, gi in enumerate(order):
            split = "validation" if rank < n_val else "test" if rank < n_val + n_test else "training"
            pcount += 1
            pid, sid = f"PH-P{pcount:04d}", f"PH-S{pcount:04d}"
            for i in groups[gi]:
                patient_of[i] = (pid, sid, split)

    lists: dict[str, list[dict]] = {s: [] for s in split_names}
    for i in range(n):
        pathology, device = cells[i % len(cells)]
        case = generate_case(int(item_seeds[i]), pathology, device, size)
        name = f"ph_{i:06d}"
        img_rel = f"images/{name}.{image_format}"
        mask_rel = f"masks/{name}.png"
        _save_image(case.image, out / img_rel, image_format)
        _save_image(case.mask, out / mask_rel, "png")
        pid, sid, split = patient_of[i]
        lists[split].append({
            "image": img_rel,
            "mask": mask_rel,
            "pathology": pathology,
            "device": device,
            "birads": case.birads,
            "boxes": case.boxes,
            "patient_id": pid,
            "study_id": sid,
            "split": split,
            "width": int(size[1]),
            "height": int(size[0]),
            "provenance": {"source": "phantom", "seed": int(item_seeds[i]), "index": i},
        })
    datalist = {
        "schema_version": 1,
        "name": "phantom",
        "description": (f"busgen-monai breast ultrasound phantom: n={n}, seed={seed}, size={list(size)}, "
                        "balanced over pathology x device, patient-wise splits"),
        "pathologies": pathologies,
        "devices": devices,
        **lists,
    }
    path = out / "datalist.json"
    atomic_write_json(path, datalist, indent=2)
    return path


def sample_grid(
    images: Sequence[np.ndarray | str | os.PathLike],
    labels: Sequence[str] | None,
    path: str | os.PathLike,
    ncols: int = 8,
    tile: int = 128,
) -> pathlib.Path:
    """Save a captioned grid of images as a PNG (PIL only; deterministic).

    Args:
        images: arrays (H, W) / (H, W, 3) (uint8, or float in [0, 1]) or image file paths.
        labels: one caption per image (or ``None``).
        path: output PNG path (parent folders are created).
        ncols: images per row.
        tile: tile edge in pixels (images are resized to fit, keeping the aspect ratio).

    Returns:
        the written path.
    """
    from PIL import Image, ImageDraw

    if labels is not None and len(labels) != len(images):
        raise ValueError(f"sample_grid: {len(images)} images but {len(labels)} labels")
    n = len(images)
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, math.ceil(n / ncols))
    cap = 14
    canvas = Image.new("RGB", (ncols * (tile + 4) + 4, nrows * (tile + cap + 6) + 4), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for k, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            with Image.open(item) as src:
                im = src.convert("RGB")
        else:
            a = np.asarray(item)
            if a.dtype != np.uint8:
                a = np.clip(np.round(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
            im = Image.fromarray(a).convert("RGB")
        im.thumbnail((tile, tile))
        r, c = divmod(k, ncols)
        x0, y0 = 4 + c * (tile + 4), 4 + r * (tile + cap + 6)
        canvas.paste(im, (x0 + (tile - im.width) // 2, y0 + (tile - im.height) // 2))
        if labels is not None:
            draw.text((x0 + 1, y0 + tile + 2), str(labels[k])[: max(4, tile // 6)], fill=(235, 235, 235))
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save_png(canvas, out)
