"""Phase 2 for one scanned file (:func:`decode_file`): decode frame by frame, crop, keep every
``stride``-th frame, drop mostly-black and near-duplicate frames, write the rest; a reject leaves no frame behind.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..dicom import DicomRejectError, UltrasoundDicom
from ..dicom.phi import identifier_values, scrub_record
from .records import _OWN_KEYS, _record, _reject, _short_tb
from .settings import IngestSettings
from .write import _rel_frame_dir, _remove_outputs, _write_nifti, _write_png


__all__ = ["decode_file"]


def _zero_fraction(frame: np.ndarray, level: int) -> float:
    """Fraction of black pixels (every channel ``<= level``), estimated on every other row and column."""
    sample = frame[::2, ::2]
    if sample.ndim == 3:
        black = (sample[..., 0] <= level) & (sample[..., 1] <= level) & (sample[..., 2] <= level)
    else:
        black = sample <= level
    return float(np.count_nonzero(black)) / black.size


def _thumb(frame: np.ndarray) -> np.ndarray:
    g = frame.astype(np.float32) if frame.ndim == 2 else frame.astype(np.float32).mean(axis=-1)
    h, w = g.shape
    f = max(1, max(h, w) // 128)
    h2, w2 = h // f, w // f
    if h2 == 0 or w2 == 0:
        return g
    return g[: h2 * f, : w2 * f].reshape(h2, f, w2, f).mean(axis=(1, 3))


def decode_file(path: str, record: Mapping, out_dir: str, settings: IngestSettings) -> dict:
    """Phase 2 for one scanned file: decode, crop, filter and write its frames.

    Returns the record with ``status`` ``"done"`` (``frames``: ``[{frame, image, width, height}]``,
    ``spacing``, ``crop``, ``dropped`` counts, ``content_hash``) or ``"rejected"``. On a reject no frame of
    the file is left on disk.
    """
    out = Path(out_dir)
    fingerprint, file_id = record["fingerprint"], record["file_id"]
    info = dict(record["info"])
    rel_dir = _rel_frame_dir(info)
    sop = info["sop_hash"]
    phi: list[str] = []
    try:
        us = UltrasoundDicom(path, salt=settings.salt, color=settings.color, region=settings.region,
                             force=bool(record.get("raw")), max_dim=settings.max_dim, max_frames=settings.max_frames)
        phi = us.phi
        crop = us.crop
        x0, y0, x1, y1 = crop.box
        if min(x1 - x0, y1 - y0) < settings.min_size:
            raise DicomRejectError("too_small", f"the cropped image is {x1 - x0}x{y1 - y0} px, under "
                                                f"min_size={settings.min_size}")
        (out / rel_dir).mkdir(parents=True, exist_ok=True)
        _remove_outputs(out, rel_dir, sop, temporary_only=True)  # left by a run that was killed
        frames: list[dict] = []
        dropped = Counter()
        digest = hashlib.sha256()
        last_thumb = None
        n = us.n_frames
        dropped["stride"] = n - len(range(0, n, settings.stride))
        for i, frame in us.frames(stride=settings.stride):
            zero = _zero_fraction(frame, settings.zero_level)
            if zero > settings.max_zero_fraction:
                dropped["mostly_zero"] += 1
                continue
            if settings.dedupe_threshold is not None:
                thumb = _thumb(frame)
                if last_thumb is not None and thumb.shape == last_thumb.shape and \
                        float(np.abs(thumb - last_thumb).mean()) <= settings.dedupe_threshold:
                    dropped["near_duplicate"] += 1
                    continue
                last_thumb = thumb
            digest.update(frame.tobytes())
            name = f"{sop}_f{i:05d}{settings.extension}"
            target = out / rel_dir / name
            if settings.image_format == "png":
                _write_png(target, frame, settings.png_compress_level)
            else:
                _write_nifti(target, frame, crop.spacing_mm)
            frames.append({"frame": i, "image": f"{rel_dir}/{name}", "width": int(frame.shape[1]),
                           "height": int(frame.shape[0])})
        if not frames:
            if dropped["mostly_zero"]:
                raise DicomRejectError("mostly_zero", f"all {dropped['mostly_zero']} decoded frames have more than "
                                                      f"{settings.max_zero_fraction:.0%} black pixels after cropping")
            raise DicomRejectError("decode_error", "no frame was kept")
        digest.update(f"{len(frames)}:{frames[0]['width']}x{frames[0]['height']}".encode())
        return _scrubbed(_record(
            file_id, fingerprint, "done", info=info, raw=bool(record.get("raw")), frames=frames,
            n_frames=n, dropped={k: v for k, v in dropped.items() if v}, content_hash=digest.hexdigest(),
            spacing=list(crop.spacing_mm) if crop.spacing_mm else None,
            crop={"box": list(crop.box), "source": crop.source},
            warnings=list(crop.warnings),
        ), phi, path)
    except DicomRejectError as err:
        _remove_outputs(out, rel_dir, sop)
        return _scrubbed(_reject(file_id, fingerprint, err.reason, err.message, info=info), phi, path)
    except Exception as err:  # noqa: BLE001 - a bug must not stop the run; the file is recorded
        _remove_outputs(out, rel_dir, sop)
        return _scrubbed(_reject(file_id, fingerprint, "internal_error", _short_tb(err), info=info), phi, path)


def _scrubbed(rec: dict, phi: list[str], path: str) -> dict:
    if not phi:
        phi = identifier_values(None, path)  # the header did not parse this time: the raw scan still finds them
    return scrub_record(rec, phi, keep=_OWN_KEYS)
