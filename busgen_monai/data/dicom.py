"""Read ultrasound DICOM: recognise files, extract PHI-free metadata, decode frames, crop to the image.

This module knows what a DICOM file *says*; :mod:`busgen_monai.data.ingest` decides what to keep.

- :func:`sniff_dicom` recognises DICOM by content (128-byte preamble + ``DICM``; or no preamble but a
  plausible first data element that pydicom can read with ``force=True`` and that carries image/SOP tags).
- :func:`read_header` reads the header (no pixel data) and locates the pixel data element without
  loading it (:class:`PixelDataInfo`), so absurd sizes and truncation are caught before decoding.
- :func:`describe` turns a header into a :class:`DicomInfo`: geometry, photometric, transfer syntax,
  canonical-device inputs, laterality, view, probe, ultrasound regions and salted pseudonyms of every
  identifier. Raw identifiers never leave this module except as salted hashes.
- :class:`UltrasoundDicom` decodes frame by frame (``pydicom.pixels.iter_pixels`` on the file, so a cine
  never sits in memory at once), converts every photometric interpretation to 8-bit grey or RGB, crops
  to the imaging region and yields ``(frame_index, uint8 array)``.

8-bit output (documented contract):

- ``MONOCHROME2`` 8-bit: unchanged. ``MONOCHROME1``: inverted (``255 - v``) so that high = bright.
- More than 8 bits stored (grey): the modality LUT (rescale slope/intercept) is applied, then the first
  ``WindowCenter``/``WindowWidth`` (linear DICOM window) if present, else a VOI LUT sequence, else a robust
  window from the 0.5 and 99.5 percentiles of the first decoded frame. The window is fixed for the whole
  file so a cine does not flicker. The result is scaled to 0..255.
- Colour with more than 8 bits per sample: shifted right by ``BitsStored - 8``.
- ``RGB`` and every ``YBR_*``: pydicom converts YCbCr to RGB while decoding; output is RGB.
- ``PALETTE COLOR``: the palette LUT is applied (16-bit LUT entries are scaled to 8 bits); output RGB.

Cropping (:func:`select_region` / :func:`detect_imaging_region`):

- With a ``SequenceOfUltrasoundRegions``: the 2-D region (``RegionSpatialFormat`` 1) is used, preferring
  ``RegionDataType`` 1 (tissue) and then the largest; the pixel spacing comes from ``PhysicalDeltaX/Y``
  in cm (converted to mm). A region that lies outside the image (a resized export whose header was not
  updated) is ignored with a warning and the fallback is used.
- Fallback (no usable region, :func:`detect_imaging_region`): the imaging region is the largest solid
  region of textured, non-dark pixels. Flat panels (local standard deviation below ``flat_std``: UI bars,
  solid text backgrounds, grey/colour scales) are discarded; connected components without a thick
  interior (text glyphs, words, stacked text lines, callipers, scale bars, markers: strokes a few pixels
  wide) and small specks are discarded; a small closing joins speckle, an opening cuts thin bridges; the
  largest component left is the image; its convex hull gives the crop box, and pixels of the box outside
  the hull are set to 0 so text in the corners of a sector image does not survive. The mask is computed
  once per file on the pixel-wise maximum of the first, middle and last frames, so every frame of a cine
  gets the same crop. Frames under 64 px (thumbnails) are ``too_small`` rejects, and no region of at
  least ``min_area_fraction`` of the frame is a ``no_imaging_region`` reject: a frame whose burned-in
  text cannot be cropped away is never returned (unless ``region="none"`` or ``"metadata"`` asks so).
  Limits: text that touches the image with no dark gap is removed only when its band is thinner than
  about 1/20 of the frame (the opening); overlays *inside* the image (callipers, body marks, a name typed
  on the image) are not removed by any crop. The acute corners of a fan can lose a few pixels.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_phi import PERSON_NAME_KEYWORDS, PHI_KEYWORDS, identifier_values, safe_exception, safe_token, safe_uid

__all__ = [
    "DicomRejectError",
    "PixelDataInfo",
    "UltrasoundRegion",
    "DicomInfo",
    "CropSpec",
    "US_IMAGE_SOP_CLASSES",
    "SECONDARY_CAPTURE_SOP_CLASSES",
    "DICOMDIR_SOP_CLASS",
    "sniff_dicom",
    "read_header",
    "describe",
    "dicomdir_missing_files",
    "decoder_problem",
    "check_geometry",
    "corrupt_header_message",
    "codestream_size",
    "phi_strings",
    "scrub",
    "contains_phi",
    "laterality_from_text",
    "select_region",
    "detect_imaging_region",
    "FrameConverter",
    "UltrasoundDicom",
    "read_ultrasound",
    "uid_hash",
    "short_message",
]

US_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
}
#: 3-D / volume SOP classes that are not 2-D B-mode frames.
US_VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
    "1.2.840.10008.5.1.4.1.1.6.3": "Photoacoustic Image Storage",
}
SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: SOP class prefixes of objects that are not images (reports, states, waveforms, documents, RT ...).
NON_IMAGE_SOP_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report / key object selection",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document (PDF/CDA/STL/...)",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
    "1.2.840.10008.5.1.4.1.1.66": "raw data / registration / fiducials / segmentation",
    "1.2.840.10008.5.1.4.1.1.67": "real world value mapping",
    "1.2.840.10008.5.1.4.1.1.68.": "surface",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.90.": "content assessment",
    "1.2.840.10008.5.1.4.1.1.91.": "annotation",
    "1.2.840.10008.5.1.4.1.1.200.": "protocol",
    "1.2.840.10008.5.1.4.38.": "hanging protocol",
    "1.2.840.10008.5.1.4.39.": "color palette",
    "1.2.840.10008.5.1.4.1.1.501.": "DICOS object",
}

# Transfer syntax -> packages that decode it (for the install hint of a reject message).
_TS_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}

_BIG_ENDIAN_TS = "1.2.840.10008.1.2.2"
_RLE_TS = "1.2.840.10008.1.2.5"
_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", _BIG_ENDIAN_TS, _DEFLATED_TS}

_VALID_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
}

#: Free-text elements searched for laterality words.
DESCRIPTION_KEYWORDS = (
    "StudyDescription",
    "SeriesDescription",
    "PerformedProcedureStepDescription",
    "RequestedProcedureDescription",
    "ProtocolName",
    "ImageComments",
    "BodyPartExamined",
)

# Identifying elements whose values must never appear in an output (used to scrub free text).
_PHI_KEYWORDS = PHI_KEYWORDS
_PERSON_NAME_KEYWORDS = PERSON_NAME_KEYWORDS


class DicomRejectError(Exception):
    """A file that cannot or must not be ingested. ``reason`` is a short stable code, the message says why
    and, where there is one, how to fix it."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        self.message = short_message(message)
        super().__init__(f"{reason}: {self.message}")


