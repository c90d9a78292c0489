"""Identifier values of a DICOM file, found however damaged its header is, and text safe to write.

A strict parse (pydicom) sees an identifier only where the header is intact: one element whose length
field is too large swallows the elements after it, and Patient Name/ID, Accession Number, Institution or
dates then hide inside another element's value. :func:`raw_identifier_values` therefore also scans the
raw bytes of the header for the tags of every identifying element (explicit and implicit VR, little and
big endian) and reads each value twice: with its declared length, and as the run of printable bytes that
follows the length field (so a length that is too large or too small does not hide it).
:func:`identifier_values` joins both sets; :func:`scrub_record` redacts them from every string of a
record before it is written anywhere.

:func:`safe_token` and :func:`safe_uid` keep header values that the ingester must record (Modality,
photometric, transfer syntax, SOP class) only when they look like what they claim to be: a corrupt header
can make a two-letter Modality swallow the patient's name.

:func:`phi_strings` lists the identifying strings of a parsed header; :func:`contains_phi` and :func:`scrub`
test and redact them in free text.

Part of :mod:`busgen_monai.data.dicom` (``busgen_monai.data.dicom_phi`` re-exports it).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .header import _text

__all__ = [
    "PHI_KEYWORDS",
    "raw_identifier_values",
    "identifier_values",
    "IdentifierValues",
    "scrub_record",
    "safe_token",
    "safe_uid",
    "safe_exception",
    "phi_strings",
    "contains_phi",
    "scrub",
]

#: Identifying elements whose values must never appear in an output.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber", "StudyID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "StationName", "DeviceSerialNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "IssuerOfPatientID", "MedicalRecordLocator", "PatientComments", "AdmissionID", "RequestedProcedureID",
    "ScheduledProcedureStepID", "PerformedProcedureStepID", "FrameOfReferenceUID", "StudyDate",
    "ContentDate", "AcquisitionDateTime", "SeriesDate", "AcquisitionDate", "MediaStorageSOPInstanceUID",
    "StudyTime", "SeriesTime", "ContentTime", "AcquisitionTime", "PatientAge", "PatientSex",
)
PERSON_NAME_KEYWORDS = {
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
}
# Short values that identify nobody and would match everywhere (PatientSex "M", PatientAge "045Y").
_WEAK = {"PatientSex", "PatientAge", "StudyTime", "SeriesTime", "ContentTime", "AcquisitionTime"}

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_VRS = _LONG_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_MAX_VALUE = 256
#: How much of a file is scanned: headers are small; an element that swallowed the rest is cut here.
SCAN_BYTES = 256 << 10


def _tags() -> list[tuple[str, int, int]]:
    from pydicom.datadict import tag_for_keyword

    out = []
    for kw in PHI_KEYWORDS:
        tag = tag_for_keyword(kw)
        if tag is not None:
            out.append((kw, tag >> 16, tag & 0xFFFF))
    return out


_TAGS: list[tuple[str, int, int]] | None = None


class IdentifierValues(list):
    """Identifying values, longest first (a list); ``full`` holds the whole values only, without the parts
    of person names (a name part such as ``SONO`` may be an ordinary word of a device name)."""

    full: list[str]


def _split_values(kw: str, text: str, min_length: int, parts: set[str] | None = None) -> set[str]:
    out: set[str] = set()
    text = text.strip(" \x00")
    if kw in _WEAK:
        return out
    for value in text.split("\\")[:8]:
        value = value.strip(" \x00")
        if len(value) >= min_length:
            out.add(value[:_MAX_VALUE])
        if kw in PERSON_NAME_KEYWORDS and parts is not None:
            for part in re.split(r"[\^=\s,]+", value)[:16]:
                if len(part) >= min_length:
                    parts.add(part[:_MAX_VALUE])
    return out


def raw_identifier_values(data: bytes | str | os.PathLike, *, min_length: int = 3,
                          parts: set[str] | None = None) -> set[str]:
    """Values of identifying elements found by scanning the raw bytes (see the module docstring).

    Args:
        data: the file's bytes, or its path (the first :data:`SCAN_BYTES` are read).
        min_length: shorter values are ignored (a StudyID of ``"1"`` identifies nobody).
        parts: when given, the parts of person names are added to it (else to the result).
    """
    if parts is None:
        parts = out_parts = set()
    else:
        out_parts = None
    global _TAGS
    if not isinstance(data, (bytes, bytearray, memoryview)):
        try:
            with open(data, "rb") as fh:
                data = fh.read(SCAN_BYTES)
        except OSError:
            return set()
    data = bytes(data[:SCAN_BYTES])
    if _TAGS is None:
        _TAGS = _tags()
    out: set[str] = set()
    n = len(data)
    for kw, group, elem in _TAGS:
        for order in ("<", ">"):
            needle = struct.pack(f"{order}HH", group, elem)
            pos = data.find(needle)
            hits = 0
            while pos >= 0 and hits < 64:
                hits += 1
                starts = []
                vr = data[pos + 4:pos + 6]
                if vr in _VRS:  # explicit VR
                    if vr in _LONG_VRS and pos + 12 <= n:
                        (length,) = struct.unpack(f"{order}L", data[pos + 8:pos + 12])
                        starts.append((pos + 12, length))
                    elif pos + 8 <= n:
                        (length,) = struct.unpack(f"{order}H", data[pos + 6:pos + 8])
                        starts.append((pos + 8, length))
                if pos + 8 <= n:  # implicit VR (also tried when the VR bytes happen to look valid)
                    (length,) = struct.unpack(f"{order}L", data[pos + 4:pos + 8])
                    starts.append((pos + 8, length))
                for start, length in starts:
                    declared = data[start:start + min(length, _MAX_VALUE)]
                    run = _PRINTABLE.match(data, start, min(n, start + _MAX_VALUE)).group(0)
                    for raw in (declared, run):
                        text = raw.decode("latin-1")
                        text = text.split("\x00")[0]
                        text = "".join(ch for ch in text if 32 <= ord(ch) < 127)
                        out |= _split_values(kw, text, min_length, parts)
                pos = data.find(needle, pos + 1)
    return out | out_parts if out_parts is not None else out


def identifier_values(ds: Any = None, path: str | os.PathLike | None = None, *,
                      min_length: int = 3) -> IdentifierValues:
    """Identifying strings of a file from every parse that succeeds: the strict one (``ds``, pydicom) and
    the raw scan of ``path``, with the parts of person names. Longest first (so a full name is redacted
    before its parts); ``.full`` has the whole values only."""
    out: set[str] = set()
    parts: set[str] = set()
    if ds is not None:
        datasets = [ds]
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            datasets.append(meta)
        for d in datasets:
            for kw in PHI_KEYWORDS:
                try:
                    value = d.get(kw)
                except Exception:  # noqa: BLE001 - a corrupt element
                    continue
                if value is None:
                    continue
                if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                    text = "\\".join(str(v) for v in value)
                else:
                    try:
                        text = str(value)
                    except Exception:  # noqa: BLE001
                        continue
                text = "".join(ch for ch in text[:4 * _MAX_VALUE] if ch.isprintable() or ch == "\\")
                # a value that swallowed later elements: its printable runs are values too
                for chunk in re.split(r"[^\x20-\x7e\\]+", text):
                    out |= _split_values(kw, chunk, min_length, parts)
    if path is not None:
        out |= raw_identifier_values(path, min_length=min_length, parts=parts)
    result = IdentifierValues(sorted(out | parts, key=lambda s: (-len(s), s)))
    result.full = sorted(out, key=lambda s: (-len(s), s))
    return result


def _pattern(values: Sequence[str]) -> re.Pattern | None:
    if not values:
        return None
    alternatives = "|".join(re.escape(v) for v in sorted(set(values), key=len, reverse=True))
    return re.compile(f"(?:{alternatives})", re.IGNORECASE)


_OWN = re.compile(r"(?:[A-Z]{3,4}-[0-9a-f]{12}|[0-9a-f]{16,}|images|[/_.]|f[0-9]{5}|png|nii|gz)*")


def scrub_record(obj: Any, phi: Sequence[str], *, keep: Iterable[str] = (), _pat: re.Pattern | None = None) -> Any:
    """A copy of ``obj`` (dicts, lists, strings...) with every occurrence of an identifying value in any
    string replaced by ``[redacted]``. Unlike :func:`~busgen_monai.data.dicom.scrub`, the match is not
    limited to whole tokens: a value glued to other text is removed too. Values under the keys ``keep``
    (codes and pseudonyms the caller made itself) and strings made only of pseudonyms/hashes are left."""
    pat = _pat if _pat is not None else _pattern(phi)
    if pat is None:
        return obj
    keep = keep if isinstance(keep, (set, frozenset)) else frozenset(keep)
    if isinstance(obj, str):
        if _OWN.fullmatch(obj):
            return obj  # pseudonyms, hashes and frame paths made of them are ours, not header text
        return pat.sub("[redacted]", obj)
    if isinstance(obj, Mapping):
        return {k: v if k in keep else scrub_record(v, phi, keep=keep, _pat=pat) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_record(v, phi, keep=keep, _pat=pat) for v in obj)
    return obj


_TOKEN = re.compile(r"[A-Z0-9_ ]{1,16}")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def safe_token(value: str, allowed: Iterable[str] | None = None) -> str:
    """``value`` when it is a short code string (upper-case letters, digits, ``_``, space; or one of
    ``allowed``), else ``""``."""
    value = (value or "").strip()
    if allowed is not None:
        return value if value in set(allowed) else ""
    return value if _TOKEN.fullmatch(value) else ""


def safe_uid(value: str) -> str:
    """``value`` when it is a syntactically valid UID (digits and dots, at most 64 characters), else ``""``."""
    value = (value or "").strip().rstrip("\x00")
    return value if len(value) <= 64 and _UID.fullmatch(value) else ""


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")


def safe_exception(err: BaseException, phi: Sequence[str] = ()) -> str:
    """``Type: message`` of an exception, with quoted strings (where libraries quote the values they
    choke on) replaced by ``'...'`` and identifying values redacted."""
    text = f"{type(err).__name__}: {err}"
    text = _QUOTED.sub("'...'", text)
    return scrub_record(text, phi) if phi else text


def phi_strings(ds, min_length: int = 3) -> list[str]:
    """Identifying strings of a header (names and name parts, ids, dates, UIDs, institution...), longest
    first, used to scrub any free text before it is written. Values shorter than ``min_length`` (a
    StudyID of ``"1"``) are left out: they would match everywhere and identify nobody."""
    out: set[str] = set()
    for kw in PHI_KEYWORDS:
        value = _text(ds, kw)[:256]  # a corrupt header can put megabytes into a name: identifiers are short
        if len(value) >= min_length:
            out.add(value)
        if kw in PERSON_NAME_KEYWORDS:  # name parts identify too; words of other values (CLINIC) do not
            for part in re.split(r"[\^=\s,]+", value)[:16]:
                if len(part) >= min_length:
                    out.add(part)
    return sorted(out, key=len, reverse=True)


def _phi_regex(value: str) -> re.Pattern:
    return re.compile(r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])", re.IGNORECASE)


def contains_phi(text: str, phi: Sequence[str]) -> bool:
    """Whether ``text`` contains one of the identifying strings as a whole token (case-insensitive)."""
    lowered = text.lower()
    return any(p and p.lower() in lowered and _phi_regex(p).search(text) for p in phi)


def scrub(text: str, phi: Sequence[str]) -> str:
    """Replace every whole-token occurrence of an identifying string (case-insensitive) by ``[redacted]``."""
    for value in phi:
        if value and value.lower() in text.lower():
            text = _phi_regex(value).sub("[redacted]", text)
    return text
