"""Ingest a PACS export of breast-ultrasound DICOM (cines and stills) into frames + a datalist.

``ingest(src, out)`` (and the ``busgen ingest SRC OUT`` command, :func:`ingest_main`):

1. **walks** ``src`` (sorted, every regular file, whatever its name) and recognises DICOM by content
   (:func:`~busgen_monai.data.dicom.sniff_dicom`); DICOMDIRs are read to report files they reference that
   are missing;
2. **scans** each header (no pixels) and rejects what must not train a model, with a reason code:
   non-image objects (SR, PR, KO, encapsulated PDF, waveforms...), report screenshots and secondary
   captures, non-US modalities, biopsy procedures (descriptions naming biopsy/FNA/core needle...),
   missing pixel data, transfer syntaxes without an installed decoder (the message names the package),
   absurd sizes, wrong ``NumberOfFrames`` and truncated pixel data;
3. **groups** files by patient/study/series (salted pseudonyms), drops repeated SOP instances, resolves
   the device through the :class:`~busgen_monai.data.devices.DeviceVocabulary`;
4. **decodes** each file frame by frame (:class:`~busgen_monai.data.dicom.UltrasoundDicom`), crops it to
   the ultrasound region (burned-in text removed), keeps every ``stride``-th frame, drops frames that
   are more than ``max_zero_fraction`` black and near-duplicate consecutive frames (mean absolute
   difference of a downsampled grey frame to the last kept frame ``<= dedupe_threshold`` grey levels),
   and writes frames as PNG or NIfTI (spacing in the affine) under
   ``out/images/<patient>/<study>/<series>/<image>_f<frame>.<ext>`` via temporary file + rename;
5. drops files whose kept frames are pixel-identical to an earlier file (``duplicate_content``);
6. **writes** ``out/datalist.json`` (``docs/datalist.md``), ``out/rejects.csv`` (file, file_id, reason,
   detail) and ``out/ingest_report.json`` (settings, counts, reasons, unknown devices, per-file summary).

Every input file ends up either in the datalist (through its frames) or in the rejects with a reason.

Datalist items (``docs/datalist.md``) carry, besides the required keys (``boxes`` is empty: DICOM has no
lesion boxes), ``series_id`` (pseudonym), ``width``/``height``, ``laterality`` (``L``/``R`` when known),
``view`` and ``probe`` (when present and free of identifiers), ``spacing`` (``[dx, dy]`` in mm from the
ultrasound region; absent when unknown) and ``provenance``: ``{"source": "dicom", "sop_instance_uid_hash",
"frame" (0-based index in the cine), "n_frames", "file_id", "crop" ([x0, y0, x1, y1] in source pixels,
x1/y1 exclusive), "crop_source" ("regions" / "detected" / "none")}``. Frames dropped by stride,
de-duplication or the black-pixel rule are counted per file in ``ingest_report.json``.

De-identification: names, ids, UIDs and accession numbers only appear as salted hashes; descriptions are
never copied; view/probe strings that contain an identifier are dropped; error messages are scrubbed of
every identifying value of their file; burned-in text outside the imaging region is cropped away; PNGs
carry no metadata and NIfTI headers no description. The salt is ``salt=`` / ``--salt``, or a random salt
kept in ``out/.ingest/salt`` so that a resumed run reuses it: keep ``out/.ingest`` private (it lets
anyone who holds it test guesses of identifiers against the hashes); share the datalist and images.
Source paths never enter an output by default (exports name folders after patients and files after
UIDs): rejects, report and provenance name a file by its ``file_id`` (salted hash of its path relative to
``src``); :func:`locate` (``busgen ingest SRC OUT --locate FILE-...``) maps ids back to paths, and
``show_paths=True`` (``--show-paths``) writes relative paths when the names are known to be harmless.

Pathology: DICOM does not say it. Every item gets ``pathology`` (default the placeholder
``"unlabelled"``, declared in the datalist's ``pathologies`` so the datalist stays valid and nobody
mistakes unlabelled frames for normal ones) unless a labels CSV (``labels=`` / ``--labels``) gives one:
columns ``pathology`` plus at least one of ``patient_id``, ``study_id``, ``accession_number`` (either the
raw value -- PatientID, StudyInstanceUID, AccessionNumber -- or the datalist's pseudonym), optional
``laterality`` (L/R: the row applies to that breast only) and ``birads``.

Resumable and atomic: ``out/.ingest/manifest.jsonl`` holds one record per finished input file (keyed by
``file_id``, size and mtime); a re-run skips files that are done and whose frames exist, and only
rebuilds the datalist/rejects/report. Settings that change the frames are fingerprinted; a re-run with
other settings stops with a message (``restart=True`` / ``--restart`` starts over).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .devices import UNKNOWN_DEVICE, DeviceVocabulary, UnknownDeviceError, default_vocabulary
from .dicom import (
    NON_IMAGE_SOP_PREFIXES,
    SECONDARY_CAPTURE_SOP_CLASSES,
    US_VOLUME_SOP_CLASSES,
    DicomRejectError,
    UltrasoundDicom,
    check_geometry,
    corrupt_header_message,
    decoder_problem,
    describe,
    dicomdir_missing_files,
    phi_strings,
    read_header,
    scrub,
    short_message,
    sniff_dicom,
    uid_hash,
)
from .dicom_phi import identifier_values, safe_exception, scrub_record
from .loaders import patient_split
from .schema import atomic_write_text, make_datalist, save_datalist

__all__ = [
    "REJECT_REASONS",
    "TRANSIENT_REASONS",
    "DEFAULT_BIOPSY_PATTERN",
    "IngestSettings",
    "IngestResult",
    "IngestError",
    "ingest",
    "ingest_main",
    "scan_file",
    "decode_file",
    "file_id_of",
    "locate",
]

#: Reject reason codes (stable; used in ``rejects.csv``) and what they mean.
REJECT_REASONS = {
    "not_dicom": "not a DICOM file",
    "unreadable": "the DICOM header cannot be read (corrupt file, unreadable path)",
    "dicomdir": "a DICOMDIR media index, not an image",
    "missing_file": "a file referenced by a DICOMDIR does not exist",
    "not_image": "a non-image object (structured report, presentation state, key object, PDF, waveform...)",
    "no_pixel_data": "an image object without pixel data",
    "not_2d": "a 3-D/volume object, not 2-D ultrasound frames",
    "secondary_capture": "a secondary capture (screenshot/report capture), not an acquired ultrasound image",
    "report_screenshot": "a report/worksheet screen",
    "non_us_modality": "the modality is not one of the accepted modalities",
    "biopsy": "an image of a biopsy procedure (needle in the image)",
    "no_laterality": "laterality is unknown and require_laterality is set",
    "unsupported_transfer_syntax": "no decoder for the transfer syntax is installed / exists",
    "bad_geometry": "absurd Rows/Columns/NumberOfFrames or pixel data that does not match them",
    "too_large": "a frame over the pixel-count / memory limits (a decompression bomb), refused from the header",
    "truncated": "the pixel data runs past the end of the file",
    "decode_error": "a frame could not be decoded",
    "no_imaging_region": "no ultrasound image region found in the frames",
    "too_small": "the cropped image is smaller than min_size",
    "mostly_zero": "every kept frame has more than max_zero_fraction black pixels",
    "unknown_device": "the device is not in the vocabulary and on_unknown_device='error'",
    "duplicate": "the same SOP instance as another file",
    "duplicate_content": "pixel-identical frames to another file",
    "timeout": "decoding took longer than file_timeout",
    "worker_crash": "the decoder crashed the worker process",
    "internal_error": "an unexpected error (a bug): please report it with the detail",
}

#: Failures that say nothing about the file itself (a bug, a slow or crashing decoder on a busy machine): a re-run
#: retries them, up to ``max_attempts`` in all, and reports count them apart from real rejects.
TRANSIENT_REASONS = frozenset({"internal_error", "timeout", "worker_crash"})

#: Words that mark a biopsy/needle procedure in descriptions (case-insensitive, whole words).
DEFAULT_BIOPSY_PATTERN = (
    r"\b(biops\w*|bx|fna|fnab|fnac|fine[\s_-]*needle|core[\s_-]*needle|cnb|vab|vacuum[\s_-]*assisted|mammotome|"
    r"needle[\s_-]*locali[sz]ation|wire[\s_-]*locali[sz]ation|aspiration|clip[\s_-]*placement)\b"
)
_REPORT_PATTERN = re.compile(r"\b(report|worksheet|work\s*sheet|summary\s*page)\b", re.IGNORECASE)
_PROCEDURE_KEYWORDS = (
    "StudyDescription", "SeriesDescription", "PerformedProcedureStepDescription", "RequestedProcedureDescription",
    "ProtocolName", "ImageComments", "ScheduledProcedureStepDescription", "AdmittingDiagnosesDescription",
)
_PROCEDURE_SEQUENCES = (
    "RequestAttributesSequence", "ProcedureCodeSequence", "PerformedProtocolCodeSequence",
    "RequestedProcedureCodeSequence", "ScheduledProtocolCodeSequence",
)
_STATE_DIR = ".ingest"
#: Record keys whose values the ingester makes itself (codes, pseudonyms): never scrubbed.
_OWN_KEYS = frozenset({"status", "reason", "file_id", "other", "content_hash", "image", "patient_hash", "study_hash",
                       "series_hash", "sop_hash", "accession_hash", "patient_key_source", "source", "kind",
                       "missing", "fingerprint", "attempts",
                       # device fields: cleaned of whole identifying values when read; hashed in every shared output
                       "manufacturer", "model"})
_MANIFEST = "manifest.jsonl"
_DEVICE_NAMES = "unknown_devices.json"
_PLACEHOLDER_PATHOLOGY = "unlabelled"


class IngestError(RuntimeError):
    """The run cannot start or finish (bad options, output folder from other settings...)."""


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class IngestSettings:
    """Per-file processing settings (picklable; shipped to worker processes). See :func:`ingest`."""

    image_format: str = "png"
    dedupe_threshold: float | None = 1.0
    stride: int = 1
    color: str = "keep"
    region: str = "auto"
    modalities: tuple[str, ...] | None = ("US",)
    keep_secondary_capture: bool = False
    biopsy_pattern: str = DEFAULT_BIOPSY_PATTERN
    max_zero_fraction: float = 0.8
    zero_level: int = 2
    min_size: int = 32
    max_dim: int = 8192
    max_frames: int = 100_000
    require_laterality: bool = False
    png_compress_level: int = 1
    salt: str = "busgen"

    def fingerprint(self) -> dict:
        """Everything that changes the frames or the per-file decisions (the salt only as a hash)."""
        d = asdict(self)
        d["salt"] = hashlib.sha256(self.salt.encode()).hexdigest()[:16]
        d["modalities"] = list(self.modalities) if self.modalities is not None else None
        return d

    @property
    def extension(self) -> str:
        return ".png" if self.image_format == "png" else ".nii.gz"


# ---------------------------------------------------------------------------------------------- records
def _rel_frame_dir(info: Mapping) -> str:
    return f"images/{info['patient_hash']}/{info['study_hash']}/{info['series_hash']}"


def _record(file_id: str, fingerprint: Sequence[int], status: str, **kw) -> dict:
    # keyed by the salted hash of the relative path: source paths may carry identifiers (a folder named
    # after the patient, UIDs as file names), so they never enter the manifest
    rec = {"file_id": file_id, "fingerprint": list(fingerprint), "status": status}
    rec.update(kw)
    return rec


def _reject(file_id: str, fingerprint: Sequence[int], reason: str, detail: str, **kw) -> dict:
    return _record(file_id, fingerprint, "rejected", reason=reason, detail=short_message(detail), **kw)


def file_id_of(rel: str, salt: str) -> str:
    """Pseudonymous id of an input file: salted hash of its path relative to the source folder."""
    return uid_hash(rel, "FILE", salt)


def _procedure_texts(ds) -> list[tuple[str, str]]:
    out = []
    for kw in _PROCEDURE_KEYWORDS:
        try:
            v = ds.get(kw)
        except Exception:  # noqa: BLE001
            continue
        if v:
            out.append((kw, str(v)))
    for kw in _PROCEDURE_SEQUENCES:
        try:
            seq = ds.get(kw) or []
            for item in seq:
                for sub in ("RequestedProcedureDescription", "ScheduledProcedureStepDescription", "CodeMeaning"):
                    v = item.get(sub)
                    if v:
                        out.append((f"{kw}.{sub}", str(v)))
        except Exception:  # noqa: BLE001
            continue
    return out


def _classify(ds, info, settings: IngestSettings) -> tuple[str, str] | None:
    """Why a scanned image must not be ingested (reason, detail), or ``None``."""
    sop = info.sop_class_uid
    name = info.sop_class_name or sop or "unknown SOP class"
    kind = _non_image_kind(sop)
    if kind is not None:
        return "not_image", f"{name} is not an image ({kind})"
    if not info.has_pixel_data:
        return "no_pixel_data", f"{name}: the object has no PixelData element"
    if sop in US_VOLUME_SOP_CLASSES:
        return "not_2d", f"{US_VOLUME_SOP_CLASSES[sop]} holds a volume, not 2-D ultrasound frames"
    if sop in SECONDARY_CAPTURE_SOP_CLASSES and not settings.keep_secondary_capture:
        return "secondary_capture", (f"{SECONDARY_CAPTURE_SOP_CLASSES[sop]} (a screen/report capture, not an "
                                     "acquired image; pass keep_secondary_capture=True / --keep-secondary-capture "
                                     "to keep ultrasound captures)")
    if settings.modalities is not None and info.modality not in settings.modalities:
        shown = info.modality or "<empty>"
        return "non_us_modality", (f"Modality {shown!r} is not one of {list(settings.modalities)} "
                                   "(pass modalities=None / --modalities any to accept every modality)")
    image_type = {t.upper() for t in info.image_type}
    if image_type & {"SCREEN SAVE", "SCREENSHOT", "REPORT"}:
        return "report_screenshot", f"ImageType says {sorted(image_type & {'SCREEN SAVE', 'SCREENSHOT', 'REPORT'})}"
    for kw in ("SeriesDescription", "ImageComments", "DerivationDescription"):
        try:
            text = str(ds.get(kw) or "")
        except Exception:  # noqa: BLE001
            text = ""
        m = _REPORT_PATTERN.search(text)
        if m:
            return "report_screenshot", f"{kw} mentions {m.group(0).lower()!r}: a report/worksheet screen"
    pattern = re.compile(settings.biopsy_pattern, re.IGNORECASE)
    for kw, text in _procedure_texts(ds):
        m = pattern.search(text)
        if m:
            return "biopsy", f"{kw} mentions {m.group(0).lower()!r}: a biopsy/needle procedure image"
    if settings.require_laterality and not info.laterality:
        return "no_laterality", ("laterality is unknown (no ImageLaterality/Laterality and no left/right in the "
                                 "descriptions) and require_laterality is set")
    return None


def _non_image_kind(sop: str) -> str | None:
    for prefix, kind in NON_IMAGE_SOP_PREFIXES.items():
        if sop.startswith(prefix):
            return kind
    return None


def scan_file(path: str, rel: str, fingerprint: Sequence[int], settings: IngestSettings) -> dict:
    """Phase 1 for one file: recognise it, read its header (no pixels) and decide whether to decode it.

    Returns a manifest record: ``status`` ``"scanned"`` (with a PHI-free ``info``) or ``"rejected"``
    (``reason``, ``detail``; a DICOMDIR also lists ``missing`` referenced files).
    """
    file_id = file_id_of(rel, settings.salt)
    phi: list[str] = []
    try:
        rec = _scan(path, rel, file_id, fingerprint, settings, phi)
    except DicomRejectError as err:
        rec = _reject(file_id, fingerprint, err.reason, err.message)
    except Exception as err:  # noqa: BLE001 - a bug must not stop the run
        rec = _reject(file_id, fingerprint, "internal_error", _short_tb(err))
    if not phi and rec["status"] == "rejected":
        phi.extend(identifier_values(None, path))  # the header did not parse: the raw scan still finds them
    return scrub_record(rec, phi, keep=_OWN_KEYS)


def _scan(path: str, rel: str, file_id: str, fingerprint: Sequence[int], settings: IngestSettings,
          phi: list[str]) -> dict:
    """:func:`scan_file` without the final scrub; fills ``phi`` with the file's identifying values."""
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        return _reject(file_id, fingerprint, "unreadable", f"cannot open the file ({type(err).__name__})")
    kind = sniff_dicom(path)
    if kind is None:
        size = fingerprint[0] if fingerprint else 0
        what = "empty file" if size == 0 else "no 'DICM' marker at byte 128 and no DICOM data set at the start"
        return _reject(file_id, fingerprint, "not_dicom", f"not a DICOM file ({what})")
    ds, pix, tsyntax = read_header(path, force=kind == "dicom-raw")
    try:
        values = identifier_values(ds, path)
        phi.extend(values)
        info = describe(ds, pix, tsyntax, salt=settings.salt, phi=values)
    except Exception as err:  # noqa: BLE001 - a corrupt element that pydicom cannot convert
        raise DicomRejectError("unreadable", f"cannot interpret the DICOM header: {type(err).__name__}") from None
    if not info.has_pixel_data and pix.stray_offset >= 0 and info.kind != "dicomdir":
        return _reject(file_id, fingerprint, "unreadable", corrupt_header_message(pix))
    if info.kind == "dicomdir":
        try:
            missing = dicomdir_missing_files(ds, path)
            n_refs = sum(1 for r in (ds.get("DirectoryRecordSequence") or []) if r.get("ReferencedFileID"))
        except Exception as err:  # noqa: BLE001 - corrupt directory records
            raise DicomRejectError("unreadable", f"corrupt DICOMDIR records: {type(err).__name__}") from None
        detail = f"DICOMDIR media index (not an image); references {n_refs} files"
        if missing:
            detail += f", {len(missing)} of them missing"
        missing_ids = [file_id_of((Path(rel).parent / m).as_posix(), settings.salt) for m in missing]
        return _reject(file_id, fingerprint, "dicomdir", detail, missing=missing_ids)
    if kind == "dicom-raw" and not (info.sop_class_uid or (info.rows and info.columns)):
        return _reject(file_id, fingerprint, "not_dicom",
                       "no DICOM preamble and the data set has neither a SOP Class UID nor an image size")
    why = _classify(ds, info, settings)
    if why is not None:
        return _reject(file_id, fingerprint, why[0], scrub(why[1], phi), info=_info_dict(info))
    problem = decoder_problem(tsyntax)
    if problem:
        return _reject(file_id, fingerprint, "unsupported_transfer_syntax", problem, info=_info_dict(info))
    check_geometry(info, pix, max_dim=settings.max_dim, max_frames=settings.max_frames)
    if not info.sop_hash:
        info.sop_hash = uid_hash(f"file:{rel}", "IMG", settings.salt)
    return _record(file_id, fingerprint, "scanned", info=_info_dict(info), raw=kind == "dicom-raw")


def _info_dict(info) -> dict:
    d = info.to_dict()
    d["regions"] = [{"box": list(r.box()), "spatial_format": r.spatial_format, "data_type": r.data_type,
                     "spacing_mm": list(r.spacing_mm) if r.spacing_mm else None} for r in info.regions]
    return d


def _short_tb(err: BaseException) -> str:
    """Type, message (quoted values removed: they may be header text) and where it was raised."""
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{safe_exception(err)}{where}"


# ---------------------------------------------------------------------------------------------- writing
def _write_png(path: Path, frame: np.ndarray, level: int) -> None:
    from PIL import Image

    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    Image.fromarray(frame).save(tmp, format="PNG", compress_level=level)
    os.replace(tmp, path)


def _write_nifti(path: Path, frame: np.ndarray, spacing: Sequence[float] | None) -> None:
    import nibabel as nib

    dx, dy = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    affine = np.diag([dx, dy, 1.0, 1.0])
    if frame.ndim == 2:
        data = np.ascontiguousarray(frame.T)  # (x, y) = (column, row), as MONAI's readers index images
    else:  # RGB: a 5-D vector image (x, y, z=1, t=1, 3), the NIfTI way of storing vector voxels
        data = np.ascontiguousarray(frame.transpose(1, 0, 2)[:, :, None, None, :])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm" if spacing else "unknown")
    if frame.ndim == 3:
        img.header.set_intent("vector")
    img.header["descrip"] = b""
    img.header["aux_file"] = b""
    img.header["db_name"] = b""
    img.set_sform(affine, code=1 if spacing else 0)
    img.set_qform(affine, code=1 if spacing else 0)
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    nib.save(img, tmp)
    os.replace(tmp, path)


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


