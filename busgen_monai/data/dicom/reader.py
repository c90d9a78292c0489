"""Decode ultrasound DICOM frame by frame: :class:`FrameConverter` (every photometric to 8-bit grey or RGB),
:class:`UltrasoundDicom` (header, crop, frames) and :func:`read_ultrasound`.

Part of :mod:`busgen_monai.data.dicom` (its docstring states the 8-bit output contract)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .header import _DEFLATED_TS, DicomRejectError, _int, read_header, sniff_dicom
from .metadata import DicomInfo, check_geometry, corrupt_header_message, decoder_problem, describe
from .phi import identifier_values, safe_exception
from .region import CropSpec, _gray, detect_imaging_region, select_region


__all__ = [
    "FrameConverter",
    "UltrasoundDicom",
    "read_ultrasound",
]


# ---------------------------------------------------------------------------------------------- pixels
def _palette_lut(ds) -> tuple[np.ndarray, int] | None:
    """``(uint8 LUT (entries, 3), first mapped value)`` of a big-endian file's (non-segmented) palette, or
    ``None`` to let pydicom's ``apply_color_lut`` do it. pydicom reads the OW LUT data in the machine's byte
    order whatever the file's, so a big-endian palette comes out byte-swapped (all but black)."""
    try:
        if ds.original_encoding[1] is not False:
            return None
        if any(f"Segmented{c}PaletteColorLookupTableData" in ds for c in ("Red", "Green", "Blue")):
            return None
        channels = []
        first = 0
        for c in ("Red", "Green", "Blue"):
            entries, first, bits = (int(v) for v in ds[f"{c}PaletteColorLookupTableDescriptor"].value)
            entries = entries or 65536
            raw = bytes(ds[f"{c}PaletteColorLookupTableData"].value)
            if bits <= 8 and len(raw) == entries:  # 8-bit entries stored one per byte
                values = np.frombuffer(raw, np.uint8).astype(np.uint16)
            else:
                values = np.frombuffer(raw[: 2 * (len(raw) // 2)], ">u2")
                if bits <= 8:
                    values = values & 0xFF
                else:
                    values = values >> (bits - 8)
            if len(values) < entries:
                return None
            channels.append(values[:entries])
        lut = np.stack(channels, axis=-1).astype(np.uint8)
        return lut, first
    except Exception:  # noqa: BLE001 - malformed descriptor: pydicom decides
        return None


class FrameConverter:
    """Decoded frame (as pydicom yields it) -> uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB.

    See the module docstring for the 16-bit rule; the window of a file is fixed by its first frame.
    """

    def __init__(self, ds, info: DicomInfo):
        self.ds = ds
        self.info = info
        self.pi = info.photometric
        self._window: tuple[float, float] | None = None
        self._lut_shift = 0
        self._palette: tuple[np.ndarray, int] | None = None
        if self.pi == "PALETTE COLOR":
            try:
                bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            except Exception:  # noqa: BLE001
                bits = 8
            self._lut_shift = 8 if bits > 8 else 0
            self._palette = _palette_lut(ds)
        self._voi_bits: int | None = None

    def _mono_window(self, arr: np.ndarray) -> tuple[float, float]:
        ds = self.ds
        try:
            wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
            if wc is not None and ww is not None:
                wc = float(wc[0] if not isinstance(wc, (int, float)) and hasattr(wc, "__len__") else wc)
                ww = float(ww[0] if not isinstance(ww, (int, float)) and hasattr(ww, "__len__") else ww)
                if ww >= 1:
                    return wc - 0.5 - (ww - 1) / 2, wc - 0.5 + (ww - 1) / 2
        except Exception:  # noqa: BLE001 - malformed window: fall back to percentiles
            pass
        sample = arr[:: max(1, arr.shape[0] // 256), :: max(1, arr.shape[1] // 256)]
        lo, hi = np.percentile(sample, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(sample.min()), float(sample.max())
        if hi <= lo:
            hi = lo + 1
        return float(lo), float(hi)

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        info = self.info
        if self.pi == "PALETTE COLOR" and arr.ndim == 2:
            from pydicom.pixels import apply_color_lut

            if self._palette is not None:
                lut, first = self._palette
                index = np.clip(arr.astype(np.int64) - first, 0, len(lut) - 1)
                return np.ascontiguousarray(lut[index])

            rgb = apply_color_lut(arr, self.ds)
            if self._lut_shift:
                rgb = rgb >> self._lut_shift
            return np.ascontiguousarray(rgb.astype(np.uint8, copy=False))
        if arr.ndim == 3:  # colour (RGB after pydicom's YBR conversion)
            if arr.dtype == np.uint8:
                return arr
            shift = max(0, info.bits_stored - 8)
            return np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
        # monochrome
        if info.bits_allocated == 1 or info.bits_stored == 1:
            out = (arr > 0).astype(np.uint8) * 255
        elif arr.dtype == np.uint8 and info.bits_stored <= 8:
            out = arr
        elif arr.dtype == np.int8:
            out = (arr.astype(np.int16) + 128).astype(np.uint8)
        else:
            from pydicom.pixels import apply_modality_lut

            try:
                values = apply_modality_lut(arr, self.ds)
            except Exception:  # noqa: BLE001 - malformed rescale: use stored values
                values = arr
            values = values.astype(np.float32, copy=False)
            if self._window is None:
                voi = self.ds.get("VOILUTSequence") if "WindowCenter" not in self.ds else None
                if voi:
                    try:
                        from pydicom.pixels import apply_voi

                        out_voi = apply_voi(values, self.ds)
                        bits = int(voi[0].LUTDescriptor[2])
                        self._voi_bits = bits if bits > 0 else 16
                    except Exception:  # noqa: BLE001
                        self._voi_bits = None
                if self._voi_bits is None:
                    self._window = self._mono_window(values)
            if self._voi_bits is not None:
                from pydicom.pixels import apply_voi

                out_voi = apply_voi(values, self.ds).astype(np.float32)
                out = np.clip(out_voi * (255.0 / (2 ** self._voi_bits - 1)), 0, 255).astype(np.uint8)
            else:
                lo, hi = self._window
                out = np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        if self.pi == "MONOCHROME1":
            out = 255 - out
        return out


def _to_color_mode(frame: np.ndarray, color: str) -> np.ndarray:
    if color == "gray" and frame.ndim == 3:
        w = np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(frame.astype(np.float32) @ w + 0.5, 0, 255).astype(np.uint8)
    if color == "rgb" and frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=-1)
    return frame


class UltrasoundDicom:
    """One ultrasound DICOM file, decoded frame by frame into cropped 8-bit frames.

    Args:
        path: the file.
        salt: salt of the identifier hashes in :attr:`info`.
        color: ``"keep"`` (grey stays grey, colour stays RGB), ``"gray"`` or ``"rgb"``.
        region: ``"auto"`` (regions metadata, else detection), ``"metadata"`` (regions only, else no crop),
            ``"detect"`` (always detect) or ``"none"``.
        force: read files without preamble (``sniff_dicom`` said ``"dicom-raw"``).
        max_dim, max_frames: limits of :func:`check_geometry`.

    Raises:
        DicomRejectError: on construction when the file cannot be decoded (reason code + message).

    Example::

        us = UltrasoundDicom("cine.dcm")
        for index, frame in us.frames(stride=2):   # uint8 (H, W) or (H, W, 3), cropped
            ...
    """

    def __init__(self, path: str | os.PathLike, *, salt: str = "busgen", color: str = "keep", region: str = "auto",
                 force: bool | None = None, max_dim: int = 8192, max_frames: int = 100_000):
        if color not in ("keep", "gray", "rgb"):
            raise ValueError(f"color must be 'keep', 'gray' or 'rgb', got {color!r}")
        if region not in ("auto", "metadata", "detect", "none"):
            raise ValueError(f"region must be 'auto', 'metadata', 'detect' or 'none', got {region!r}")
        self.path = Path(path)
        self.color = color
        self.region_mode = region
        if force is None:
            kind = sniff_dicom(self.path)
            if kind is None:
                raise DicomRejectError("not_dicom", "not a DICOM file (no 'DICM' marker and no DICOM data set start)")
            force = kind == "dicom-raw"
        self.ds, self.pixel_info, self.transfer_syntax = read_header(self.path, force=force)
        try:
            self.phi = identifier_values(self.ds, self.path)
            self.info = describe(self.ds, self.pixel_info, self.transfer_syntax, salt=salt, phi=self.phi)
        except Exception as err:  # noqa: BLE001 - a corrupt element that pydicom cannot convert
            raise DicomRejectError("unreadable", f"cannot interpret the DICOM header: {type(err).__name__}") from None
        if self.info.kind == "dicomdir":
            raise DicomRejectError("dicomdir", "DICOMDIR (a media index, not an image)")
        if not self.info.has_pixel_data:
            if self.pixel_info.present:
                raise DicomRejectError("no_pixel_data", f"{self.pixel_info.keyword} (float pixel data) is not an "
                                                        "ultrasound image")
            if self.pixel_info.stray_offset >= 0:
                raise DicomRejectError("unreadable", corrupt_header_message(self.pixel_info))
            raise DicomRejectError("no_pixel_data", "the file has no PixelData element")
        problem = decoder_problem(self.transfer_syntax)
        if problem:
            raise DicomRejectError("unsupported_transfer_syntax", problem)
        check_geometry(self.info, self.pixel_info, max_dim=max_dim, max_frames=max_frames)
        self.convert = FrameConverter(self.ds, self.info)
        self._full_ds = None  # deflated files: read entirely once
        self._cache: dict[int, np.ndarray] = {}
        self._crop: CropSpec | None = None
        self._mask_u8: np.ndarray | None = None
        self._native: np.ndarray | bool | None = None  # memory-mapped native frames (False: not applicable)

    # -------------------------------------------------------------- decoding
    @property
    def n_frames(self) -> int:
        return self.info.frames

    def _native_frames(self) -> np.ndarray | None:
        """Memory map of the frames ``(T, H, W[, 3])`` for native little-endian 8-bit pixel data, else ``None``.

        The common ultrasound case (uncompressed 8-bit grey, RGB or palette indices, interleaved colour) is a
        plain array in the file: mapping it skips pydicom's per-frame read and copy, and the crop copies only
        the region it keeps. The map is copy-on-write, so callers may modify frames without touching the file.
        Anything else (compressed, big endian, deflated, 16 bit, planar colour, YBR, short pixel data) goes
        through pydicom."""
        if self._native is not None:
            return self._native if self._native is not False else None
        info, pix = self.info, self.pixel_info
        ok = (
            self.transfer_syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
            and pix.present and pix.keyword == "PixelData" and pix.length is not None and not pix.truncated
            and pix.value_offset > 0 and info.bits_allocated == 8 and info.bits_stored == 8
            and info.pixel_representation == 0
            and (
                (info.samples_per_pixel == 1 and info.photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"))
                or (info.samples_per_pixel == 3 and info.photometric == "RGB"
                    and _int(self.ds, "PlanarConfiguration", 0) == 0)
            )
        )
        shape = (self.n_frames, info.rows, info.columns) + ((3,) if info.samples_per_pixel == 3 else ())
        if ok and pix.length >= int(np.prod(shape)):
            try:
                self._native = np.memmap(self.path, dtype=np.uint8, mode="c", offset=pix.value_offset, shape=shape)
            except (OSError, ValueError):
                self._native = False
        else:
            self._native = False
        return self._native if self._native is not False else None

    def _iter_raw(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        from pydicom.pixels import iter_pixels

        if not indices:
            return
        native = self._native_frames()
        if native is not None:
            for i in indices:
                yield native[i]
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.transfer_syntax == _DEFLATED_TS:
                if self._full_ds is None:
                    import pydicom

                    self._full_ds = pydicom.dcmread(self.path, force=True)
                src = self._full_ds
                kwargs: dict[str, Any] = {}
            else:
                src = self.path
                kwargs = {"transfer_syntax_uid": self.transfer_syntax}
            wanted = list(indices)
            if wanted == sorted(set(wanted)) and len(wanted) >= 0.9 * self.n_frames:
                # (nearly) every frame in order: pydicom's sequential iterator walks the fragments once,
                # random access looks each frame up again; the few unwanted frames are skipped
                todo = set(wanted)
                for i, arr in enumerate(iter_pixels(src, **kwargs)):
                    if i in todo:
                        yield arr
                return
            yield from iter_pixels(src, indices=wanted, **kwargs)

    def decode(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, uint8 frame)`` (converted, not cropped) for ``indices`` in order, frame by frame."""
        for i in indices:
            if not 0 <= i < self.n_frames:
                raise IndexError(f"frame {i} is outside 0..{self.n_frames - 1}")
        todo = [i for i in indices if i not in self._cache]
        raw = self._iter_raw(todo)
        for i in indices:
            if i in self._cache:
                yield i, self._cache.pop(i)
                continue
            try:
                arr = next(raw)
            except StopIteration:
                raise DicomRejectError("decode_error",
                                       f"frame {i} of {self.n_frames} is missing from the pixel data") from None
            except DicomRejectError:
                raise
            except MemoryError:
                raise DicomRejectError("decode_error", f"frame {i}: out of memory while decoding") from None
            except Exception as err:  # noqa: BLE001 - decoders raise anything on corrupt data
                raise DicomRejectError("decode_error", f"frame {i} of {self.n_frames} could not be decoded: "
                                                       f"{safe_exception(err, self.phi)}") from None
            expected = (self.info.rows, self.info.columns)
            if arr.shape[:2] != expected:
                raise DicomRejectError("decode_error", f"frame {i} decoded to {arr.shape[:2]} but the header says "
                                                       f"Rows x Columns = {expected}")
            try:
                yield i, self.convert(arr)
            except Exception as err:  # noqa: BLE001
                raise DicomRejectError("decode_error", f"frame {i}: cannot convert {self.info.photometric} pixels "
                                                       f"to 8 bits: {safe_exception(err, self.phi)}") from None

    # -------------------------------------------------------------- cropping
    @property
    def crop(self) -> CropSpec:
        """The crop of this file (computed once; detection decodes up to 3 frames, kept for reuse)."""
        if self._crop is None:
            self._crop = self._compute_crop()
        return self._crop

    def _compute_crop(self) -> CropSpec:
        rows, cols = self.info.rows, self.info.columns
        full = (0, 0, cols, rows)
        warn: list[str] = []
        if self.region_mode == "none":
            return CropSpec(full, "none")
        if self.region_mode in ("auto", "metadata"):
            region, message = select_region(self.info.regions, rows, cols)
            if message:
                warn.append(message)
            if region is not None:
                return CropSpec(region.box(), "regions", region.spacing_mm, None, warn)
            if self.region_mode == "metadata":
                return CropSpec(full, "none", None, None, warn + ["no usable ultrasound region: not cropped"])
        n = self.n_frames
        sample = sorted({0, n // 2, n - 1})
        stack = None
        for i, frame in self.decode(sample):
            self._cache[i] = frame
            g = _gray(frame)
            stack = g if stack is None else np.maximum(stack, g)
        if min(stack.shape) < 64:  # a thumbnail: too small to find (and crop away) burned-in text
            raise DicomRejectError("too_small", f"the {cols}x{rows} frame is too small to find the imaging region "
                                                "(under 64 px) and cannot be cropped safely")
        found = detect_imaging_region(stack)
        if found is None:
            raise DicomRejectError("no_imaging_region", "no ultrasound image region found (the frames are blank or "
                                                        "hold only text/graphics)")
        box, mask = found
        keep_all = bool(mask.all())
        return CropSpec(box, "detected", None, None if keep_all else mask, warn)

    def _apply_crop(self, frame: np.ndarray) -> np.ndarray:
        crop = self.crop
        x0, y0, x1, y1 = crop.box
        out = frame[y0:y1, x0:x1]
        if crop.mask is not None:
            # zero outside the hull (also a contiguous copy). The 0/255 mask is materialised with the frame's
            # channel count: a broadcast (H, W, 1) operand makes numpy's uint8 loop ~50x slower.
            if self._mask_u8 is None or self._mask_u8.shape != out.shape:
                m = crop.mask.astype(np.uint8) * np.uint8(255)
                self._mask_u8 = m if out.ndim == 2 else np.repeat(m[..., None], out.shape[-1], axis=-1)
            out = np.bitwise_and(out, self._mask_u8)
        out = np.ascontiguousarray(_to_color_mode(out, self.color))
        if isinstance(self._native, np.ndarray) and np.may_share_memory(out, self._native):
            out = out.copy()  # an uncropped native frame: do not hand out a view of the file mapping
        return out

    def frames(self, *, indices: Iterable[int] | None = None, stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, cropped uint8 frame)``, decoding one frame at a time."""
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        idx = list(range(0, self.n_frames, stride)) if indices is None else list(indices)
        _ = self.crop  # decide the crop first (may decode sample frames)
        for i, frame in self.decode(idx):
            yield i, self._apply_crop(frame)
        self._cache.clear()


def read_ultrasound(path: str | os.PathLike, *, frames: int | Sequence[int] | None = None, **kwargs
                    ) -> tuple[np.ndarray, dict]:
    """Read (some) frames of an ultrasound DICOM into one array ``(T, H, W[, 3])`` (``(H, W[, 3])`` for an
    int ``frames``) plus PHI-free metadata (spacing, crop, device inputs, laterality, hashed ids)."""
    us = UltrasoundDicom(path, **kwargs)
    single = isinstance(frames, (int, np.integer))
    idx = [int(frames)] if single else None if frames is None else [int(f) for f in frames]
    out = [f for _, f in us.frames(indices=idx)]
    arr = out[0] if single else np.stack(out)
    crop = us.crop
    meta = {
        "spacing_mm": list(crop.spacing_mm) if crop.spacing_mm else None,
        "crop_box": list(crop.box),
        "crop_source": crop.source,
        "n_frames": us.n_frames,
        "frame_indices": idx if idx is not None else list(range(us.n_frames)),
        "frame_time_ms": us.info.frame_time_ms,
        "manufacturer": us.info.manufacturer,
        "model": us.info.model,
        "laterality": us.info.laterality,
        "view": us.info.view,
        "probe": us.info.probe,
        "sop_instance_uid_hash": us.info.sop_hash,
        "photometric": us.info.photometric,
        "warnings": list(crop.warnings),
    }
    return arr, meta
