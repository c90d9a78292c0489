"""Phase 1 for one file (:func:`scan_file`): recognise DICOM, read its header without pixels and decide
whether it may train a model; what must not (non-images, report screens, secondary captures, other modalities,
biopsy procedures, no laterality when required, no decoder, absurd geometry) is rejected with a reason code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..dicom import (
    NON_IMAGE_SOP_PREFIXES,
    SECONDARY_CAPTURE_SOP_CLASSES,
    US_VOLUME_SOP_CLASSES,
    DicomRejectError,
    check_geometry,
    corrupt_header_message,
    decoder_problem,
    describe,
    dicomdir_missing_files,
    read_header,
    scrub,
    sniff_dicom,
    uid_hash,
)
from ..dicom.phi import identifier_values, scrub_record
from .records import _OWN_KEYS, _record, _reject, _short_tb, file_id_of
from .settings import IngestSettings


__all__ = ["scan_file"]


_REPORT_PATTERN = re.compile(r"\b(report|worksheet|work\s*sheet|summary\s*page)\b", re.IGNORECASE)
_PROCEDURE_KEYWORDS = (
    "StudyDescription", "SeriesDescription", "PerformedProcedureStepDescription", "RequestedProcedureDescription",
    "ProtocolName", "ImageComments", "ScheduledProcedureStepDescription", "AdmittingDiagnosesDescription",
)
_PROCEDURE_SEQUENCES = (
    "RequestAttributesSequence", "ProcedureCodeSequence", "PerformedProtocolCodeSequence",
    "RequestedProcedureCodeSequence", "ScheduledProtocolCodeSequence",
)


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
