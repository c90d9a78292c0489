"""MONAI reader for ultrasound DICOM: decoded, 8-bit, cropped to the imaging region, PHI-free metadata.

:class:`BUSDicomReader` is a :class:`monai.data.ImageReader`, so ``LoadImage`` / ``LoadImaged`` use it like
MONAI's own readers, in Python or in a bundle config by dotted path::

    from monai.transforms import LoadImage
    img = LoadImage(reader=BUSDicomReader(frames=0), ensure_channel_first=True)("cine.dcm")  # (C, W, H)

    # bundle config
    {"_target_": "LoadImaged", "keys": "image",
     "reader": "busgen_monai.data.dicom_transforms.BUSDicomReader", "frames": 0}

Array layout (``reverse_indexing=True``, the MONAI convention that ``PILReader`` also follows, so a frame
read from DICOM lines up with the same frame written as PNG by the ingester):

- one frame (``frames`` an int, or a single-frame file): ``(W, H)`` grey or ``(W, H, 3)`` RGB;
- a cine: ``(W, H, T)`` grey or ``(W, H, T, 3)`` RGB (time as the third spatial axis);
- several files: stacked on a new first axis (channel), as MONAI's readers do.

Metadata carries only what is safe to keep: ``spacing_mm`` (from the ultrasound region, or ``None``), the
affine (``diag(dx, dy[, frame time ms], 1)``), crop box and how it was found, frame indices, canonical
device (``"unknown"`` when not in the vocabulary), laterality, view, probe and the salted hash of the SOP
Instance UID. No name, id, date, UID or description reaches the MetaTensor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, ensure_tuple

from .devices import UNKNOWN_DEVICE, DeviceVocabulary, default_vocabulary
from .dicom import UltrasoundDicom, sniff_dicom

__all__ = ["BUSDicomReader"]

_SUFFIXES = (".dcm", ".dicom", ".dic")


class BUSDicomReader(ImageReader):
    """Read ultrasound DICOM frames (single- or multi-frame) through :class:`~busgen_monai.data.dicom.UltrasoundDicom`.

    Args:
        frames: ``None`` (every frame, respecting ``stride``), an int (one frame: a 2-D image) or a sequence
            of frame indices.
        stride: keep every ``stride``-th frame when ``frames`` is ``None``.
        color: ``"keep"``, ``"gray"`` or ``"rgb"``.
        region: ``"auto"`` (ultrasound-region metadata, else detection), ``"metadata"``, ``"detect"`` or
            ``"none"``.
        reverse_indexing: swap rows and columns (``True``: MONAI's ``(W, H)`` convention, like ``PILReader``).
        vocabulary: device vocabulary for the ``device`` metadata (default: built-in).
        salt: salt of the SOP Instance UID hash in the metadata.
        dtype: output dtype (default ``uint8``).

    Raises (from ``read``/``get_data``):
        busgen_monai.data.dicom.DicomRejectError: a file that cannot be decoded (reason code + message).
    """

    def __init__(self, frames: int | Sequence[int] | None = None, stride: int = 1, color: str = "keep",
                 region: str = "auto", reverse_indexing: bool = True, vocabulary: DeviceVocabulary | None = None,
                 salt: str = "busgen", dtype=np.uint8, **kwargs):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.frames = frames
        self.stride = int(stride)
        self.color = color
        self.region = region
        self.reverse_indexing = reverse_indexing
        self.vocabulary = vocabulary or default_vocabulary()
        self.salt = salt
        self.dtype = dtype
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """``True`` for ``.dcm``/``.dicom`` names and for any existing file whose bytes are DICOM
        (PACS exports often have no extension)."""
        for name in ensure_tuple(filename):
            p = Path(name)
            if p.suffix.lower() in _SUFFIXES:
                continue
            if not (p.is_file() and sniff_dicom(p) is not None):
                return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs):
        """Open the file(s); nothing is decoded until :meth:`get_data`."""
        opts = {**self.kwargs, **kwargs}
        objs = [UltrasoundDicom(p, salt=self.salt, color=opts.get("color", self.color),
                                region=opts.get("region", self.region)) for p in ensure_tuple(data)]
        return objs if len(objs) > 1 else objs[0]

    def _one(self, us: UltrasoundDicom) -> tuple[np.ndarray, dict]:
        single = isinstance(self.frames, (int, np.integer)) or (self.frames is None and us.n_frames == 1)
        if isinstance(self.frames, (int, np.integer)):
            indices = [int(self.frames)]
        elif self.frames is None:
            indices = list(range(0, us.n_frames, self.stride))
        else:
            indices = [int(i) for i in self.frames]
        stack = [frame for _, frame in us.frames(indices=indices)]
        arr = stack[0] if single else np.stack(stack)  # (H, W[, C]) or (T, H, W[, C])
        colour = arr.ndim == (3 if single else 4)
        if not single:  # time after the two image axes
            arr = np.moveaxis(arr, 0, 2)  # (H, W, T[, C])
        if self.reverse_indexing:
            arr = np.swapaxes(arr, 0, 1)
        # a strided view: MONAI's own conversion to a tensor makes the one copy (faster than numpy's here)
        arr = arr.astype(self.dtype, copy=False)
        crop = us.crop
        info = us.info
        dx, dy = crop.spacing_mm if crop.spacing_mm else (1.0, 1.0)
        if not self.reverse_indexing:
            dx, dy = dy, dx
        diag = [dx, dy] + ([] if single else [float(info.frame_time_ms or 1.0)]) + [1.0]
        affine = np.diag(diag).astype(np.float64)
        spatial = np.asarray(arr.shape[: 2 if single else 3])
        device = self.vocabulary.find_dicom(info.manufacturer, info.model) or UNKNOWN_DEVICE
        meta = {
            MetaKeys.SPATIAL_SHAPE: spatial,
            MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if colour else float("nan"),
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            "spacing_mm": list(crop.spacing_mm) if crop.spacing_mm else None,
            "crop_box": list(crop.box),
            "crop_source": crop.source,
            "n_frames": us.n_frames,
            "frame_indices": indices,
            "frame_time_ms": info.frame_time_ms,
            "device": device,
            "laterality": info.laterality,
            "view": info.view,
            "probe": info.probe,
            "photometric": info.photometric,
            "sop_instance_uid_hash": info.sop_hash,
        }
        return arr, meta

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Decode the opened file(s): ``(array, metadata)``; several files are stacked on a new first axis."""
        arrays, metas = [], []
        for us in ensure_tuple(img):
            arr, meta = self._one(us)
            arrays.append(arr)
            metas.append(meta)
        if len(arrays) == 1:
            return arrays[0], metas[0]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack DICOM files with different cropped shapes {sorted(shapes)}; "
                             "read them one by one")
        meta = dict(metas[0])
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta
