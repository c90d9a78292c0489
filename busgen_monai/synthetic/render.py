"""Render one phantom frame: speckle (Rayleigh envelope of scatterers convolved with the device's PSF),
then the device chain (blur, attenuation against TGC, gain, log compression, 8-bit quantisation, scan
conversion, tint). Part of :mod:`busgen_monai.synthetic.phantom`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .anatomy import _crop_bilinear, _Geometry, _scan_convert, _World
from .device_styles import DeviceStyle


__all__: list[str] = []  # the phantom's internals; nothing public


_DISPLAY_REF_DB = 16.0  # level (dB re. glandular RMS) shown as white, before gain


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
