"""What a DICOM header says, PHI-free: :func:`describe` gives a :class:`DicomInfo` (geometry, photometric,
device inputs, laterality, view, probe, ultrasound regions, salted pseudonyms of every identifier);
:func:`check_geometry` and :func:`decoder_problem` refuse what cannot be decoded (absurd sizes, truncation, a
transfer syntax without a decoder) before decoding; :func:`dicomdir_missing_files` lists what a
DICOMDIR references but the export lacks.

Part of :mod:`busgen_monai.data.dicom`. Raw identifiers never leave this module except as salted hashes."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .header import (
    _RLE_TS,
    _TS_PACKAGES,
    _UNCOMPRESSED,
    DICOMDIR_SOP_CLASS,
    NON_IMAGE_SOP_PREFIXES,
    DicomRejectError,
    PixelDataInfo,
    _int,
    _text,
    _uid_name,
    codestream_size,
    uid_hash,
)
from .phi import contains_phi, identifier_values, safe_token, safe_uid


__all__ = [
    "UltrasoundRegion",
    "DicomInfo",
    "DESCRIPTION_KEYWORDS",
    "describe",
    "dicomdir_missing_files",
    "laterality_from_text",
    "decoder_problem",
    "check_geometry",
    "corrupt_header_message",
]


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



def describe(ds, pix: PixelDataInfo, tsyntax: str, *, salt: str, phi: Sequence[str] | None = None) -> DicomInfo:
    """PHI-free description of a header read by :func:`read_header`.

    ``phi``: identifying values of the file (:func:`~busgen_monai.data.dicom.phi.identifier_values`, which
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
