"""The DICOM side of the fake PACS export: data sets with fake but realistic PHI, ultrasound tags and regions,
pixel encoding in several transfer syntaxes, an Enhanced SR report and the DICOMDIR index.
Part of :mod:`busgen_monai.synthetic.pacs_export`.
"""

from __future__ import annotations

import io
import pathlib
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from busgen_monai.utils.io import atomic_write_bytes

from .device_styles import DeviceStyle


__all__: list[str] = []  # the export's internals; nothing public


@dataclass
class _Patient:
    index: int
    seed: int
    device: DeviceStyle
    pathology: str
    laterality: str
    phi: dict[str, str]
    study_date: str
    uid_key: str


def _uid(seed: int, *parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["busgen-monai-phantom-pacs", str(seed), *map(str, parts)])


# ----------------------------------------------------------------------------------------------
# DICOM datasets
# ----------------------------------------------------------------------------------------------


def _base_dataset(patient: _Patient, sop_class: str, sop_uid: str, study: dict, series: dict,
                  instance_number: int) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = patient.study_date
    ds.StudyTime = study["time"]
    ds.SeriesTime = ds.ContentTime = series["time"]
    ds.AccessionNumber = patient.phi["AccessionNumber" if study["index"] == 0 else "AccessionNumber2"]
    ds.Modality = series["modality"]
    ds.Manufacturer = patient.device.manufacturer
    ds.InstitutionName = patient.phi["InstitutionName"]
    ds.ReferringPhysicianName = patient.phi["ReferringPhysicianName"]
    ds.StationName = f"PHUS{patient.device.model}"
    ds.StudyDescription = study["description"]
    ds.SeriesDescription = series["description"]
    ds.OperatorsName = patient.phi["OperatorsName"]
    ds.ManufacturerModelName = patient.device.model
    ds.PatientName = patient.phi["PatientName"]
    ds.PatientID = patient.phi["PatientID"]
    ds.PatientBirthDate = patient.phi["PatientBirthDate"]
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.SoftwareVersions = "PhantomMed 1.0"
    ds.StudyInstanceUID = study["uid"]
    ds.SeriesInstanceUID = series["uid"]
    ds.StudyID = str(study["index"] + 1)
    ds.SeriesNumber = series["number"]
    ds.InstanceNumber = instance_number
    if study.get("procedure"):
        ds.PerformedProcedureStepDescription = study["procedure"]
    return ds


def _set_pixels(ds: Any, arr: np.ndarray, multiframe: bool) -> None:
    ds.SamplesPerPixel = 3 if arr.ndim == (4 if multiframe else 3) else 1
    ds.PhotometricInterpretation = "RGB" if ds.SamplesPerPixel == 3 else "MONOCHROME2"
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    if multiframe:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = int(arr.shape[-3 if ds.SamplesPerPixel == 3 else -2]), \
        int(arr.shape[-2 if ds.SamplesPerPixel == 3 else -1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"


def _us_tags(ds: Any, style: DeviceStyle, laterality: str, use_image_laterality: bool,
             region: tuple[int, int, int, int], spacing_cm: float) -> None:
    from pydicom.dataset import Dataset

    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    if use_image_laterality:
        ds.ImageLaterality = laterality
    else:
        ds.Laterality = laterality
    ds.TransducerData = [style.model, style.transducer_type, f"{style.frequency_mhz:g}MHZ"]
    ds.TransducerType = style.transducer_type
    ds.ProtocolName = "BREAST"
    reg = Dataset()
    reg.RegionSpatialFormat = 1
    reg.RegionDataType = 1
    reg.RegionFlags = 0
    reg.RegionLocationMinX0, reg.RegionLocationMinY0, reg.RegionLocationMaxX1, reg.RegionLocationMaxY1 = region
    reg.PhysicalUnitsXDirection = 3
    reg.PhysicalUnitsYDirection = 3
    reg.PhysicalDeltaX = float(spacing_cm)
    reg.PhysicalDeltaY = float(spacing_cm)
    reg.ReferencePixelX0 = (region[2] - region[0]) // 2
    reg.ReferencePixelY0 = 0
    reg.TransducerFrequency = int(style.frequency_mhz * 1000)
    ds.SequenceOfUltrasoundRegions = [reg]


def _encode(ds: Any, arr: np.ndarray, syntax: str) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

    if syntax == "rle":
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, np.ascontiguousarray(arr), generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if syntax == "implicit" else ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(arr).tobytes()


def _write_ds(ds: Any, path: pathlib.Path) -> None:
    from pydicom import dcmwrite

    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())


def _sr_dataset(ds: Any, patient: _Patient, birads: str) -> None:
    from pydicom.dataset import Dataset

    def code(value, scheme, meaning):
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return c

    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code("18748-4", "LN", "Diagnostic imaging report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    texts = [
        f"Patient {patient.phi['PatientName']} ({patient.phi['PatientID']}), bilateral breast ultrasound.",
        f"{'Irregular, spiculated' if patient.pathology == 'malignant' else 'Oval, circumscribed'} "
        f"hypoechoic mass, {patient.laterality} breast. BI-RADS {birads}.",
    ]
    items = []
    for t in texts:
        it = Dataset()
        it.RelationshipType = "CONTAINS"
        it.ValueType = "TEXT"
        it.ConceptNameCodeSequence = [code("121071", "DCM", "Finding")]
        it.TextValue = t
        items.append(it)
    ds.ContentSequence = items


# ----------------------------------------------------------------------------------------------
# DICOMDIR
# ----------------------------------------------------------------------------------------------


def _write_dicomdir(root: pathlib.Path, managed: list[tuple[str, pathlib.Path]], seed: int) -> None:
    """Index ``managed`` (SOP UID, path) files with a DICOMDIR at ``root``, keeping their paths.

    pydicom's :class:`~pydicom.fileset.FileSet` always lays files out as ``PTxxxxxx/STxxxxxx/...``;
    we write it to a scratch folder, then swap every Referenced File ID (36 bytes) for our own path of
    exactly the same encoded length, so no record offset changes.
    """
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    scratch = root.parent / ".dicomdir_scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    fs = FileSet()
    fs.UID = _uid(seed, "fileset")
    fs.ID = "PHANTOMPACS"
    for _, p in managed:
        fs.add(p)
    fs.write(scratch)
    stage = getattr(fs, "_stage", {}).get("t")  # pydicom's staging TemporaryDirectory
    if stage is not None and hasattr(stage, "cleanup"):
        stage.cleanup()
    data = (scratch / "DICOMDIR").read_bytes()
    ours = {uid: p for uid, p in managed}
    for inst in fs:
        old = "\\".join(pathlib.PurePath(inst.FileID).parts)
        new = "\\".join(ours[inst.SOPInstanceUID].relative_to(root).parts)
        old_b, new_b = old.encode(), new.encode()
        old_b += b" " * (len(old_b) % 2)
        new_b += b" " * (len(new_b) % 2)
        if len(old_b) != len(new_b) or data.count(old_b) != 1:
            raise RuntimeError(f"DICOMDIR patch failed for {old!r} -> {new!r}")
        data = data.replace(old_b, new_b)
    shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_bytes(root / "DICOMDIR", data)
    dcmread(root / "DICOMDIR")  # sanity: still parses
