"""Small image I/O helpers shared by stages (PNG/JPEG/TIFF via Pillow, NIfTI via nibabel)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["read_image_rgb", "read_image_gray"]


def _read(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        arr = np.asarray(nib.load(str(path)).dataobj)
        arr = np.squeeze(arr)
        # NIfTI frames written by busgen ingest are stored (x, y[, c]); turn them back into rows x columns
        arr = np.swapaxes(arr, 0, 1) if arr.ndim >= 2 else arr
        if arr.dtype != np.uint8:
            lo, hi = float(arr.min()), float(arr.max())
            arr = ((arr - lo) / (hi - lo + 1e-12) * 255).round().astype(np.uint8)
        return arr
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = arr.min(), arr.max()
                return ((arr - lo) / (hi - lo + 1e-12) * 255).round().astype(np.uint8)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB") if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else im.convert("L")
            return np.asarray(im)
    except OSError as err:
        raise ValueError(f"image {path} cannot be read: {err}") from err


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 (grey replicated to three channels)."""
    arr = _read(path)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def read_image_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W)`` uint8 (RGB converted with ITU-R 601 luma weights)."""
    arr = _read(path)
    if arr.ndim == 3:
        arr = (arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    return arr