def short_message(text: str, limit: int = 400) -> str:
    """A message fit for a report: printable ASCII, one line, at most ``limit`` characters (error
    messages of corrupt files can quote megabytes of garbage, or values that were never meant to be text)."""
    text = " ".join("".join(ch if 32 <= ord(ch) < 127 else " " for ch in str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + ".."


def uid_hash(value: str, prefix: str, salt: str) -> str:
    """Salted, truncated SHA-256 of an identifier (same scheme as :func:`~busgen_monai.data.loaders.pseudonym`)."""
    digest = hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


# ---------------------------------------------------------------------------------------------- sniffing
def sniff_dicom(path: str | os.PathLike) -> str | None:
    """What a file is, judged by its bytes: ``"dicom"`` (preamble + ``DICM``), ``"dicom-raw"`` (no preamble
    but the bytes start like a DICOM data set), or ``None`` (not DICOM). DICOMDIRs are ``"dicom"`` here;
    :func:`describe` tells them apart."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(140)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 8 and head[:4] == b"DICM":  # preamble stripped but magic kept
        return "dicom-raw"
    if len(head) < 8:
        return None
    for order in ("<", ">"):
        group, elem = struct.unpack(f"{order}HH", head[:4])
        if group not in (0x0002, 0x0008) or elem > 0x0100:
            continue
        if head[4:6] in _VALID_VRS:  # explicit VR
            return "dicom-raw"
        (length,) = struct.unpack(f"{order}L", head[4:8])  # implicit VR: a small, even length
        if length < 1024 and (length % 2 == 0 or length == 0xFFFFFFFF):
            return "dicom-raw"
    return None


# ---------------------------------------------------------------------------------------------- header
@dataclass
class PixelDataInfo:
    """Where the pixel data element is and how big it is, read without loading it."""

    present: bool
    keyword: str = "PixelData"
    offset: int = 0
    length: int | None = None  # None: undefined length (encapsulated)
    fragments: int = 0  # encapsulated: number of fragments after the basic offset table
    bot_entries: int = 0  # encapsulated: number of basic offset table entries
    truncated: bool = False
    frame_starts: int = 0  # encapsulated: fragments that begin a JPEG/JPEG-LS/JPEG 2000 codestream
    first_fragment: bytes = b""  # encapsulated: the first bytes of the first fragment (codestream header)
    value_offset: int = 0  # file offset of the element's value (the first pixel byte when native)
    rle_segments: tuple[int, ...] = ()  # RLE: the distinct segment counts of the fragments' RLE headers
    stray_offset: int = -1  # no pixel data after the header, but a PixelData tag at this offset (corrupt header)


def _peek_pixel_data(fh, tsyntax: str, implicit: bool, little: bool, file_size: int) -> PixelDataInfo:
    start = fh.tell()
    head = fh.read(8)
    if len(head) < 8:
        return PixelDataInfo(present=False)
    order = "<" if little else ">"
    group, elem = struct.unpack(f"{order}HH", head[:4])
    if group != 0x7FE0 or elem not in (0x0010, 0x0008, 0x0009):
        return PixelDataInfo(present=False)
    keyword = {0x0010: "PixelData", 0x0008: "FloatPixelData", 0x0009: "DoubleFloatPixelData"}[elem]
    if implicit:
        (length,) = struct.unpack(f"{order}L", head[4:8])
    else:
        extra = fh.read(4)
        if len(extra) < 4:
            return PixelDataInfo(present=True, keyword=keyword, offset=start, truncated=True)
        (length,) = struct.unpack(f"{order}L", extra)
    value_start = fh.tell()
    if length != 0xFFFFFFFF:
        truncated = value_start + length > file_size
        return PixelDataInfo(True, keyword, start, length, truncated=truncated, value_offset=value_start)
    # Encapsulated: walk the items (tags and the first bytes of each fragment, seeking over the rest).
    info = PixelDataInfo(True, keyword, start, None)
    first = True
    while True:
        item = fh.read(8)
        if len(item) < 8:
            info.truncated = True
            return info
        tag_group, tag_elem, item_len = struct.unpack("<HHL", item)
        if (tag_group, tag_elem) == (0xFFFE, 0xE0DD):
            break
        if (tag_group, tag_elem) != (0xFFFE, 0xE000) or item_len == 0xFFFFFFFF or fh.tell() + item_len > file_size:
            info.truncated = True
            return info
        if first:
            info.bot_entries = item_len // 4
            first = False
            fh.seek(item_len, os.SEEK_CUR)
            continue
        info.fragments += 1
        head = fh.read(min(item_len, 4096 if info.fragments == 1 else 12))
        if info.fragments == 1:
            info.first_fragment = head
        if tsyntax == _RLE_TS and len(head) >= 4:
            (segments,) = struct.unpack("<L", head[:4])
            if segments not in info.rle_segments:
                info.rle_segments = tuple(sorted(set(info.rle_segments) | {segments}))
        if head.startswith((b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")):
            info.frame_starts += 1
        fh.seek(item_len - len(head), os.SEEK_CUR)
    return info


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def codestream_size(head: bytes) -> tuple[int, int] | None:
    """``(rows, columns)`` of a JPEG / JPEG-LS (SOF marker) or JPEG 2000 (SIZ marker) codestream from its
    first bytes, or ``None`` when they cannot be read there."""
    try:
        if head.startswith(b"\xff\xd8"):
            pos = 2
            while pos + 4 <= len(head):
                if head[pos] != 0xFF:
                    return None
                marker = head[pos + 1]
                if marker == 0xFF:  # fill byte
                    pos += 1
                    continue
                (seg_len,) = struct.unpack(">H", head[pos + 2:pos + 4])
                if marker in _SOF_MARKERS:
                    if pos + 9 > len(head):
                        return None
                    rows, cols = struct.unpack(">HH", head[pos + 5:pos + 9])
                    return (rows, cols) if rows and cols else None
                pos += 2 + seg_len
            return None
        i = head.find(b"\xff\x4f\xff\x51")
        if i >= 0 and i + 24 <= len(head):
            xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[i + 8:i + 24])
            return (ysiz - yo, xsiz - xo)
    except struct.error:
        return None
    return None


def read_header(path: str | os.PathLike, *, force: bool = False):
    """Read the header of a DICOM file (everything before the pixel data) and peek at the pixel data.

    Returns:
        ``(dataset, PixelDataInfo, transfer_syntax_uid)``. The transfer syntax is the file meta one, or,
        for files without file meta, the encoding pydicom detected.

    Raises:
        DicomRejectError: ``unreadable`` with pydicom's reason.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    size = os.path.getsize(path)
    if size == 0:
        raise DicomRejectError("not_dicom", "empty file")
    with open(path, "rb") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=force)
        except InvalidDicomError as err:
            raise DicomRejectError("not_dicom", "not a DICOM file (no 'DICM' marker and no readable data set)") from None
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt data
            raise DicomRejectError("unreadable", f"cannot read the DICOM header ({type(err).__name__})") from None
        meta = getattr(ds, "file_meta", None)
        tsyntax = _text(meta, "TransferSyntaxUID") if meta is not None else ""
        implicit, little = ds.original_encoding
        if implicit is None or little is None:
            implicit, little = True, True
        if not tsyntax:
            tsyntax = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else _BIG_ENDIAN_TS)
        if tsyntax == _DEFLATED_TS:
            # the stream is compressed: pixel data is found after inflating, by the full read later
            pix = PixelDataInfo(present=True, length=None)
        else:
            try:
                pix = _peek_pixel_data(fh, tsyntax, bool(implicit), bool(little), size)
            except (struct.error, OSError):
                pix = PixelDataInfo(present=True, truncated=True)
            if not pix.present:
                pix.stray_offset = _find_pixel_tag(fh, bool(little))
    return ds, pix, tsyntax