def _remove_outputs(out_dir: Path, rel_dir: str, sop_hash: str, temporary_only: bool = False) -> None:
    """Delete the frames of one image (or only temporary files left by a killed run).

    Folders are left alone: another worker may be about to write into the same series folder (a folder
    removed under it turned its good file into an error). :func:`_prune_empty_dirs` removes emptied folders
    once every worker has finished."""
    folder = out_dir / rel_dir
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        temporary = p.name.startswith(".tmp-") and f"{sop_hash}_f" in p.name
        if temporary or (not temporary_only and p.name.startswith(f"{sop_hash}_f")):
            try:
                p.unlink()
            except OSError:
                pass


def _prune_empty_dirs(images: Path) -> None:
    """Remove empty folders under ``images`` (bottom-up); only the main process calls it, after the workers."""
    if not images.is_dir():
        return
    for root, dirs, files in os.walk(images, topdown=False):
        if Path(root) != images and not os.listdir(root):
            try:
                os.rmdir(root)
            except OSError:
                pass


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


# ---------------------------------------------------------------------------------------------- workers
def _run_job(job: tuple) -> dict:
    import logging

    kind, args = job
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # corrupt files make pydicom log their (possibly identifying) values
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "scan":
                return scan_file(*args)
            return decode_file(*args)
    finally:
        logger.setLevel(level)


def _job_failure(job: tuple, reason: str, detail: str, settings: IngestSettings) -> dict:
    kind, args = job
    if kind == "scan":
        _, rel, fingerprint, _ = args
        return _reject(file_id_of(rel, settings.salt), fingerprint, reason, detail)
    path, record, out_dir, _ = args
    _remove_outputs(Path(out_dir), _rel_frame_dir(record["info"]), record["info"]["sop_hash"])
    return _reject(record["file_id"], record["fingerprint"], reason, detail, info=record["info"])


def _worker_main(conn) -> None:  # pragma: no cover - runs in a child process
    import logging

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        index, payload = job
        try:
            result = _run_job(payload)
        except BaseException as err:  # noqa: BLE001
            result = {"__error__": _short_tb(err)}
        conn.send((index, result))


