"""Dictionary transforms for training the conditional generator: loading, box-preserving crop, flip, intensity
jitter, box mask and condition encoding. Boxes are normalised ``[x1, y1, x2, y2]`` lists (the datalist format) and
every geometric transform updates them.

Random transforms follow the TorchIO pattern: they only draw parameters and call a deterministic twin
(:class:`RandBoxSquareCropd` -> :class:`BoxSquareCropd`, :class:`RandBoxFlipd` -> :class:`BoxFlipd`,
:class:`RandIntensityJitterd` -> :class:`IntensityJitterd`), so augmentations are reproducible and testable.

The training pipeline (:func:`bus_train_transforms`, which the bundles' ``preprocessing`` keys call)::

    LoadUltrasoundImaged("image", channels=1)  # (1, H, W) float, 0..255 (grey B-mode; channels=3 for RGB)
    ScaleIntensityRanged("image", 0, 255, -1, 1)
    Resized("image", load_size, size_mode="longest")    # shrink once; boxes are normalised, unchanged
    RandBoxSquareCropd("image", min_scale=0.6)           # random square that keeps every box
    Resized("image", (S, S))
    RandBoxFlipd("image", prob=0.5)
    RandIntensityJitterd("image", prob=0.8)
    BoxMaskd()                              # "box_mask": (1, S, S) from the final boxes
    EncodeConditionsd(codec)                # "cond": (1, K) packed pathology/device/birads/boxes
    SelectItemsd(["image", "box_mask", "cond"]), EnsureTyped(float32)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandomizableTransform,
    Resized,
    ScaleIntensityRanged,
    SelectItemsd,
)

from busgen_monai.data.io import read_image_gray, read_image_rgb
from .conditions import ConditionCodec, render_box_mask

__all__ = [
    "box_preserving_window",
    "crop_square",
    "crop_boxes",
    "flip_boxes_horizontal",
    "adjust_intensity",
    "LoadRGBImaged",
    "LoadUltrasoundImaged",
    "BoxSquareCropd",
    "RandBoxSquareCropd",
    "BoxFlipd",
    "RandBoxFlipd",
    "IntensityJitterd",
    "RandIntensityJitterd",
    "BoxMaskd",
    "EncodeConditionsd",
    "bus_train_transforms",
]


def _boxes_array(boxes: Any) -> np.ndarray:
    return np.asarray(boxes if boxes is not None else [], dtype=np.float64).reshape(-1, 4)


def _spatial(img: Any) -> tuple[int, int]:
    return int(img.shape[-2]), int(img.shape[-1])


# ---------------------------------------------------------------------------------------------- functions
def box_preserving_window(
    height: int,
    width: int,
    boxes: Any,
    scale: float = 1.0,
    position: Sequence[float] = (0.5, 0.5),
    min_scale: float = 0.5,
) -> tuple[int, int, int]:
    """Square crop window ``(x0, y0, side)`` in pixels that contains every box.

    ``side`` runs from the smallest allowed (the boxes' union, at least ``min_scale * min(H, W)``) at ``scale=0`` to
    ``min(H, W)`` at ``scale=1``; ``position`` (``0..1`` per axis) places the window between its extreme positions
    that still contain the union of the boxes and stay inside the image. When the union is larger than
    ``min(H, W)`` the window is the union's size and extends past the image (the crop pads).

    Args:
        height, width: image size.
        boxes: normalised ``[x1, y1, x2, y2]`` boxes (may be empty).
        scale: ``0..1``, window size.
        position: ``(px, py)`` in ``0..1``.
        min_scale: smallest window as a fraction of ``min(H, W)``.
    """
    arr = _boxes_array(boxes)
    smax = min(height, width)
    need = 0
    if len(arr):
        ux1, uy1 = math.floor(arr[:, 0].min() * width + 1e-6), math.floor(arr[:, 1].min() * height + 1e-6)
        ux2, uy2 = math.ceil(arr[:, 2].max() * width - 1e-6), math.ceil(arr[:, 3].max() * height - 1e-6)
        need = max(ux2 - ux1, uy2 - uy1, 1)
    lo_side = max(need, int(math.ceil(min(max(min_scale, 0.0), 1.0) * smax)), 1)
    side = lo_side if lo_side >= smax else int(round(lo_side + float(np.clip(scale, 0, 1)) * (smax - lo_side)))

    def axis(extent: int, u1: int | None, u2: int | None, p: float) -> int:
        lo, hi = min(0, extent - side), max(0, extent - side)
        if u1 is not None:
            lo, hi = max(u2 - side, lo), min(u1, hi)
        if lo > hi:  # only when the window must exceed the image: centre it on the boxes
            lo = hi = int(round((u1 + u2 - side) / 2))
        return int(round(lo + float(np.clip(p, 0, 1)) * (hi - lo)))

    if len(arr):
        x0 = axis(width, ux1, ux2, position[0])
        y0 = axis(height, uy1, uy2, position[1])
    else:
        x0 = axis(width, None, None, position[0])
        y0 = axis(height, None, None, position[1])
    return x0, y0, side


def crop_square(img: torch.Tensor | np.ndarray, x0: int, y0: int, side: int, fill_value: float = 0.0) -> torch.Tensor:
    """Crop ``img`` ``(C, H, W)`` to the square ``[y0, y0 + side) x [x0, x0 + side)``, padding outside the image."""
    img = torch.as_tensor(img)
    h, w = _spatial(img)
    out = torch.full((*img.shape[:-2], side, side), float(fill_value), dtype=img.dtype, device=img.device)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[..., sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[..., sy0:sy1, sx0:sx1]
    return out


def crop_boxes(boxes: Any, height: int, width: int, x0: int, y0: int, side: int) -> list[list[float]]:
    """Normalised boxes of an ``H x W`` image -> normalised boxes of its square crop ``(x0, y0, side)``."""
    arr = _boxes_array(boxes)
    if not len(arr):
        return []
    px = arr * np.array([width, height, width, height], dtype=np.float64)
    out = (px - np.array([x0, y0, x0, y0], dtype=np.float64)) / float(side)
    return np.clip(out, 0.0, 1.0).tolist()


def flip_boxes_horizontal(boxes: Any) -> list[list[float]]:
    """Boxes of the horizontally flipped image: ``x1' = 1 - x2``, ``x2' = 1 - x1``."""
    arr = _boxes_array(boxes)
    if not len(arr):
        return []
    return np.stack([1.0 - arr[:, 2], arr[:, 1], 1.0 - arr[:, 0], arr[:, 3]], axis=1).tolist()


def adjust_intensity(
    img: torch.Tensor, brightness: float = 0.0, contrast: float = 1.0, value_range: Sequence[float] = (-1.0, 1.0)
) -> torch.Tensor:
    """``clip((img - mean) * contrast + mean + brightness * (hi - lo) / 2, lo, hi)`` over the whole image."""
    img = torch.as_tensor(img)
    lo, hi = float(value_range[0]), float(value_range[1])
    mean = img.float().mean()
    out = (img - mean) * float(contrast) + mean + float(brightness) * (hi - lo) / 2.0
    return out.clamp(lo, hi).to(img.dtype)


# ---------------------------------------------------------------------------------------------- loading
class LoadUltrasoundImaged(MapTransform):
    """Read image files (PNG/JPEG/TIFF/NIfTI frame via :mod:`busgen_monai.data.io`) as ``(C, H, W)`` float32 tensors
    with values 0..255.

    ``channels=1`` (default, grey B-mode): colour files are converted with ITU-R 601 luma weights.
    ``channels=3`` (RGB, e.g. colour Doppler): grey files are replicated to three channels.
    """

    def __init__(self, keys: KeysCollection = "image", channels: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(channels) not in (1, 3):
            raise ValueError(f"channels must be 1 (grey B-mode) or 3 (RGB), got {channels} (key: image_channels)")
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.channels == 1:
                arr = read_image_gray(d[key])[None]
            else:
                arr = read_image_rgb(d[key]).transpose(2, 0, 1)
            d[f"{key}_path"] = str(d[key])
            d[key] = torch.from_numpy(np.ascontiguousarray(arr)).float()
        return d


class LoadRGBImaged(LoadUltrasoundImaged):
    """:class:`LoadUltrasoundImaged` with ``channels=3``: ``(3, H, W)`` float32, 0..255, grey replicated to RGB."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, channels=3, allow_missing_keys=allow_missing_keys)


# ---------------------------------------------------------------------------------------------- crop
class BoxSquareCropd(MapTransform):
    """Deterministic square crop that keeps every box (see :func:`box_preserving_window`); boxes are updated.

    Args:
        keys: image-like keys ``(C, H, W)`` cropped with the same window.
        box_key: key of the normalised boxes.
        scale, position, min_scale: window parameters (default: the largest square centred on the boxes).
        fill_value: value outside the image (one per key or one for all); ``-1`` is black in ``[-1, 1]`` images.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        box_key: str = "boxes",
        scale: float = 1.0,
        position: Sequence[float] = (0.5, 0.5),
        min_scale: float = 0.5,
        fill_value: float | Sequence[float] = -1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key
        self.scale = float(scale)
        self.position = tuple(float(p) for p in position)
        self.min_scale = float(min_scale)
        n = len(self.keys)
        self.fill_value = [float(fill_value)] * n if np.isscalar(fill_value) else [float(v) for v in fill_value]
        if len(self.fill_value) != n:
            raise ValueError(f"fill_value needs one value per key ({n}), got {len(self.fill_value)}")

    def window(self, d: Mapping) -> tuple[int, int, int]:
        h, w = _spatial(d[self.first_key(d)])
        return box_preserving_window(h, w, d.get(self.box_key), self.scale, self.position, self.min_scale)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = self.first_key(d)
        if first == []:
            return d
        h, w = _spatial(d[first])
        x0, y0, side = self.window(d)
        for key, fill in zip(self.keys, self.fill_value):
            if key in d:
                d[key] = crop_square(d[key], x0, y0, side, fill)
        if self.box_key in d:
            d[self.box_key] = crop_boxes(d[self.box_key], h, w, x0, y0, side)
        d["crop_window"] = [x0, y0, side]
        return d


class RandBoxSquareCropd(RandomizableTransform, MapTransform):
    """Random square crop that keeps every box (BUSGen's augmentation): draws the window size and position
    uniformly and calls :class:`BoxSquareCropd`. With probability ``1 - prob`` the deterministic centred crop is used
    (the output is square either way).

    Args:
        keys, box_key, min_scale, fill_value: as :class:`BoxSquareCropd`.
        prob: probability of a random window.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        box_key: str = "boxes",
        min_scale: float = 0.5,
        prob: float = 1.0,
        fill_value: float | Sequence[float] = -1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.crop = BoxSquareCropd(keys, box_key, 1.0, (0.5, 0.5), min_scale, fill_value, allow_missing_keys)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.crop.scale = float(self.R.uniform())
            self.crop.position = (float(self.R.uniform()), float(self.R.uniform()))
        else:
            self.crop.scale, self.crop.position = 1.0, (0.5, 0.5)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return self.crop(data)


# ---------------------------------------------------------------------------------------------- flip
class BoxFlipd(MapTransform):
    """Horizontal flip of image-like keys ``(C, H, W)`` and of the boxes."""

    def __init__(
        self, keys: KeysCollection = "image", box_key: str = "boxes", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.flip(torch.as_tensor(d[key]), dims=(-1,))
        if self.box_key in d:
            d[self.box_key] = flip_boxes_horizontal(d[self.box_key])
        return d


class RandBoxFlipd(RandomizableTransform, MapTransform):
    """With probability ``prob``, :class:`BoxFlipd`."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        box_key: str = "boxes",
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.flip = BoxFlipd(keys, box_key, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize(None)
        return self.flip(data) if self._do_transform else dict(data)


# ---------------------------------------------------------------------------------------------- intensity
class IntensityJitterd(MapTransform):
    """Deterministic brightness/contrast change (:func:`adjust_intensity`)."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        brightness: float = 0.0,
        contrast: float = 1.0,
        value_range: Sequence[float] = (-1.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.value_range = tuple(value_range)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = adjust_intensity(d[key], self.brightness, self.contrast, self.value_range)
        return d


class RandIntensityJitterd(RandomizableTransform, MapTransform):
    """Random brightness shift in ``[-brightness, brightness]`` (fraction of the value range) and contrast factor in
    ``[1 - contrast, 1 + contrast]``, with probability ``prob`` (the colour-jitter part of BUSGen's augmentation for
    grey-scale ultrasound)."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.8,
        brightness: float = 0.1,
        contrast: float = 0.2,
        value_range: Sequence[float] = (-1.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.max_brightness = float(brightness)
        self.max_contrast = float(contrast)
        self.jitter = IntensityJitterd(keys, 0.0, 1.0, value_range, allow_missing_keys)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.jitter.brightness = float(self.R.uniform(-self.max_brightness, self.max_brightness))
        self.jitter.contrast = float(self.R.uniform(1 - self.max_contrast, 1 + self.max_contrast))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return self.jitter(data) if self._do_transform else dict(data)


# ---------------------------------------------------------------------------------------------- conditions
class BoxMaskd(MapTransform):
    """Render the boxes as a binary mask ``(1, H, W)`` (H, W of ``ref_key``) under ``mask_key``: the same pixels the
    network's box-mask channel uses (:func:`busgen_monai.data.conditions.render_box_mask`)."""

    def __init__(self, box_key: str = "boxes", mask_key: str = "box_mask", ref_key: str = "image") -> None:
        super().__init__([box_key], allow_missing_keys=True)
        self.box_key, self.mask_key, self.ref_key = box_key, mask_key, ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        arr = torch.as_tensor(_boxes_array(d.get(self.box_key)), dtype=torch.float32)
        d[self.mask_key] = render_box_mask(arr[None], None, _spatial(d[self.ref_key]))[0]
        return d


class EncodeConditionsd(MapTransform):
    """Encode ``pathology``, ``device``, ``birads`` and ``boxes`` of an item into the packed condition ``(1, K)``
    under ``output_key`` (:meth:`ConditionCodec.encode_item`). Unknown names raise with the fix.

    Args:
        codec: the condition codec (vocabularies).
        output_key: key of the packed conditions.
        use_birads: encode BI-RADS (else it is null).
    """

    def __init__(self, codec: ConditionCodec, output_key: str = "cond", use_birads: bool = True) -> None:
        super().__init__(["pathology"], allow_missing_keys=True)
        self.codec = codec
        self.output_key = output_key
        self.use_birads = bool(use_birads)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        try:
            packed = self.codec.encode_item(d, use_birads=self.use_birads)
        except KeyError as err:
            raise KeyError(f"item {d.get('image_path', d.get('image'))}: {err.args[0]}") from None
        d[self.output_key] = torch.from_numpy(packed)[None]
        return d


# ---------------------------------------------------------------------------------------------- pipelines
def bus_train_transforms(
    codec: ConditionCodec | None,
    image_size: int,
    load_size: int | None = None,
    augment: bool = True,
    min_crop_scale: float = 0.6,
    flip_prob: float = 0.5,
    intensity_prob: float = 0.8,
    brightness: float = 0.1,
    contrast: float = 0.2,
    use_birads: bool = False,
    keep_keys: Sequence[str] | None = None,
    image_channels: int = 1,
    extra: Sequence[Any] = (),
) -> Compose:
    """The generator's preprocessing: the one definition the pretrain bundle's ``train#preprocessing`` and
    ``validate#preprocessing`` (and so adapt and every packaged bundle), the CPSampling protector bundle and Python
    users call, so a crop size or augmentation change is one edit.

    Load (grey by default) -> [-1, 1] -> shrink the longest side to ``load_size`` (default ``2 * image_size``) ->
    a square crop that keeps every lesion box (random, at least ``min_crop_scale`` of the short side, when
    ``augment``; centred and full otherwise) -> ``image_size`` square -> with ``augment`` a box-aware flip and
    intensity jitter -> ``extra`` transforms (e.g. a plugin's device augmentation) -> the box mask and packed
    conditions (``codec`` given; ``None`` skips both, for image-only users such as the protector) -> only
    ``keep_keys`` (default ``image, box_mask, cond``, or ``image`` without a codec), as float32 tensors.
    """
    load_size = int(load_size or 2 * image_size)
    xforms: list = [
        LoadUltrasoundImaged("image", channels=image_channels),
        ScaleIntensityRanged("image", a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0, clip=True),
        Resized("image", spatial_size=load_size, size_mode="longest", mode="area"),
    ]
    if augment:
        xforms += [
            RandBoxSquareCropd("image", "boxes", min_scale=min_crop_scale, prob=1.0),
            Resized("image", spatial_size=(image_size, image_size), mode="area"),
            RandBoxFlipd("image", "boxes", prob=flip_prob),
            RandIntensityJitterd("image", prob=intensity_prob, brightness=brightness, contrast=contrast),
        ]
    else:
        xforms += [
            BoxSquareCropd("image", "boxes", min_scale=1.0),
            Resized("image", spatial_size=(image_size, image_size), mode="area"),
        ]
    xforms += list(extra or ())
    if codec is not None:
        xforms += [BoxMaskd("boxes", "box_mask", "image"), EncodeConditionsd(codec, "cond", use_birads)]
    keep = list(keep_keys) if keep_keys is not None else (["image", "box_mask", "cond"] if codec is not None
                                                           else ["image"])
    xforms += [SelectItemsd(keep), EnsureTyped(keep, dtype=torch.float32, track_meta=False)]
    return Compose(xforms)