def _find_pixel_tag(fh, little: bool, chunk: int = 8 << 20) -> int:
    """Offset of the first PixelData tag in the file (``-1``: none), for files whose header parse ended
    before it: a corrupt element elsewhere, not a missing PixelData element."""
    needle = b"\xe0\x7f\x10\x00" if little else b"\x7f\xe0\x00\x10"
    fh.seek(0)
    pos, tail = 0, b""
    while True:
        block = fh.read(chunk)
        if not block:
            return -1
        data = tail + block
        i = data.find(needle)
        if i >= 0:
            return pos - len(tail) + i
        tail = data[-3:]
        pos += len(block)


# ---------------------------------------------------------------------------------------------- metadata
@dataclass
class UltrasoundRegion:
    """One entry of ``SequenceOfUltrasoundRegions`` in pixel coordinates (``x1``, ``y1`` exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int = 0
    data_type: int = 0
    spacing_mm: tuple[float, float] | None = None  # (dx, dy) in mm when the units are cm

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass
class DicomInfo:
    """Everything the ingester needs from a header, PHI-free (identifiers are salted hashes)."""

    kind: str  # "image", "dicomdir", "non_image"
    sop_class_uid: str = ""
    sop_class_name: str = ""
    modality: str = ""
    transfer_syntax: str = ""
    transfer_syntax_name: str = ""
    photometric: str = ""
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples_per_pixel: int = 1
    bits_allocated: int = 8
    bits_stored: int = 8
    pixel_representation: int = 0
    has_pixel_data: bool = False
    manufacturer: str = ""
    model: str = ""
    laterality: str = ""  # "L", "R" or ""
    laterality_source: str = ""
    view: str = ""
    probe: str = ""
    image_type: tuple[str, ...] = ()
    regions: list[UltrasoundRegion] = field(default_factory=list)
    frame_time_ms: float | None = None
    patient_hash: str = ""
    study_hash: str = ""
    series_hash: str = ""
    sop_hash: str = ""
    accession_hash: str = ""
    patient_key_source: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_type"] = list(self.image_type)
        return d


def _text(ds, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - corrupt element
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return " ".join(str(v) for v in value).strip()
    return str(value).strip()


def _int(ds, keyword: str, default: int = 0) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except Exception:  # noqa: BLE001
        return default


def phi_strings(ds, min_length: int = 3) -> list[str]:
    """Identifying strings of a header (names and name parts, ids, dates, UIDs, institution...), longest
    first, used to scrub any free text before it is written. Values shorter than ``min_length`` (a
    StudyID of ``"1"``) are left out: they would match everywhere and identify nobody."""
    out: set[str] = set()
    for kw in _PHI_KEYWORDS:
        value = _text(ds, kw)[:256]  # a corrupt header can put megabytes into a name: identifiers are short
        if len(value) >= min_length:
            out.add(value)
        if kw in _PERSON_NAME_KEYWORDS:  # name parts identify too; words of other values (CLINIC) do not
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


_LEFT = re.compile(r"\b(left|lt|lft|l\s*breast|gauche|links)\b", re.IGNORECASE)
_RIGHT = re.compile(r"\b(right|rt|rgt|r\s*breast|droite|rechts)\b", re.IGNORECASE)


def laterality_from_text(text: str) -> str:
    """``"L"``/``"R"`` when the text names exactly one side, else ``""``."""
    left, right = bool(_LEFT.search(text)), bool(_RIGHT.search(text))
    return "L" if left and not right else "R" if right and not left else ""


def _code_meaning(ds, keyword: str) -> str:
    try:
        seq = ds.get(keyword)
        if seq:
            return str(seq[0].get("CodeMeaning", "") or "").strip()
    except Exception:  # noqa: BLE001
        pass
    return ""


def _clean_free_text(value: str, phi: Sequence[str], limit: int = 64) -> str:
    value = "".join(ch for ch in value if 32 <= ord(ch) < 127).strip()[:limit]
    lowered = value.lower()
    if contains_phi(value, phi) or any(p and p.lower() in lowered for p in phi):
        return ""  # never carry a value that contains an identifier
    return value


def _regions(ds) -> list[UltrasoundRegion]:
    out = []
    try:
        seq = ds.get("SequenceOfUltrasoundRegions") or []
    except Exception:  # noqa: BLE001
        return out
    for item in seq:
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1
        except Exception:  # noqa: BLE001 - incomplete region
            continue
        spacing = None
        try:
            ux, uy = int(item.get("PhysicalUnitsXDirection", 0)), int(item.get("PhysicalUnitsYDirection", 0))
            dx, dy = abs(float(item.get("PhysicalDeltaX", 0))), abs(float(item.get("PhysicalDeltaY", 0)))
            if ux == 3 and uy == 3 and dx > 0 and dy > 0:  # 3 = cm
                spacing = (dx * 10.0, dy * 10.0)
        except Exception:  # noqa: BLE001
            spacing = None
        out.append(UltrasoundRegion(x0, y0, x1, y1, _int(item, "RegionSpatialFormat"), _int(item, "RegionDataType"),
                                    spacing))
    return out


_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                 "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "HSV", "ARGB", "CMYK", "XYB")


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    if not uid:
        return ""
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001
        return uid
    return name if len(name) <= 96 and name.isprintable() else uid


def describe(ds, pix: PixelDataInfo, tsyntax: str, *, salt: str, phi: Sequence[str] | None = None) -> DicomInfo:
    """PHI-free description of a header read by :func:`read_header`.

    ``phi``: identifying values of the file (:func:`~busgen_monai.data.dicom_phi.identifier_values`, which
    also scans the raw bytes of a damaged header); default: those the strict parse sees. Code strings
    (UIDs, Modality, photometric, ImageType) are kept only when they are well formed, free text (view,
    probe, Manufacturer, model) only when it contains no identifying value."""
    meta = getattr(ds, "file_meta", None)
    sop_class = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    sop_class = safe_uid(sop_class)
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return DicomInfo(kind="dicomdir", sop_class_uid=DICOMDIR_SOP_CLASS, sop_class_name="Media Storage Directory")
    if phi is None:
        phi = identifier_values(ds)
    sop_name = _uid_name(sop_class)
    tsyntax = safe_uid(tsyntax)
    ts_name = _uid_name(tsyntax)
    kind = "image" if pix.present else "non_image"
    for prefix in NON_IMAGE_SOP_PREFIXES:
        if sop_class.startswith(prefix):
            kind = "non_image"
    laterality, source = "", ""
    for kw in ("ImageLaterality", "Laterality"):
        value = _text(ds, kw).upper()[:1]
        if value in ("L", "R"):
            laterality, source = value, kw
            break
    if not laterality:
        texts = [(kw, _text(ds, kw)) for kw in DESCRIPTION_KEYWORDS]
        texts.append(("AnatomicRegionSequence", _code_meaning(ds, "AnatomicRegionSequence")))
        for kw, text in texts:
            found = laterality_from_text(text) if text else ""
            if found:
                laterality, source = found, kw
                break
    view = _text(ds, "ViewName") or _code_meaning(ds, "ViewCodeSequence")
    probe = _text(ds, "TransducerData") or _text(ds, "TransducerType")
    frame_time = None
    try:
        if ds.get("FrameTime") not in (None, ""):
            frame_time = float(ds.FrameTime)
    except Exception:  # noqa: BLE001
        frame_time = None
    patient_raw = _text(ds, "PatientID")
    key_source = "PatientID"
    if patient_raw:
        issuer = _text(ds, "IssuerOfPatientID")
        patient_raw = f"{issuer}/{patient_raw}" if issuer else patient_raw
    else:
        patient_raw, key_source = _text(ds, "PatientName"), "PatientName"
    study_uid = _text(ds, "StudyInstanceUID")
    if not patient_raw:
        patient_raw, key_source = f"study:{study_uid}", "StudyInstanceUID"
    series_uid = _text(ds, "SeriesInstanceUID")
    sop_uid = _text(ds, "SOPInstanceUID") or (_text(meta, "MediaStorageSOPInstanceUID") if meta is not None else "")
    accession = _text(ds, "AccessionNumber")
    image_type = ()
    try:
        it = ds.get("ImageType")
        if it:
            image_type = tuple(t for t in (safe_token(str(v).upper()) for v in (it if not isinstance(it, str) else [it])
                                           ) if t)[:8]
    except Exception:  # noqa: BLE001
        image_type = ()
    return DicomInfo(
        kind=kind,
        sop_class_uid=sop_class,
        sop_class_name=sop_name,
        modality=safe_token(_text(ds, "Modality").upper()),
        transfer_syntax=tsyntax,
        transfer_syntax_name=ts_name,
        photometric=safe_token(_text(ds, "PhotometricInterpretation").upper(), _PHOTOMETRICS),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=_int(ds, "NumberOfFrames", 1),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        bits_allocated=_int(ds, "BitsAllocated", 8),
        bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated", 8)),
        pixel_representation=_int(ds, "PixelRepresentation"),
        has_pixel_data=pix.present and pix.keyword == "PixelData",
        # needed to resolve the device; whole identifying values only (a name part may be a device word)
        manufacturer=_clean_free_text(_text(ds, "Manufacturer"), getattr(phi, "full", phi)),
        model=_clean_free_text(_text(ds, "ManufacturerModelName"), getattr(phi, "full", phi)),
        laterality=laterality,
        laterality_source=source,
        view=_clean_free_text(view, phi),
        probe=_clean_free_text(probe, phi),
        image_type=image_type,
        regions=_regions(ds),
        frame_time_ms=frame_time,
        patient_hash=uid_hash(patient_raw, "PAT", salt),
        study_hash=uid_hash(study_uid or f"{patient_raw}/{_text(ds, 'StudyDate')}", "STU", salt),
        series_hash=uid_hash(series_uid or f"{study_uid}/series", "SER", salt),
        sop_hash=uid_hash(sop_uid, "IMG", salt) if sop_uid else "",
        accession_hash=uid_hash(accession, "ACC", salt) if accession else "",
        patient_key_source=key_source,
    )


def dicomdir_missing_files(ds, dicomdir_path: str | os.PathLike) -> list[str]:
    """Referenced file ids of a DICOMDIR that do not exist (matched case-insensitively), as paths
    relative to the DICOMDIR's folder."""
    root = Path(dicomdir_path).parent
    missing = []
    listing_cache: dict[Path, dict[str, str]] = {}

    def _resolve(parts: Sequence[str]) -> bool:
        cur = root
        for part in parts:
            if cur not in listing_cache:
                try:
                    listing_cache[cur] = {p.name.upper(): p.name for p in cur.iterdir()}
                except OSError:
                    return False
            name = listing_cache[cur].get(part.upper())
            if name is None:
                return False
            cur = cur / name
        return cur.is_file()

    for rec in ds.get("DirectoryRecordSequence", []) or []:
        try:
            ref = rec.get("ReferencedFileID")
        except Exception:  # noqa: BLE001
            continue
        if not ref:
            continue
        parts = [str(p) for p in ref] if not isinstance(ref, str) else str(ref).replace("\\", "/").split("/")
        if not _resolve(parts):
            missing.append("/".join(parts))
    return sorted(set(missing))


