"""Group a folder of DICOM files into studies and read the ultrasound instances of each, frame by frame.

This is the reading half of the app (no MONAI Deploy import): the project's ultrasound reader
(:class:`busgen_monai.data.dicom.UltrasoundDicom`: every transfer syntax with an installed decoder, palette
and YBR colour, 8-bit conversion, crop to the imaging region from ``SequenceOfUltrasoundRegions`` or by
detection) turns each ultrasound instance into cropped grey frames.

Rules, per study (``StudyInstanceUID``):

- Ultrasound image instances (``Modality`` US and an ultrasound image SOP class) are read; a cine
  contributes up to ``max_frames`` frames spread evenly over the clip.
- Objects that are not source images (structured reports, presentation states, secondary captures such
  as the app's own earlier results) are *skipped*, listed in the study's ``skipped`` with their SOP class.
- One instance that cannot be read (corrupt pixel data, missing decoder...) is *rejected* with the
  reader's reason code; the rest of the study goes on.
- A study with no readable ultrasound instance raises :class:`StudyError` (a DICOM-level message naming
  the study, what it holds and why nothing could be used); the app writes nothing for it.

Unlike ingestion this keeps the study's identifiers (the results go back to the same PACS), but no
identifier is written to logs or summaries: messages name files by ``FILE-`` + a hash of their path in the
input folder (exports name folders after patients) and studies by ``ST-`` + a hash of their UID.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busgen_monai.data.dicom import (
    SECONDARY_CAPTURE_SOP_CLASSES,
    US_IMAGE_SOP_CLASSES,
    DicomRejectError,
    UltrasoundDicom,
    sniff_dicom,
)

__all__ = ["StudyError", "UltrasoundInstance", "StudyInput", "find_studies", "read_study", "study_label"]


class StudyError(RuntimeError):
    """A study the app cannot report on. ``code`` is a short stable reason (``no_ultrasound``,
    ``no_readable_instance``), the message says what the study holds and what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def study_label(study_uid: str) -> str:
    """A short non-identifying label of a study for logs and file names (``ST-`` + 10 hex of its UID's sha256)."""
    return "ST-" + hashlib.sha256(study_uid.encode()).hexdigest()[:10]


