"""Box conversion between the datalist (normalised ``[x1, y1, x2, y2]``) and the detector (pixels).

The geometric transforms are the library's and MONAI's, and keep boxes right by construction:

* ``monai.transforms.Resized`` to a fixed square size: boxes are normalised, so they do not change;
* ``busgen_monai.data.transforms.RandBoxFlipd`` / ``BoxFlipd``: flips image and boxes together
  (``x1' = 1 - x2``, ``x2' = 1 - x1``);
* ``busgen_monai.data.transforms.RandBoxSquareCropd``: box-preserving square crop (optional).

The only transform written here, :class:`NormalisedBoxesToPixelsd`, is the last step before the network:
normalised boxes -> ``(N, 4)`` float32 pixel boxes of the final image and ``(N,)`` int64 labels; zero boxes give
``(0, 4)`` / ``(0,)`` tensors (a lesion-free image).

Axis order: the datalist's ``[x1, y1, x2, y2]`` has x along image columns. MONAI's detection stack
(``StandardMode``, anchors, box coder) orders box coordinates by the tensor's spatial axes, first axis first; for
our ``(C, H, W)`` tensors that is ``[row1, col1, row2, col2]`` = ``[y1, x1, y2, x2]``. :func:`boxes_to_pixels` and
:func:`boxes_to_normalised` convert between the two, so the detector sees MONAI's order and everything outside
it (datalists, reports, predictions) sees the datalist's.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

__all__ = ["NormalisedBoxesToPixelsd", "boxes_to_pixels", "boxes_to_normalised"]


#: datalist ``[x1, y1, x2, y2]`` <-> MONAI ``[row1, col1, row2, col2]`` (the permutation is its own inverse)
_SWAP = [1, 0, 3, 2]


def boxes_to_pixels(boxes: Any, height: int, width: int) -> torch.Tensor:
    """Normalised datalist boxes ``(N, 4)`` ``[x1, y1, x2, y2]`` -> MONAI pixel boxes of a ``(C, H, W)`` image,
    ``[row1, col1, row2, col2]`` = ``[y1 * H, x1 * W, y2 * H, x2 * W]`` (float32, clipped to the image)."""
    arr = np.asarray(boxes if boxes is not None else [], dtype=np.float32).reshape(-1, 4)
    scale = np.array([height, width, height, width], dtype=np.float32)
    px = np.clip(arr[:, _SWAP], 0.0, 1.0) * scale
    return torch.from_numpy(np.ascontiguousarray(px))


def boxes_to_normalised(boxes: Any, height: int, width: int) -> np.ndarray:
    """MONAI pixel boxes ``[row1, col1, row2, col2]`` of a ``(C, H, W)`` image -> normalised datalist boxes
    ``[x1, y1, x2, y2]`` clipped to [0, 1] (inverse of :func:`boxes_to_pixels`)."""
    arr = torch.as_tensor(boxes).detach().cpu().float().numpy().reshape(-1, 4)
    scale = np.array([height, width, height, width], dtype=np.float32)
    return np.clip(arr / scale, 0.0, 1.0)[:, _SWAP].astype(np.float64)


class NormalisedBoxesToPixelsd(MapTransform):
    """``d[box_key]`` (normalised list) -> MONAI pixel tensor ``(N, 4)`` (``[row1, col1, row2, col2]``, see
    :func:`boxes_to_pixels`) of ``d[ref_key]`` ``(C, H, W)``; ``d[label_key]``
    -> int64 ``(N,)`` (zeros when absent). The normalised boxes stay available under ``norm_box_key``."""

    def __init__(self, box_key: str = "boxes", label_key: str = "labels", ref_key: str = "image",
                 norm_box_key: str = "boxes_norm") -> None:
        super().__init__([box_key], allow_missing_keys=True)
        self.box_key, self.label_key, self.ref_key, self.norm_box_key = box_key, label_key, ref_key, norm_box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        h, w = (int(s) for s in d[self.ref_key].shape[-2:])
        norm = np.asarray(d.get(self.box_key) or [], dtype=np.float64).reshape(-1, 4)
        d[self.norm_box_key] = norm.tolist()
        d[self.box_key] = boxes_to_pixels(norm, h, w)
        labels = d.get(self.label_key)
        if labels is None or len(labels) != len(norm):
            labels = [0] * len(norm)
        d[self.label_key] = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
        return d


def stack_images(batch: Sequence[Mapping[str, Any]], key: str = "image") -> torch.Tensor:
    """``(B, C, H, W)`` from a list of items (all the same size after ``Resized``)."""
    return torch.stack([torch.as_tensor(b[key]).float() for b in batch])