# ---------------------------------------------------------------------------------------------- checks
def corrupt_header_message(pix: PixelDataInfo) -> str:
    """Reject detail of a file whose header parse ended before its PixelData element."""
    return (f"the header is corrupt: a PixelData tag is at byte {pix.stray_offset} but the elements before it "
            "do not parse (a wrong length or VR); the file cannot be read safely")


def decoder_problem(tsyntax: str) -> str | None:
    """``None`` when pydicom can decode this transfer syntax here, else a message saying what to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, MPEGTransferSyntaxes

    shown_uid = safe_uid(tsyntax) or "<malformed UID>"
    uid = UID(tsyntax)
    name = _uid_name(safe_uid(tsyntax)) or shown_uid
    if tsyntax in MPEGTransferSyntaxes or name.startswith(("MPEG", "HEVC")):
        return (f"video transfer syntax {name} ({shown_uid}): pydicom cannot decode MPEG/H.264/HEVC streams; "
                "re-export the cine from the PACS as JPEG or uncompressed, or extract frames with ffmpeg")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        shown = f"{name} ({shown_uid})" if name != shown_uid else shown_uid
        return (f"unsupported transfer syntax {shown}: no pixel data decoder exists for it; "
                "re-export the study with a standard transfer syntax")
    if not decoder.is_available:
        packages = _TS_PACKAGES.get(tsyntax, "python-gdcm")
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        return (f"no decoder for {name} ({shown_uid}) is installed ({missing}); "
                f"install one: pip install {packages}")
    return None


def check_geometry(info: DicomInfo, pix: PixelDataInfo, *, max_dim: int = 8192, max_frames: int = 100_000,
                   max_pixels: int = 4096 * 4096, max_frame_bytes: int = 256 << 20) -> None:
    """Reject absurd sizes, decompression bombs, wrong NumberOfFrames and truncated pixel data before decoding.

    Everything here is read from the header and the pixel data element's framing (no pixel is decoded),
    so a bomb (a small compressed file declaring a huge image) is refused in milliseconds.

    Args:
        max_dim: largest accepted Rows / Columns.
        max_frames: largest accepted NumberOfFrames.
        max_pixels: largest accepted Rows x Columns of one frame (``too_large``).
        max_frame_bytes: largest accepted decoded size of one frame in bytes (``too_large``).
    """
    if not (1 <= info.rows <= max_dim and 1 <= info.columns <= max_dim):
        raise DicomRejectError("bad_geometry", f"Rows x Columns = {info.rows} x {info.columns} is outside "
                                               f"1..{max_dim}; the header is corrupt")
    if not 1 <= info.frames <= max_frames:
        raise DicomRejectError("bad_geometry", f"NumberOfFrames = {info.frames} is outside 1..{max_frames}")
    if info.samples_per_pixel not in (1, 3):
        raise DicomRejectError("bad_geometry", f"SamplesPerPixel = {info.samples_per_pixel}; expected 1 or 3")
    if info.bits_allocated not in (1, 8, 16, 32) or not 1 <= info.bits_stored <= info.bits_allocated:
        raise DicomRejectError("bad_geometry", f"BitsAllocated/BitsStored = {info.bits_allocated}/{info.bits_stored} "
                                               "is not a valid combination")
    pixels = info.rows * info.columns
    decoded = pixels * info.samples_per_pixel * max(1, info.bits_allocated // 8)
    if pixels > max_pixels or decoded > max_frame_bytes:
        raise DicomRejectError("too_large", f"a {info.columns} x {info.rows} frame ({pixels} pixels, {decoded} bytes "
                                            f"decoded) is over the limits max_pixels={max_pixels} / max_frame_bytes="
                                            f"{max_frame_bytes}; not decoded (raise the limits if the file is genuine)")
    if pix.truncated:
        raise DicomRejectError("truncated", "the pixel data runs past the end of the file (truncated transfer?)")
    if info.transfer_syntax in _UNCOMPRESSED and pix.length is not None:
        spp = info.samples_per_pixel
        if info.bits_allocated == 1:
            frame_bytes = info.rows * info.columns * spp / 8
        else:
            frame_bytes = info.rows * info.columns * spp * info.bits_allocated // 8
        if info.photometric == "YBR_FULL_422" and spp == 3:
            frame_bytes = frame_bytes * 2 / 3
        expected = int(np.ceil(frame_bytes * info.frames))
        shape = (f"Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames = {info.rows} x "
                 f"{info.columns} x {spp} x {info.bits_allocated}/8 x {info.frames} = {expected}")
        if pix.length < expected:
            holds = int(pix.length // frame_bytes) if frame_bytes else 0
            raise DicomRejectError(
                "bad_geometry",
                f"PixelData holds {pix.length} bytes but {shape}; NumberOfFrames or Rows/Columns are wrong "
                f"(the data holds {holds} whole frames)",
            )
        if pix.length > expected + (expected % 2):  # only the padding byte of an odd length is allowed
            holds = pix.length / frame_bytes if frame_bytes else 0
            raise DicomRejectError(
                "bad_geometry",
                f"PixelData holds {pix.length} bytes ({holds:.2f} frames) but {shape}; the header does not "
                "describe the pixel data",
            )
    elif pix.length is None and info.transfer_syntax not in _UNCOMPRESSED:
        if info.frames > 1 and pix.bot_entries and pix.bot_entries != info.frames:
            raise DicomRejectError("bad_geometry", f"NumberOfFrames = {info.frames} but the basic offset table "
                                                   f"lists {pix.bot_entries} frames")
        if pix.fragments < info.frames:
            raise DicomRejectError("bad_geometry", f"NumberOfFrames = {info.frames} but the encapsulated pixel data "
                                                   f"has only {pix.fragments} fragments")
        if info.transfer_syntax == _RLE_TS:
            # RLE: exactly one fragment per frame, each with one segment per sample and byte of a sample
            if pix.fragments != info.frames:
                raise DicomRejectError("bad_geometry", f"NumberOfFrames = {info.frames} but the RLE pixel data has "
                                                       f"{pix.fragments} fragments (one per frame); the header is "
                                                       "wrong")
            want = info.samples_per_pixel * max(1, info.bits_allocated // 8)
            if pix.rle_segments and pix.rle_segments != (want,):
                raise DicomRejectError("bad_geometry", f"the RLE frames have {list(pix.rle_segments)} segments but "
                                                       f"SamplesPerPixel x BitsAllocated/8 = {want}")
        if 0 < pix.frame_starts < info.frames:
            raise DicomRejectError("bad_geometry", f"NumberOfFrames = {info.frames} but the encapsulated pixel data "
                                                   f"holds only {pix.frame_starts} frames")
        if pix.frame_starts > info.frames:
            raise DicomRejectError("bad_geometry", f"the encapsulated pixel data holds {pix.frame_starts} frames "
                                                   f"but NumberOfFrames = {info.frames}; the header is wrong")
        size = codestream_size(pix.first_fragment)
        if size is not None and size != (info.rows, info.columns):
            raise DicomRejectError("bad_geometry", f"Rows x Columns = {info.rows} x {info.columns} but the "
                                                   f"compressed first frame is {size[0]} x {size[1]}")


# ---------------------------------------------------------------------------------------------- cropping
@dataclass
class CropSpec:
    """Crop box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) in source pixels, how it was found, the spacing in
    mm of the cropped image (``None`` when unknown) and an optional keep-mask (box-sized, bool)."""

    box: tuple[int, int, int, int]
    source: str  # "regions", "detected", "none"
    spacing_mm: tuple[float, float] | None = None
    mask: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def select_region(regions: Sequence[UltrasoundRegion], rows: int, columns: int, *, tolerance: int = 2
                  ) -> tuple[UltrasoundRegion | None, str | None]:
    """Choose the 2-D tissue region: ``RegionSpatialFormat`` 1, ``RegionDataType`` 1 preferred, then the
    largest. Returns ``(region or None, warning or None)``; a region outside the image is not used."""
    two_d = [r for r in regions if r.spatial_format == 1 and r.area > 0]
    if not two_d:
        return None, None
    tissue = [r for r in two_d if r.data_type == 1]
    best = max(tissue or two_d, key=lambda r: r.area)
    if best.x0 < -tolerance or best.y0 < -tolerance or best.x1 > columns + tolerance or best.y1 > rows + tolerance:
        return None, (f"the ultrasound region ({best.x0},{best.y0})-({best.x1},{best.y1}) lies outside the "
                      f"{columns}x{rows} image (resized export?); ignored it and detected the image region")
    clipped = UltrasoundRegion(max(0, best.x0), max(0, best.y0), min(columns, best.x1), min(rows, best.y1),
                               best.spatial_format, best.data_type, best.spacing_mm)
    if clipped.area < 16:
        return None, "the ultrasound region is empty; detected the image region instead"
    return clipped, None


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else frame.max(axis=-1)


def _convex_hull_mask(component: np.ndarray) -> np.ndarray:
    """Filled convex hull of a boolean mask (same shape)."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(component)
    h, w = component.shape
    # per-row extremes (pixel corners) are enough to define the hull
    order = np.argsort(ys, kind="stable")
    ys, xs = ys[order], xs[order]
    rows, starts = np.unique(ys, return_index=True)
    mins = np.minimum.reduceat(xs, starts)
    maxs = np.maximum.reduceat(xs, starts)
    # pixel centres of the row extremes define the hull; PIL fills the polygon including its outline
    pts = np.concatenate([np.stack([mins, rows], 1), np.stack([maxs, rows], 1)]).astype(float)
    try:
        hull = ConvexHull(pts)
        poly = [tuple(p) for p in pts[hull.vertices]]
    except (QhullError, ValueError):
        return component.copy()
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon(poly, fill=1, outline=1)
    return np.asarray(img, dtype=bool) | component


