"""Dictionary transforms for the classifier: image loading and lesion-box crop.

Both are deterministic MONAI ``MapTransform``s, so ``CacheDataset`` caches their output and only the
random augmentations after them run every epoch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from busgen_monai.data.io import read_image_gray, read_image_rgb

__all__ = ["LoadImageRGBd", "LesionCropd", "lesion_crop_window"]


class LoadImageRGBd(MapTransform):
    """Read PNG/JPEG/TIFF/NIfTI images with busgen-monai's reader as channel-first float tensors.

    ``channels=1`` (the bundle's default ``image_channels``: grey B-mode, like the generator): ``(1, H, W)``, colour
    files converted with ITU-R 601 luma weights. ``channels=3``: ``(3, H, W)`` RGB, grey replicated. Values in
    [0, 255] (16-bit/NIfTI images are min-max scaled to 0..255 by the reader).
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False, channels: int = 3) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(channels) not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels} (key: image_channels)")
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
                raise TypeError(f"LoadImageRGBd: key '{key}' must hold an image path, got {type(path).__name__}")
            if self.channels == 1:
                arr = read_image_gray(path)[None]  # (1, H, W) uint8
            else:
                arr = read_image_rgb(path).transpose(2, 0, 1)  # (3, H, W) uint8
            d[key] = torch.from_numpy(np.ascontiguousarray(arr)).float()
            d[f"{key}_path"] = str(path)
        return d


def lesion_crop_window(
    box: Sequence[float], height: int, width: int, margin: float = 0.25, square: bool = True, min_size: float = 0.0
) -> tuple[int, int, int, int]:
    """Pixel window ``(y0, y1, x0, x1)`` around a normalised box, widened by ``margin`` x the box size on
    each side, made square (longer side) when asked, at least ``min_size`` x the image's shorter side,
    and shifted/clipped to stay inside the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = (x2 - x1) * width, (y2 - y1) * height
    cx, cy = (x1 + x2) / 2 * width, (y1 + y2) / 2 * height
    w = bw * (1 + 2 * margin)
    h = bh * (1 + 2 * margin)
    if square:
        w = h = max(w, h)
    floor = min_size * min(height, width)
    w, h = min(max(w, floor, 2.0), width), min(max(h, floor, 2.0), height)
    x0 = int(round(min(max(cx - w / 2, 0.0), width - w)))
    y0 = int(round(min(max(cy - h / 2, 0.0), height - h)))
    return y0, min(height, y0 + int(round(h))), x0, min(width, x0 + int(round(w)))


class LesionCropd(MapTransform):
    """Crop each image around its lesion box (``box_key``: normalised ``[x1, y1, x2, y2]``) with a margin.

    Args:
        keys: image keys; images are channel-first ``(C, H, W)``.
        box_key: key of the normalised box (the union of the item's boxes; ``[0, 0, 1, 1]`` = whole image).
        margin: context added on each side, as a fraction of the box width/height.
        square: make the window square (its longer side), so resizing keeps the lesion's aspect ratio.
        min_size: smallest window side as a fraction of the image's shorter side (tiny lesions keep context).
        enabled: when False the transform passes images through (the bundle's ``lesion_crop`` flag).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        box_key: str = "box",
        margin: float = 0.25,
        square: bool = True,
        min_size: float = 0.0,
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if margin < 0:
            raise ValueError(f"LesionCropd: margin must be >= 0, got {margin}")
        self.box_key, self.margin, self.square, self.min_size, self.enabled = box_key, margin, square, min_size, enabled

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        box = d.get(self.box_key)
        if box is None:
            raise KeyError(f"LesionCropd: item has no '{self.box_key}' key (set lesion_crop to false for items without boxes)")
        box = [float(v) for v in (box.tolist() if hasattr(box, "tolist") else box)]
        if box == [0.0, 0.0, 1.0, 1.0]:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            h, w = int(img.shape[-2]), int(img.shape[-1])
            y0, y1, x0, x1 = lesion_crop_window(box, h, w, self.margin, self.square, self.min_size)
            d[key] = img[..., y0:y1, x0:x1]
        return d
