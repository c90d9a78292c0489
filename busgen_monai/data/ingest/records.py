"""What the ingester records about each input file: the reject reason codes, the manifest record
(one per file, keyed by its pseudonymous ``file_id``), the run's error, and the report-safe form of an exception.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path

from ..dicom import short_message, uid_hash
from ..dicom.phi import safe_exception


__all__ = ["REJECT_REASONS", "TRANSIENT_REASONS", "IngestError", "file_id_of"]


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


class IngestError(RuntimeError):
    """The run cannot start or finish (bad options, output folder from other settings...)."""


#: Record keys whose values the ingester makes itself (codes, pseudonyms): never scrubbed.
_OWN_KEYS = frozenset({"status", "reason", "file_id", "other", "content_hash", "image", "patient_hash", "study_hash",
                       "series_hash", "sop_hash", "accession_hash", "patient_key_source", "source", "kind",
                       "missing", "fingerprint", "attempts",
                       # device fields: cleaned of whole identifying values when read; hashed in every shared output
                       "manufacturer", "model"})


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


def _short_tb(err: BaseException) -> str:
    """Type, message (quoted values removed: they may be header text) and where it was raised."""
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{safe_exception(err)}{where}"