def detect_imaging_region(frame: np.ndarray, *, dark: int = 12, flat_std: float = 1.5,
                          stroke_fraction: float = 0.02, min_area_fraction: float = 0.02, min_side: int = 64
                          ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Find the ultrasound image in a screen-like frame (fallback when there is no region metadata).

    Args:
        frame: uint8 ``(H, W)`` or ``(H, W, 3)`` (the pixel-wise max of a few frames of a cine).
        dark: grey level at or below which a pixel is background.
        flat_std: local standard deviation (3x3) below which a non-dark pixel belongs to a flat panel
            (UI bars, solid text backgrounds), not to speckle.
        stroke_fraction: a connected component of the non-dark, textured mask is text/graphics unless some
            pixel of it lies deeper inside it than this fraction of the frame's short side (at least
            7 px): glyph strokes, lines, markers and even dense lines of text are a few pixels thick,
            tissue is solid.
        min_area_fraction: smallest accepted image region, as a fraction of the frame.
        min_side: frames smaller than this (thumbnails) are not searched: ``None`` is returned.

    Returns:
        ``((x0, y0, x1, y1), mask)`` with ``mask`` the box-sized convex hull of the region, or ``None``.
    """
    from scipy import ndimage

    g = _gray(np.asarray(frame)).astype(np.float32)
    h, w = g.shape
    if min(h, w) < min_side:
        return None
    # 3x3 texture: the halo of a flat band next to the image (or around glyphs) is one pixel thin, so text
    # a few pixels away from the image is not connected to it
    mean = ndimage.uniform_filter(g, 3)
    var = ndimage.uniform_filter(g * g, 3) - mean * mean
    textured = np.sqrt(np.maximum(var, 0)) >= flat_std
    content = (g > dark) & textured
    # a 3x3 opening cuts one-pixel bridges (the edge of a band, a frame line) between text and the image
    content = ndimage.binary_opening(content, structure=np.ones((3, 3), bool))
    # 1. drop components of the raw mask without a thick interior: glyphs, words, text blocks, lines,
    #    callipers, markers (strokes a few pixels wide) and small specks
    labels, n = ndimage.label(content)
    if n == 0:
        return None
    edt = ndimage.distance_transform_edt(content)
    thickness = np.zeros(n + 1)
    thickness[1:] = ndimage.maximum(edt, labels, index=np.arange(1, n + 1))
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    stroke = max(7.0, stroke_fraction * min(h, w))
    keep = (thickness >= stroke) & (areas >= max(16, int(0.0005 * h * w)))
    keep[0] = False
    content = keep[labels]
    if not content.any():
        return None
    # 2. join speckle (dark tissue between bright speckle), cut thin bridges, keep the largest region
    k = max(1, int(round(min(h, w) / 160)))
    # square structuring elements are separable: min/max filters are much faster than binary_closing
    m = content.astype(np.uint8)
    pad = 2 * k + 2
    padded = np.pad(m, pad)
    closed = ndimage.minimum_filter(ndimage.maximum_filter(padded, size=2 * k + 1), size=2 * k + 1)
    closed = closed[pad:-pad, pad:-pad]
    r = max(3, int(round(min(h, w) / 40)))
    eroded = ndimage.minimum_filter(closed, size=2 * r + 1, mode="constant", cval=0)
    opened = ndimage.maximum_filter(eroded, size=2 * r + 1, mode="constant", cval=0).astype(bool)
    labels, n = ndimage.label(opened)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] < min_area_fraction * h * w:
        return None
    component = labels == best
    component = ndimage.binary_fill_holes(component)
    hull = _convex_hull_mask(component)
    ys, xs = np.nonzero(hull)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return (x0, y0, x1, y1), hull[y0:y1, x0:x1]


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

