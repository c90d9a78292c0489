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

Modules: :mod:`.device_styles` (the four fictional systems), :mod:`.anatomy` (beam-space geometry, tissue
and lesions), :mod:`.render` (speckle and the device chain), this module (cases, cines and their ground truth) and
:mod:`.dataset` (a data set on disk + datalist, sample grids). The shape measurements used for ``shape_stats``
live in :mod:`busgen_monai.evaluation.lesion_shape`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from busgen_monai.evaluation.lesion_shape import shape_statistics

from .anatomy import _PATHOLOGY_CODE, BIRADS_CATEGORIES, PHANTOM_PATHOLOGIES, _build_world, _geometry, _Geometry, _World
from .device_styles import DeviceStyle, get_device_style
from .render import _render_frame

__all__ = ["PHANTOM_PATHOLOGIES", "BIRADS_CATEGORIES", "PhantomCase", "generate_case", "generate_cine", "mask_to_box"]



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
