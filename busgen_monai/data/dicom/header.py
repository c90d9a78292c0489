"""Read a DICOM header without its pixels: recognise DICOM by content (:func:`sniff_dicom`), read the header
and locate the pixel data element without loading it (:func:`read_header`, :class:`PixelDataInfo`). Also the
SOP-class tables, the reject error (:class:`DicomRejectError`), safe element readers and the salted pseudonyms
(:func:`uid_hash`) every other part uses.

Part of :mod:`busgen_monai.data.dicom` (see its docstring for the whole reader)."""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from dataclasses import dataclass


__all__ = [
    "DicomRejectError",
    "PixelDataInfo",
    "US_IMAGE_SOP_CLASSES",
    "US_VOLUME_SOP_CLASSES",
    "SECONDARY_CAPTURE_SOP_CLASSES",
    "DICOMDIR_SOP_CLASS",
    "NON_IMAGE_SOP_PREFIXES",
    "sniff_dicom",
    "read_header",
    "codestream_size",
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


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    if not uid:
        return ""
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001
        return uid
    return name if len(name) <= 96 and name.isprintable() else uid