def _worker_context():
    """``forkserver`` where it exists (a clean server process started once per session, each worker a cheap
    fork of it, so isolating every run costs milliseconds), else ``spawn``. Never plain ``fork``: the caller
    may hold threads (torch, tqdm) that a forked child would inherit half-way."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["busgen_monai.data.ingest"])
        return ctx
    return mp.get_context("spawn")


def _exit_status(code: int | None) -> str:
    """``exit code -11, SIGSEGV`` for a process killed by a signal, ``exit code 3`` otherwise."""
    if code is not None and code < 0:
        try:
            return f"exit code {code}, {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class _Pool:
    """Processes that each decode one file at a time; a file over ``timeout`` seconds or a crashing decoder
    kills only its worker (replaced by a fresh one) and becomes a reject."""

    def __init__(self, workers: int, timeout: float | None):
        self.ctx = _worker_context()
        self.timeout = timeout
        self.workers = [self._start() for _ in range(max(1, workers))]

    def _start(self):
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "job": None, "start": 0.0}

    def _replace(self, w) -> None:
        try:
            w["proc"].kill()
            w["proc"].join(5)
        except Exception:  # noqa: BLE001
            pass
        w["conn"].close()
        fresh = self._start()
        w.update(fresh)

    def run(self, jobs: Sequence[tuple], settings: IngestSettings) -> Iterator[tuple[int, dict]]:
        from multiprocessing.connection import wait

        pending = list(range(len(jobs)))[::-1]
        busy: dict[int, dict] = {}
        while pending or busy:
            for w in self.workers:
                if w["job"] is None and pending:
                    idx = pending.pop()
                    w["job"], w["start"] = idx, time.monotonic()
                    w["conn"].send((idx, jobs[idx]))
                    busy[id(w)] = w
            wait_for = None
            if self.timeout:
                now = time.monotonic()
                wait_for = max(0.0, min(w["start"] + self.timeout - now for w in busy.values()))
            ready = wait([w["conn"] for w in busy.values()], timeout=wait_for)
            by_conn = {id(w["conn"]): w for w in busy.values()}
            for conn in ready:
                w = by_conn[id(conn)]
                idx = w["job"]
                try:
                    got_idx, result = conn.recv()
                    if "__error__" in result:
                        result = _job_failure(jobs[idx], "internal_error", result["__error__"], settings)
                except (EOFError, OSError):
                    w["proc"].join(5)  # its pipe closes before it is reaped: wait for the exit status
                    code = _exit_status(w["proc"].exitcode)
                    self._replace(w)
                    result = _job_failure(jobs[idx], "worker_crash",
                                          f"the worker process died while decoding ({code}); the file "
                                          "crashes the decoder", settings)
                w["job"] = None
                busy.pop(id(w), None)
                yield idx, result
            if self.timeout:
                now = time.monotonic()
                for w in list(busy.values()):
                    if w["job"] is not None and now - w["start"] > self.timeout:
                        idx = w["job"]
                        self._replace(w)
                        w["job"] = None
                        busy.pop(id(w), None)
                        yield idx, _job_failure(jobs[idx], "timeout", f"processing took longer than "
                                                                      f"file_timeout={self.timeout:g} s", settings)

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except Exception:  # noqa: BLE001
                pass
        for w in self.workers:
            w["proc"].join(5)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join(5)
            w["conn"].close()


class _Runner:
    """Runs jobs in this process (``isolate=False``, ``workers <= 1`` and no timeout) or in one :class:`_Pool`, started on first
    use and shared by the scan and decode phases (starting worker processes costs about a second)."""

    def __init__(self, settings: IngestSettings, workers: int, timeout: float | None, progress: bool,
                 isolate: bool = True):
        self.settings = settings
        self.isolate = isolate
        self.workers = max(1, int(workers))
        self.timeout = timeout
        self.progress = progress
        self.pool: _Pool | None = None

    def run(self, jobs: Sequence[tuple], desc: str) -> Iterator[tuple[int, dict]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="file", disable=not self.progress or not jobs, leave=False)
        try:
            if not jobs:
                return
            if self.workers <= 1 and not self.timeout and not self.isolate:
                for i, job in enumerate(jobs):
                    try:
                        result = _run_job(job)
                    except Exception as err:  # noqa: BLE001
                        result = _job_failure(job, "internal_error", _short_tb(err), self.settings)
                    bar.update(1)
                    yield i, result
                return
            if self.pool is None:
                self.pool = _Pool(self.workers, self.timeout)
            for i, result in self.pool.run(jobs, self.settings):
                bar.update(1)
                yield i, result
        finally:
            bar.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


# ---------------------------------------------------------------------------------------------- state
class _State:
    """``out/.ingest``: settings fingerprint, salt and the append-only manifest of finished files."""

    def __init__(self, out: Path, settings_fp: dict, restart: bool, salt: str | None):
        self.out = out
        self.dir = out / _STATE_DIR
        if restart:
            self.clear()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # private: the salt and the resume state
        salt_file = self.dir / "salt"
        if salt is None:
            salt = _read_or_create_salt(salt_file)
        self.salt = salt
        self.records: dict[str, dict] = {}
        self.manifest = self.dir / _MANIFEST
        self._fh = None
        self._settings_fp = settings_fp

    def check_settings(self, fp: dict) -> None:
        cfg = self.dir / "settings.json"
        if cfg.is_file() and self.manifest.is_file() and self.manifest.stat().st_size > 0:
            try:
                old = json.loads(cfg.read_text())
            except json.JSONDecodeError:
                old = None
            if old is not None and old != fp:
                diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in diff if k != "biopsy_pattern")
                if "biopsy_pattern" in diff:
                    shown += (", " if shown else "") + "biopsy_pattern changed"
                raise IngestError(
                    f"{self.out} was ingested with other settings ({shown}). Re-run with the same settings to "
                    "resume, pass restart=True (--restart) to start over, or choose another output folder")
        atomic_write_text(cfg, json.dumps(fp, indent=1, sort_keys=True) + "\n")

    def load(self) -> None:
        self._load()
        # transient failures: how many times each file has failed so far (a retry counts on from there)
        self.attempts = {fid: int(r.get("attempts", 1)) for fid, r in self.records.items()
                         if r.get("reason") in TRANSIENT_REASONS}

    def _load(self) -> None:
        if not self.manifest.is_file():
            return
        with open(self.manifest, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: the file is simply redone
                if isinstance(rec, dict) and "file_id" in rec:
                    self.records[rec["file_id"]] = rec

    def append(self, rec: dict) -> None:
        if rec.get("reason") in TRANSIENT_REASONS:
            rec = {**rec, "attempts": getattr(self, "attempts", {}).get(rec["file_id"], 0) + 1}
        if self._fh is None:
            self._fh = open(self.manifest, "a", encoding="utf-8")
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        self.records[rec["file_id"]] = rec

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def clear(self) -> None:
        for name in (_STATE_DIR, "images"):
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
        for name in ("datalist.json", "rejects.csv", "ingest_report.json", "device_vocabulary.json"):
            p = self.out / name
            if p.is_file():
                p.unlink()


def _read_or_create_salt(salt_file: Path) -> str:
    """The salt kept in ``salt_file``, created exclusively (``O_EXCL``) when missing: two processes that
    start at once end up with the same salt, never with two."""
    for _ in range(50):
        try:
            fd = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            text = salt_file.read_text().strip()
            if text:
                return text
            time.sleep(0.02)  # created by another process that has not written it yet
            continue
        salt = secrets.token_hex(16)
        with os.fdopen(fd, "w") as fh:
            fh.write(salt + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return salt
    raise IngestError(f"{salt_file} exists but stays empty; remove it (and restart) or pass the salt")


class _OutputLock:
    """Exclusive lock on an output folder for the length of a run (``flock`` on the folder itself, released
    by the kernel when the process dies, so a killed run never leaves a stale lock). A second run into the
    same folder fails at once with a clear message instead of interleaving with the first."""

    def __init__(self, out: Path):
        self.out = out
        self.fd: int | None = None

    def __enter__(self) -> _OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IngestError(f"another ingestion is writing into {self.out} (it holds the folder's lock); wait for "
                              "it to finish, or choose another output folder") from None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def _walk(src: Path, exclude: Path | None) -> list[tuple[str, str, tuple[int, int]]]:
    """``(absolute path, relative posix path, (size, mtime_ns))`` of every file under ``src``, sorted."""
    out = []
    if src.is_file():
        st = src.stat()
        return [(str(src), src.name, (st.st_size, st.st_mtime_ns))]
    excl = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(src, followlinks=False):
        rp = Path(root)
        if excl is not None:
            dirs[:] = [d for d in dirs if (rp / d).resolve() != excl]
        dirs.sort()
        for name in sorted(files):
            p = rp / name
            rel = p.relative_to(src).as_posix()
            try:
                st = p.stat()
            except OSError:
                out.append((str(p), rel, (-1, 0)))
                continue
            if not os.path.isfile(p):
                continue  # sockets, fifos...
            out.append((str(p), rel, (st.st_size, st.st_mtime_ns)))
    out.sort(key=lambda t: t[1])
    return out


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class _LabelRow:
    keys: dict[str, set[str]]
    laterality: str
    pathology: str
    birads: str | None
    line: int


def _load_labels(path: Path, salt: str) -> list[_LabelRow]:
    if not path.is_file():
        raise IngestError(f"labels CSV {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise IngestError(f"labels CSV {path} has no rows")
    cols = {c.strip().lower() for c in rows[0]}
    key_cols = {"patient_id": "PAT", "study_id": "STU", "accession_number": "ACC"}
    if "pathology" not in cols or not cols & set(key_cols):
        raise IngestError(f"labels CSV {path}: needs a 'pathology' column and at least one of "
                          f"{sorted(key_cols)}; it has {sorted(cols)}")
    out = []
    for i, r in enumerate(rows, start=2):
        r = {str(k).strip().lower(): (v or "").strip() for k, v in r.items() if k is not None}
        keys = {}
        for col, prefix in key_cols.items():
            value = r.get(col, "")
            if value:
                # the raw value hashes to the pseudonym; a pseudonym matches as it is
                keys[col] = {value, uid_hash(value, prefix, salt)}
        if not keys or not r.get("pathology"):
            raise IngestError(f"labels CSV {path} line {i}: needs a pathology and an id")
        lat = r.get("laterality", "").upper()[:1]
        if lat and lat not in "LR":
            raise IngestError(f"labels CSV {path} line {i}: laterality must be L or R, got {r.get('laterality')!r}")
        out.append(_LabelRow(keys, lat, r["pathology"].lower(), (r.get("birads") or "").lower() or None, i))
    return out


def _match_label(rows: Sequence[_LabelRow], info: Mapping) -> _LabelRow | None:
    have = {"patient_id": info.get("patient_hash"), "study_id": info.get("study_hash"),
            "accession_number": info.get("accession_hash")}
    best, best_score = None, -1
    for row in rows:
        if row.laterality and row.laterality != info.get("laterality"):
            continue
        if all(have.get(col) and have[col] in vals for col, vals in row.keys.items()):
            score = 4 * ("accession_number" in row.keys or "study_id" in row.keys) + 2 * bool(row.laterality)
            if score > best_score:
                best, best_score = row, score
    return best


# ---------------------------------------------------------------------------------------------- result
@dataclass
class IngestResult:
    """What a run produced. ``reasons``: reject reason -> number of files."""

    out_dir: Path
    datalist_path: Path
    rejects_path: Path
    report_path: Path
    files_total: int = 0
    files_ingested: int = 0
    files_rejected: int = 0
    files_resumed: int = 0
    frames_written: int = 0
    items: int = 0
    frames_dropped: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    unknown_devices: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())) or "none"
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.frames_dropped.items())) or "none"
        lines = [
            f"{self.files_total} files: {self.files_ingested} ingested, {self.files_rejected} rejected "
            f"({self.files_resumed} already done) in {self.elapsed_s:.1f} s",
            f"{self.items} frames in {self.datalist_path}; dropped frames: {dropped}",
            f"rejects ({self.rejects_path}): {reasons}",
        ]
        transient = sum(self.reasons.get(k, 0) for k in TRANSIENT_REASONS)
        if transient:
            lines.append(f"{transient} of the rejects are transient failures ({', '.join(sorted(TRANSIENT_REASONS))}): "
                         "re-running the same command retries them")
        if self.unknown_devices:
            lines.append("unknown devices (hashed; OUT/.ingest/unknown_devices.json, kept private, names them; add "
                         "them with --device-vocab): "
                         + ", ".join(f"{k} ({v} files)" for k, v in sorted(self.unknown_devices.items())))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main API
def ingest(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_format: str = "png",
    dedupe_threshold: float | None = 1.0,
    stride: int = 1,
    workers: int = 1,
    vocabulary: DeviceVocabulary | None = None,
    on_unknown_device: str = "null",
    pathology: str = _PLACEHOLDER_PATHOLOGY,
    labels: str | os.PathLike | None = None,
    salt: str | None = None,
    modalities: Sequence[str] | None = ("US",),
    keep_secondary_capture: bool = False,
    biopsy_pattern: str = DEFAULT_BIOPSY_PATTERN,
    max_zero_fraction: float = 0.8,
    zero_level: int = 2,
    min_size: int = 32,
    color: str = "keep",
    region: str = "auto",
    require_laterality: bool = False,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    file_timeout: float | None = None,
    png_compress_level: int = 1,
    show_paths: bool = False,
    restart: bool = False,
    name: str = "dicom_ingest",
    progress: bool = True,
    isolate: bool = True,
    max_attempts: int = 3,
) -> IngestResult:
    """Ingest every file under ``src`` into ``out`` (see the module docstring for the pipeline).

    Args:
        src: the PACS export folder (or one file).
        out: output folder (frames, datalist, rejects, report, ``.ingest`` state). May not be inside ``src``
            unless it is skipped automatically (it is).
        image_format: ``"png"`` (8-bit grey or RGB, no metadata) or ``"nifti"`` (``.nii.gz``, spacing in mm in
            the affine; RGB as a 5-D vector image).
        dedupe_threshold: drop a frame whose downsampled grey version differs from the last kept frame by at
            most this mean absolute difference (grey levels, 0..255); ``0`` drops exact repeats only,
            ``None`` keeps every frame.
        stride: keep frames 0, stride, 2*stride... of each cine (before de-duplication).
        workers: processes decoding files in parallel (output is identical for any number).
        vocabulary: device vocabulary (default: built-in); devices are resolved from Manufacturer +
            ManufacturerModelName.
        on_unknown_device: ``"null"`` (item device ``"unknown"``, listed in the report), ``"add"`` (register
            the device under a salted hash ``DEV-...`` and write ``out/device_vocabulary.json``) or ``"error"``
            (reject the files). Unknown devices appear in shared outputs only as that hash (sites type names
            into Manufacturer/Model); ``out/.ingest/unknown_devices.json`` (private) maps hashes to names.
        pathology: label of items no labels-CSV row matches (default: the placeholder ``"unlabelled"``).
        labels: CSV of labels (see the module docstring).
        salt: salt of every pseudonym and hash; default: a random salt kept in ``out/.ingest/salt``.
        modalities: accepted Modality values (``None``: any).
        keep_secondary_capture: keep Secondary Capture objects (screen captures) that pass the other filters.
        biopsy_pattern: regular expression (case-insensitive) of words marking a biopsy procedure.
        max_zero_fraction: drop frames with more than this fraction of black pixels (``<= zero_level``)
            after cropping; a file left without frames is rejected ``mostly_zero``.
        min_size: reject files whose cropped image is smaller than this (pixels) in width or height.
        color: ``"keep"``, ``"gray"`` or ``"rgb"`` output frames.
        region: ``"auto"``, ``"metadata"``, ``"detect"`` or ``"none"`` (see :class:`UltrasoundDicom`).
        require_laterality: reject images whose laterality is unknown (NYU rule).
        split_fractions, seed: patient-wise training/validation/test split (stratified by label).
        file_timeout: seconds per file before its worker is killed and the file rejected ``timeout``
            (runs files in worker processes even when ``workers=1``).
        png_compress_level: zlib level of PNG frames (1 fast .. 9 small).
        show_paths: write source paths (relative to ``src``) instead of pseudonymous file ids in the rejects
            and report. Off by default: PACS exports name folders after patients and files after UIDs;
            :func:`locate` maps ids back to paths.
        restart: forget previous runs in ``out`` (removes ``out/images`` and ``out/.ingest``).
        name: datalist name.
        progress: show tqdm progress bars.
        isolate: decode in worker processes even with ``workers=1`` and no timeout (default), so that a
            decoder that crashes the process (a native panic on a corrupt file) costs one ``worker_crash``
            reject instead of the run. ``False`` runs in this process (faster to start; for debugging).
        max_attempts: transient failures (``internal_error``, ``timeout``, ``worker_crash``) are retried
            by later runs until a file has failed this many times.

    Raises:
        IngestError: bad options, another run holds the output folder, settings differ from the run that
            made ``out``.

    Returns:
        :class:`IngestResult` with counts and the paths of the datalist, rejects and report.
    """
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise IngestError(f"source {src} does not exist")
    if image_format not in ("png", "nifti"):
        raise IngestError(f"image_format must be 'png' or 'nifti', got {image_format!r}")
    if on_unknown_device not in ("null", "add", "error"):
        raise IngestError(f"on_unknown_device must be 'null', 'add' or 'error', got {on_unknown_device!r}")
    if stride < 1:
        raise IngestError(f"stride must be >= 1, got {stride}")
    if color not in ("keep", "gray", "rgb"):
        raise IngestError(f"color must be 'keep', 'gray' or 'rgb', got {color!r}")
    if region not in ("auto", "metadata", "detect", "none"):
        raise IngestError(f"region must be 'auto', 'metadata', 'detect' or 'none', got {region!r}")
    try:
        re.compile(biopsy_pattern)
    except re.error as err:
        raise IngestError(f"biopsy_pattern is not a valid regular expression: {err}") from err
    if not pathology or not str(pathology).strip():
        raise IngestError("pathology must be a non-empty label (default 'unlabelled')")
    if int(max_attempts) < 1:
        raise IngestError(f"max_attempts must be >= 1, got {max_attempts}")
    out.mkdir(parents=True, exist_ok=True)
    with _OutputLock(out):  # a second run into the same folder fails fast instead of losing files
        base = IngestSettings(
            image_format=image_format, dedupe_threshold=None if dedupe_threshold is None else float(dedupe_threshold),
            stride=int(stride), color=color, region=region,
            modalities=tuple(m.upper() for m in modalities) if modalities is not None else None,
            keep_secondary_capture=bool(keep_secondary_capture), biopsy_pattern=biopsy_pattern,
            max_zero_fraction=float(max_zero_fraction), zero_level=int(zero_level), min_size=int(min_size),
            require_laterality=bool(require_laterality), png_compress_level=int(png_compress_level),
        )
        state = _State(out, base.fingerprint(), restart, salt)
        settings = IngestSettings(**{**asdict(base), "salt": state.salt})
        state.check_settings(settings.fingerprint())
        state.load()
        label_rows = _load_labels(Path(labels), settings.salt) if labels is not None else []
        vocab = (vocabulary or default_vocabulary()).copy()

        files = _walk(src, out if _is_within(out, src) else None)
        rel_of = {file_id_of(rel, settings.salt): rel for _, rel, _ in files}
        abs_of = {file_id_of(rel, settings.salt): path for path, rel, _ in files}
        fp_of = {file_id_of(rel, settings.salt): list(fp) for _, rel, fp in files}
        order = {fid: i for i, fid in enumerate(rel_of)}  # files are sorted by relative path
        resumed = 0
        to_scan = []
        for fid, rel in rel_of.items():
            rec = state.records.get(fid)
            if rec is not None and rec.get("fingerprint") == fp_of[fid] and _outputs_present(out, rec):
                retry = rec.get("reason") in TRANSIENT_REASONS and rec.get("attempts", 1) < max_attempts
                if not retry:
                    resumed += rec["status"] in ("done", "rejected")
                    continue
            to_scan.append(("scan", (abs_of[fid], rel, fp_of[fid], settings)))
        transient: dict[str, dict] = {}  # rejects decided this run from other files (recomputed every run)
        device_of: dict[str, str] = {}
        unknown: Counter = Counter()
        runner = _Runner(settings, workers, file_timeout, progress, isolate)
        try:
            for _, rec in runner.run(to_scan, "scanning"):
                state.append(rec)

            # --- resolve devices (deterministic order; may reject before decoding with on_unknown_device="error")
            candidates = sorted((state.records[fid] for fid in rel_of
                                 if state.records.get(fid, {}).get("status") in ("scanned", "done")),
                                key=lambda r: order[r["file_id"]])
            # an unknown device is named by a salted hash of its Manufacturer / Model in every output (sites type
            # names into those fields); what each hash stands for is kept in the private state folder
            raw_device: dict[str, str] = {}
            device_names: dict[str, str] = {}
            for rec in candidates:
                info = rec["info"]
                raw = f"{info['manufacturer'] or '?'} / {info['model'] or '?'}"
                found = vocab.find_dicom(info["manufacturer"], info["model"])
                if found is None:
                    label = uid_hash(raw, "DEV", settings.salt)
                    device_names[label] = raw
                    raw_device[rec["file_id"]] = label
                    if on_unknown_device == "add" and (info["manufacturer"] or info["model"]):
                        try:
                            found = vocab.find(label) or vocab.add(label).name
                        except ValueError:  # clashes with an existing alias: keep it unknown, still reported
                            found = None
                    elif on_unknown_device == "error":
                        err = UnknownDeviceError(label, "DICOM Manufacturer / ManufacturerModelName (hashed; "
                                                        f"see {_STATE_DIR}/{_DEVICE_NAMES})")
                        transient[rec["file_id"]] = _reject(rec["file_id"], rec["fingerprint"], "unknown_device",
                                                            str(err), info=info)
                        continue
                device_of[rec["file_id"]] = found or UNKNOWN_DEVICE

            # --- group by SOP instance; decode one member of each group at a time: the first that decodes wins
            #     (a file done in an earlier run first), members after it are duplicates of it
            groups: dict[str, list[str]] = defaultdict(list)
            for rec in sorted(candidates, key=lambda r: (r["status"] != "done", order[r["file_id"]])):
                if rec["file_id"] not in transient:
                    groups[rec["info"]["sop_hash"]].append(rec["file_id"])
            pos = dict.fromkeys(groups, 0)
            while True:
                batch = []
                for sop, members in groups.items():
                    i = pos[sop]
                    while i < len(members) and state.records[members[i]]["status"] == "rejected":
                        i += 1
                    pos[sop] = i
                    if i < len(members) and state.records[members[i]]["status"] == "scanned":
                        batch.append(members[i])
                if not batch:
                    break
                batch.sort(key=lambda fid: order[fid])
                jobs = [("decode", (abs_of[fid], state.records[fid], str(out), settings)) for fid in batch]
                for _, rec in runner.run(jobs, "decoding"):
                    state.append(rec)
            for sop, members in groups.items():
                i = pos[sop]
                for fid in members[i + 1:]:
                    rec = state.records[fid]
                    transient[fid] = _reject(fid, rec["fingerprint"], "duplicate", "the same SOP instance as {other}",
                                             other=members[i], info=rec["info"])

            # --- files whose kept frames are pixel-identical to an earlier file
            done = sorted((state.records[r["file_id"]] for r in candidates if r["file_id"] not in transient
                           and state.records[r["file_id"]]["status"] == "done"), key=lambda r: order[r["file_id"]])
            first_of_content: dict[str, str] = {}
            for rec in done:
                h = rec["content_hash"]
                if h in first_of_content:
                    _remove_outputs(out, _rel_frame_dir(rec["info"]), rec["info"]["sop_hash"])
                    state.append(_reject(rec["file_id"], rec["fingerprint"], "duplicate_content",
                                         "pixel-identical frames to {other}", other=first_of_content[h],
                                         info=rec["info"]))
                else:
                    first_of_content[h] = rec["file_id"]
            if device_names:
                names_file = state.dir / _DEVICE_NAMES
                old = {}
                if names_file.is_file():
                    try:
                        old = json.loads(names_file.read_text())
                    except (json.JSONDecodeError, OSError):
                        old = {}
                atomic_write_text(names_file, json.dumps({**old, **device_names}, indent=1, sort_keys=True) + "\n")
            for fid, raw in raw_device.items():  # unknown devices of the files that made it (or were rejected for it)
                status = transient.get(fid, state.records[fid])
                if status["status"] == "done" or status.get("reason") == "unknown_device":
                    unknown[raw] += 1
        finally:
            runner.close()
            state.close()

        final = {fid: transient.get(fid, state.records.get(fid)) for fid in rel_of}
        return _finish(out, src, rel_of, final, device_of, vocab, unknown, label_rows, pathology, split_fractions,
                       seed, name, settings, not show_paths, on_unknown_device, resumed, t0)


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        inner.resolve().relative_to(outer.resolve())
        return True
    except ValueError:
        return False


def _outputs_present(out: Path, rec: Mapping) -> bool:
    if rec.get("status") in ("rejected", "scanned"):
        return True  # nothing on disk; a scanned file is decoded (or not) again this run
    return all((out / fr["image"]).is_file() for fr in rec.get("frames", []))


def locate(src: str | os.PathLike, file_ids: Iterable[str], *, out: str | os.PathLike | None = None,
           salt: str | None = None) -> dict[str, str]:
    """Source paths (relative to ``src``) of pseudonymous file ids from a rejects report or provenance.

    The salt is ``salt`` or the one kept in ``out/.ingest/salt``. Ids of files that no longer exist (or
    DICOMDIR references to missing files) are not found.
    """
    if salt is None:
        if out is None:
            raise IngestError("locate() needs the salt or the output folder that keeps it")
        salt_file = Path(out) / _STATE_DIR / "salt"
        if not salt_file.is_file():
            raise IngestError(f"{salt_file} does not exist; pass the salt used for the run")
        salt = salt_file.read_text().strip()
    wanted = set(file_ids)
    found = {}
    for _, rel, _ in _walk(Path(src), Path(out) if out is not None else None):
        fid = file_id_of(rel, salt)
        if fid in wanted:
            found[fid] = rel
    return found


def _dicomdir_missing_paths(src: Path, rel: str, salt: str) -> dict[str, str]:
    """file id -> relative path of the files a DICOMDIR references that are missing (for show_paths)."""
    import pydicom

    path = src / rel if src.is_dir() else src
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
        missing = dicomdir_missing_files(ds, path)
    except Exception:  # noqa: BLE001 - the DICOMDIR changed since it was scanned: ids only
        return {}
    paths = [(Path(rel).parent / m).as_posix() for m in missing]
    return {file_id_of(p, salt): p for p in paths}


def _finish(out: Path, src: Path, rel_of: Mapping[str, str], final: Mapping[str, dict], device_of: Mapping[str, str],
            vocab: DeviceVocabulary, unknown: Counter, label_rows, default_pathology: str,
            split_fractions, seed: int, name: str, settings: IngestSettings, redact: bool,
            on_unknown_device: str, resumed: int, t0: float) -> IngestResult:
    def shown(fid: str) -> str:
        return fid if redact or fid not in rel_of else rel_of[fid]

    rejects = []
    items = []
    dropped: Counter = Counter()
    per_file = []
    ingested = 0
    unmatched_labels = set(range(len(label_rows)))
    for fid in rel_of:
        rec = final.get(fid)
        if rec is None or rec["status"] == "scanned":  # cannot happen; never lose a file silently
            rec = _reject(fid, [], "internal_error", "the file was not processed (please report this)")
        if rec["status"] != "done":
            detail = rec["detail"].replace("{other}", shown(rec.get("other", ""))) if rec.get("other") \
                else rec["detail"]
            rejects.append({"file": shown(fid), "file_id": fid, "reason": rec["reason"], "detail": detail})
            missing_paths = _dicomdir_missing_paths(src, rel_of[fid], settings.salt) \
                if rec.get("missing") and not redact else {}
            for mid in rec.get("missing", []):
                rejects.append({"file": missing_paths.get(mid, mid), "file_id": mid, "reason": "missing_file",
                                "detail": f"referenced by the DICOMDIR {shown(fid)} but not found"})
            per_file.append({"file": shown(fid), "file_id": fid, "status": "rejected", "reason": rec["reason"]})
            continue
        ingested += 1
        info = rec["info"]
        dropped.update(rec.get("dropped", {}))
        row = _match_label(label_rows, info) if label_rows else None
        if row is not None:
            unmatched_labels.discard(label_rows.index(row))
        for fr in rec["frames"]:
            item = {
                "image": fr["image"],
                "pathology": row.pathology if row else default_pathology,
                "device": device_of.get(fid, UNKNOWN_DEVICE),
                "boxes": [],
                "patient_id": info["patient_hash"],
                "study_id": info["study_hash"],
                "series_id": info["series_hash"],
                "split": "training",
                "width": fr["width"],
                "height": fr["height"],
            }
            if row is not None and row.birads:
                item["birads"] = row.birads
            for key in ("laterality", "view", "probe"):
                if info.get(key):
                    item[key] = info[key]
            if rec.get("spacing"):
                item["spacing"] = rec["spacing"]
            item["provenance"] = {
                "source": "dicom",
                "sop_instance_uid_hash": info["sop_hash"],
                "frame": fr["frame"],
                "n_frames": rec["n_frames"],
                "file_id": fid,
                "crop": rec["crop"]["box"],
                "crop_source": rec["crop"]["source"],
            }
            items.append(item)
        per_file.append({"file": shown(fid), "file_id": fid, "status": "ingested", "n_frames": rec["n_frames"],
                         "frames_kept": len(rec["frames"]), "dropped": rec.get("dropped", {}),
                         "crop": rec["crop"], "spacing": rec.get("spacing"),
                         "device": device_of.get(fid, UNKNOWN_DEVICE), "laterality": info.get("laterality", ""),
                         "warnings": rec.get("warnings", [])})
    # patient-wise split, stratified by the set of labels of each patient
    labels_of: dict[str, set[str]] = defaultdict(set)
    for it in items:
        labels_of[it["patient_id"]].add(it["pathology"])
    split_of = patient_split({p: "|".join(sorted(v)) for p, v in labels_of.items()}, split_fractions, seed)
    for it in items:
        it["split"] = split_of[it["patient_id"]]
    items.sort(key=lambda it: (it["patient_id"], it["study_id"], it["series_id"],
                               it["provenance"]["sop_instance_uid_hash"], it["provenance"]["frame"]))
    pathologies = sorted({it["pathology"] for it in items} | {default_pathology})
    description = (f"ultrasound frames ingested from a DICOM export by busgen_monai.data.ingest; pathology "
                   f"{default_pathology!r} where no label was given")
    data = make_datalist(items, name=name, description=description, pathologies=pathologies)
    datalist_path = save_datalist(data, out / "datalist.json", vocabulary=vocab)
    rejects.sort(key=lambda r: (r["reason"] == "missing_file", r["file"], r["reason"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["file", "file_id", "reason", "detail"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rejects)
    rejects_path = atomic_write_text(out / "rejects.csv", buf.getvalue())
    if on_unknown_device == "add" and any(not e.builtin for e in vocab.entries):
        atomic_write_text(out / "device_vocabulary.json", json.dumps(vocab.to_dict(), indent=1) + "\n")
    reasons = Counter(r["reason"] for r in rejects)
    n_files = len(rel_of)
    result = IngestResult(
        out_dir=out, datalist_path=datalist_path, rejects_path=rejects_path,
        report_path=out / "ingest_report.json", files_total=n_files, files_ingested=ingested,
        files_rejected=n_files - ingested, files_resumed=resumed, frames_written=len(items), items=len(items),
        frames_dropped=dict(dropped), reasons=dict(reasons), unknown_devices=dict(unknown),
        elapsed_s=time.perf_counter() - t0,
    )
    report = {
        "tool": "busgen_monai.data.ingest",
        "settings": {k: v for k, v in settings.fingerprint().items() if k != "salt"},
        "paths": "pseudonymous file ids" if redact else "relative to the source folder",
        "reject_reasons": REJECT_REASONS,
        "counts": {"files": n_files, "ingested": ingested, "rejected": n_files - ingested,
                   "missing_referenced_files": reasons.get("missing_file", 0), "resumed": resumed,
                   "transient": sum(reasons.get(k, 0) for k in TRANSIENT_REASONS),
                   "items": len(items), "patients": len(labels_of),
                   "frames_dropped": dict(dropped), "reasons": dict(reasons)},
        "unknown_devices": dict(unknown),
        "unmatched_label_rows": [label_rows[i].line for i in sorted(unmatched_labels)],
        "files": per_file,
        "rejects": rejects,
    }
    atomic_write_text(result.report_path, json.dumps(report, indent=1) + "\n")
    return result


# ---------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="busgen ingest",
        description=(
            "Ingest a PACS export of ultrasound DICOM (cines and stills) into cropped, de-identified frames and a "
            "datalist. Every input file ends up in OUT/datalist.json (through its frames) or in OUT/rejects.csv "
            "with a reason. Re-running the same command resumes an interrupted run."),
        epilog=(
            "outputs: OUT/images/<patient>/<study>/<series>/<image>_f<frame>.png|.nii.gz, OUT/datalist.json, "
            "OUT/rejects.csv, OUT/ingest_report.json, OUT/.ingest/ (resume state and salt: keep it private). "
            "Reject reasons: " + ", ".join(REJECT_REASONS) + ". "
            "Example: busgen ingest /mnt/pacs_export data/ingested --workers 4 --stride 2 --labels labels.csv"),
    )
    p.add_argument("src", help="folder of the PACS export (files with or without extension, DICOMDIR or not)")
    p.add_argument("out", help="output folder")
    p.add_argument("--format", dest="image_format", choices=("png", "nifti"), default="png",
                   help="frame file format (default png; nifti stores the spacing in mm in the affine)")
    p.add_argument("--dedupe-threshold", default="1.0",
                   help="drop a frame whose downsampled grey version differs from the last kept one by at most "
                        "this mean absolute difference in grey levels (default 1.0; 0 = exact repeats only; "
                        "'off' keeps all)")
    p.add_argument("--stride", type=int, default=1, help="keep every N-th frame of a cine (default 1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--file-timeout", type=float, default=600.0,
                   help="seconds per file before it is rejected as 'timeout' (default 600; 0 = no limit)")
    p.add_argument("--device-vocab", help="device vocabulary file (JSON/YAML) added to the built-in devices")
    p.add_argument("--on-unknown-device", choices=("null", "add", "error"), default="null",
                   help="unknown scanner: 'null' = device 'unknown' + listed in the report (default), 'add' = "
                        "register it (OUT/device_vocabulary.json), 'error' = reject its files")
    p.add_argument("--pathology", default=_PLACEHOLDER_PATHOLOGY,
                   help="label of items without a row in --labels (default: the placeholder 'unlabelled')")
    p.add_argument("--labels", help="CSV with 'pathology' and patient_id / study_id / accession_number "
                                    "(raw or pseudonymous), optional laterality, birads")
    p.add_argument("--salt", help="salt of all pseudonyms (default: random, kept in OUT/.ingest/salt); "
                                  "also read from $BUSGEN_INGEST_SALT")
    p.add_argument("--modalities", default="US",
                   help="comma-separated accepted Modality values, or 'any' (default US)")
    p.add_argument("--keep-secondary-capture", action="store_true",
                   help="keep Secondary Capture objects of accepted modalities (default: reject them)")
    p.add_argument("--biopsy-pattern", default=DEFAULT_BIOPSY_PATTERN,
                   help="regular expression of biopsy words in study/series/procedure descriptions")
    p.add_argument("--max-zero-fraction", type=float, default=0.8,
                   help="drop frames with more than this fraction of black pixels after cropping (default 0.8)")
    p.add_argument("--min-size", type=int, default=32, help="reject crops smaller than this many pixels (default 32)")
    p.add_argument("--color", choices=("keep", "gray", "rgb"), default="keep", help="output colour (default keep)")
    p.add_argument("--region", choices=("auto", "metadata", "detect", "none"), default="auto",
                   help="crop: ultrasound-region metadata else detection (auto, default), metadata only, "
                        "detection only, or none")
    p.add_argument("--require-laterality", action="store_true", help="reject images without a known laterality")
    p.add_argument("--split", default="0.7,0.15,0.15", help="training,validation,test fractions (patient-wise)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--png-compress-level", type=int, default=1, choices=range(0, 10), metavar="0-9",
                   help="PNG zlib level (default 1: fast)")
    p.add_argument("--show-paths", action="store_true",
                   help="write source paths instead of pseudonymous file ids in the rejects and report (only when "
                        "folder/file names carry no identifiers; see --locate)")
    p.add_argument("--locate", nargs="+", metavar="FILE_ID",
                   help="print the source paths of these file ids (from rejects.csv or provenance) and exit")
    p.add_argument("--restart", action="store_true", help="forget a previous run in OUT and start over")
    p.add_argument("--name", default="dicom_ingest", help="datalist name (default dicom_ingest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def ingest_main(argv: Sequence[str] | None = None) -> int:
    """``busgen ingest SRC OUT [options]``; returns the exit status (0 ok, 1 error, 3 files rejected for an
    unknown device with ``--on-unknown-device error``)."""
    args = _parser().parse_args(argv)
    try:
        dedupe = None if str(args.dedupe_threshold).lower() in ("off", "none", "-1") else float(args.dedupe_threshold)
    except ValueError:
        print(f"error: --dedupe-threshold must be a number or 'off', got {args.dedupe_threshold!r}", file=sys.stderr)
        return 1
    try:
        split = [float(v) for v in args.split.split(",")]
    except ValueError:
        print(f"error: --split must be three numbers like 0.7,0.15,0.15, got {args.split!r}", file=sys.stderr)
        return 1
    if args.locate:
        try:
            found = locate(args.src, args.locate, out=args.out,
                           salt=args.salt or os.environ.get("BUSGEN_INGEST_SALT"))
        except IngestError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for fid in args.locate:
            print(f"{fid}\t{found.get(fid, '<not found>')}")
        return 0 if len(found) == len(set(args.locate)) else 1
    modalities = None if args.modalities.strip().lower() in ("any", "all", "*", "") else \
        [m.strip().upper() for m in args.modalities.split(",") if m.strip()]
    try:
        vocab = DeviceVocabulary.from_file(args.device_vocab) if args.device_vocab else None
        result = ingest(
            args.src, args.out, image_format=args.image_format, dedupe_threshold=dedupe, stride=args.stride,
            workers=args.workers, vocabulary=vocab, on_unknown_device=args.on_unknown_device,
            pathology=args.pathology, labels=args.labels, salt=args.salt or os.environ.get("BUSGEN_INGEST_SALT"),
            modalities=modalities, keep_secondary_capture=args.keep_secondary_capture,
            biopsy_pattern=args.biopsy_pattern, max_zero_fraction=args.max_zero_fraction, min_size=args.min_size,
            color=args.color, region=args.region, require_laterality=args.require_laterality,
            split_fractions=split, seed=args.seed, file_timeout=args.file_timeout or None,
            png_compress_level=args.png_compress_level, show_paths=args.show_paths, restart=args.restart,
            name=args.name, progress=not args.no_progress,
        )
    except (IngestError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    if args.on_unknown_device == "error" and result.reasons.get("unknown_device"):
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(ingest_main())