@dataclass
class UltrasoundInstance:
    """One ultrasound image instance read for inference.

    Attributes:
        path: the file.
        dataset: its header (pydicom ``Dataset`` without pixel data), used as evidence by the SR/SC writers.
        frames: cropped grey frames ``(T, H, W)`` uint8, ``T <= max_frames``.
        frame_indices: 0-based indices of ``frames`` in the instance.
        n_frames: frames in the instance.
        crop_box: ``[x0, y0, x1, y1]`` (x1/y1 exclusive) of the crop in source pixels.
        crop_source: ``regions`` (SequenceOfUltrasoundRegions), ``detected`` or ``none``.
    """

    path: Path
    dataset: object
    frames: np.ndarray
    frame_indices: list[int]
    n_frames: int
    crop_box: list[int]
    crop_source: str

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    def full_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` of the instance, converted to 8 bits but not cropped: ``(H, W)`` or ``(H, W, 3)``."""
        us = UltrasoundDicom(self.path, region="none")
        return next(iter(us.decode([int(index)])))[1]


@dataclass
class StudyInput:
    """What the app knows about one study before inference."""

    study_uid: str
    instances: list[UltrasoundInstance] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"file", "sop_class", "reason", "detail"}
    skipped: list[dict] = field(default_factory=list)  # {"file", "sop_class", "kind"}

    @property
    def label(self) -> str:
        return study_label(self.study_uid)


def _iter_files(folder: Path) -> Iterable[Path]:
    if folder.is_file():
        yield folder
        return
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def find_studies(folder: str | os.PathLike) -> tuple[dict[str, list[tuple[Path, object]]], list[dict]]:
    """Headers of every DICOM file under ``folder`` grouped by ``StudyInstanceUID``.

    Returns ``(studies, unreadable)``: ``studies`` maps a study UID to ``[(path, header), ...]`` (sorted by
    path); ``unreadable`` lists files that are DICOM but whose header cannot be read, or that carry no
    StudyInstanceUID (``{"file", "reason", "detail"}``). Non-DICOM files (README, DICOMDIR index) are ignored.
    """
    import pydicom

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    studies: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    unreadable: list[dict] = []
    for path in _iter_files(folder):
        rel = str(path.relative_to(folder)) if path != folder else path.name
        rel = "FILE-" + hashlib.sha256(rel.encode()).hexdigest()[:10]
        kind = sniff_dicom(path)
        if kind is None:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=kind == "dicom-raw")
        except Exception as err:  # noqa: BLE001 - any parse failure of a damaged file
            unreadable.append({"file": rel, "reason": "unreadable", "detail": f"header: {type(err).__name__}"})
            continue
        meta = getattr(ds, "file_meta", None)
        sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
        if sop_class == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds:  # DICOMDIR: a media index
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "")
        if not uid:
            unreadable.append({"file": rel, "reason": "no_study_uid", "detail": "no StudyInstanceUID"})
            continue
        studies[uid].append((path, ds))
    return dict(studies), unreadable


def _int(ds, keyword: str) -> int:
    try:
        return int(ds.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return 0


def _sample(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def read_study(study_uid: str, members: Sequence[tuple[Path, object]], *, root: str | os.PathLike | None = None,
               max_frames: int = 8, modalities: Sequence[str] = ("US",)) -> StudyInput:
    """Read the ultrasound instances of one study (see the module docstring for the rules).

    Args:
        study_uid: the study.
        members: ``[(path, header), ...]`` from :func:`find_studies`.
        root: folder the file names in messages are relative to.
        max_frames: frames read per instance (spread evenly over a cine).
        modalities: accepted ``Modality`` values.

    Raises:
        StudyError: the study holds no readable ultrasound image instance.
    """
    study = StudyInput(study_uid)
    root = Path(root) if root is not None else None
    modalities_seen: Counter = Counter()
    for path, ds in members:
        rel = str(path.relative_to(root)) if root is not None and path != root else path.name
        rel = "FILE-" + hashlib.sha256(rel.encode()).hexdigest()[:10]
        sop_class = str(ds.get("SOPClassUID", ""))
        modality = str(ds.get("Modality", "") or "").upper()
        modalities_seen[modality or "(none)"] += 1
        if sop_class in SECONDARY_CAPTURE_SOP_CLASSES or "PixelData" not in ds and sop_class not in US_IMAGE_SOP_CLASSES:
            kind = "secondary capture" if sop_class in SECONDARY_CAPTURE_SOP_CLASSES else "non-image object"
            study.skipped.append({"file": rel, "sop_class": sop_class, "kind": kind})
            continue
        if modality not in modalities or sop_class not in US_IMAGE_SOP_CLASSES:
            study.skipped.append({"file": rel, "sop_class": sop_class, "kind": f"not ultrasound (Modality {modality or 'missing'})"})
            continue
        try:
            us = UltrasoundDicom(path, color="gray")
            idx = _sample(us.n_frames, max_frames)
            frames = np.stack([f for _, f in us.frames(indices=idx)])
            crop = us.crop
        except DicomRejectError as err:
            study.rejected.append({"file": rel, "sop_class": sop_class, "reason": err.reason, "detail": str(err)})
            continue
        except Exception as err:  # noqa: BLE001 - one bad instance never stops the study
            study.rejected.append({"file": rel, "sop_class": sop_class, "reason": "decode_error",
                                   "detail": type(err).__name__})
            continue
        if frames.ndim != 3 or min(frames.shape[1:]) < 8:
            study.rejected.append({"file": rel, "sop_class": sop_class, "reason": "too_small",
                                   "detail": f"cropped frame {tuple(frames.shape[1:])} is too small"})
            continue
        study.instances.append(UltrasoundInstance(path, ds, frames, idx, us.n_frames, list(crop.box), crop.source))
    def order(inst: UltrasoundInstance):
        ds = inst.dataset
        return (_int(ds, "SeriesNumber"), str(ds.get("SeriesInstanceUID", "")), _int(ds, "InstanceNumber"),
                str(ds.SOPInstanceUID))

    study.instances.sort(key=order)  # stable order whatever the file names (a PACS retrieval names by position)
    if not study.instances:
        seen = ", ".join(f"{m} x{n}" for m, n in sorted(modalities_seen.items()))
        if study.rejected:
            reasons = ", ".join(sorted({r["reason"] for r in study.rejected}))
            raise StudyError("no_readable_instance",
                             f"study {study.label}: none of its {len(study.rejected)} ultrasound image instance(s) "
                             f"could be read ({reasons}); nothing was written for it. Check the instances listed "
                             "in the rejects (decoder packages, truncated transfers) and send the study again.")
        raise StudyError("no_ultrasound",
                         f"study {study.label} holds no ultrasound image instance (Modality US with an Ultrasound "
                         f"Image Storage SOP class); it holds: {seen or 'nothing'}. Nothing was written for it: "
                         "route only breast-ultrasound studies to this app.")
    return study
