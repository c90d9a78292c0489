"""DICOM results of one study, written with highdicom: a TID 1500 measurement report and a saliency Secondary Capture.

:func:`build_sr` writes a Comprehensive 3D SR whose content is TID 1500 (Imaging Measurement Report):

- one measurement group per ultrasound instance (tracking identifier ``instance <n>``), with the
  instance's malignancy probability (``DCM 111047 "Probability of cancer"``, unit UCUM ``1``) referencing
  the instance and the frames scored (``SourceImageForMeasurement``), and
- one study-level group (tracking identifier ``study``) with the study score (the highest instance score)
  and the operating-point decision as a qualitative evaluation (``SCT 363346000`` malignant /
  ``SCT 3898006`` benign neoplasm) under the concept ``99BUSGEN "Malignancy decision at operating point"``
  (local coding scheme: DICOM has no code for a model's thresholded decision);
- every group names the algorithm (TID 4019 Algorithm Identification: the bundle name, version and the
  parameters ``weights sha256``, ``threshold``, ``threshold source``, ``bundle configs``), and the observer
  is the app as a device.

:func:`build_sc` writes a Secondary Capture (RGB) of the highest-scoring frame with the Grad-CAM map blended
over the imaging region: ``ImageType DERIVED\\SECONDARY``, ``BurnedInAnnotation YES``, the source image in
``SourceImageSequence`` and ``DerivationDescription``/``ImageComments`` saying that it is a research
saliency map, not for diagnosis.

Both keep the patient and study of their source (highdicom copies the Patient/Study modules from the
evidence / reference dataset) and get deterministic UIDs (the same model on the same study gives the same
UIDs, so a re-run replaces rather than duplicates results in a PACS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["InstanceResult", "StudyResult", "build_sr", "build_sc", "overlay_saliency", "deterministic_uid",
           "NOT_FOR_DIAGNOSIS", "MANUFACTURER"]

MANUFACTURER = "busgen-monai"
NOT_FOR_DIAGNOSIS = ("RESEARCH SALIENCY MAP (Grad-CAM) OF AN AI MODEL - NOT FOR DIAGNOSTIC USE, "
                     "NOT A MEDICAL DEVICE")
_SERIES_NUMBER_SR = 9901
_SERIES_NUMBER_SC = 9902


@dataclass
class InstanceResult:
    """Scores of one source instance. ``frame_indices`` are 0-based; ``frame_scores`` align with them."""

    dataset: object  # pydicom Dataset (header of the source)
    frame_indices: list[int]
    frame_scores: list[float]
    n_frames: int
    detections: list = field(default_factory=list)  # [([x0, y0, x1, y1] source pixels, score)] on detection_frame
    detection_frame: int | None = None  # 0-based frame the detector ran on

    @property
    def score(self) -> float:
        return float(np.mean(self.frame_scores))


@dataclass
class StudyResult:
    """What the app concluded for a study."""

    study_uid: str
    instances: list[InstanceResult]
    model: Mapping  # BundleClassifier.describe()
    saliency_note: str = ""  # set when the Grad-CAM map is empty (no region raises the score)
    detector: Mapping | None = None  # BundleDetector.describe() when the detector ran

    @property
    def score(self) -> float:
        return max(r.score for r in self.instances)

    @property
    def decision(self) -> str:
        return "malignant" if self.score >= float(self.model["threshold"]) else "benign"

    @property
    def key(self) -> tuple[int, int]:
        """``(instance position, frame index)`` of the highest-scoring frame (shown in the SC)."""
        best = (-1.0, 0, 0)
        for i, r in enumerate(self.instances):
            for f, s in zip(r.frame_indices, r.frame_scores):
                if s > best[0]:
                    best = (s, i, f)
        return best[1], best[2]


def deterministic_uid(*parts: str) -> str:
    """A ``2.25.`` UID (PS3.5 B.2: a 128-bit integer) from the sha256 of ``parts``: same inputs, same UID."""
    import hashlib

    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _algorithm(model: Mapping):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(
        name=str(model["name"])[:64],
        version=str(model["version"])[:64],
        parameters=[
            f"weights sha256 {model['sha256']}",
            f"threshold {float(model['threshold']):.6g}",
            f"threshold source {model['threshold_source']}"[:1024],
            f"bundle {model['bundle']} configs {model['configs']}"[:1024],
        ],
    )


_CHARSET_FIXES = {"ISO-IR 100": "ISO_IR 100", "ISO-IR 192": "ISO_IR 192", "UTF-8": "ISO_IR 192", "UTF8": "ISO_IR 192"}


def evidence_dataset(ds):
    """A copy of a source header fit to be copied into a new object: a misspelt ``SpecificCharacterSet`` (seen
    in real exports, e.g. ``ISO-IR 100``) is corrected, an unknown one replaced by UTF-8 (pydicom has already
    decoded the text)."""
    import copy

    from highdicom.valuerep import SpecificCharacterSetValues

    out = copy.deepcopy(ds)
    values = out.get("SpecificCharacterSet")
    if values:
        vals = [values] if isinstance(values, str) else list(values)
        fixed = [_CHARSET_FIXES.get(str(v).strip().upper(), str(v).strip()) for v in vals]
        known = {m.value for m in SpecificCharacterSetValues}
        if any(v not in known for v in fixed):
            fixed = ["ISO_IR 192"]
        out.SpecificCharacterSet = fixed[0] if len(fixed) == 1 else fixed
    return out


def _frames(ds, indices: Sequence[int]) -> list[int] | None:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return [int(i) + 1 for i in indices] if n > 1 else None


def build_sr(result: StudyResult, *, app_version: str):
    """The TID 1500 Comprehensive 3D SR of ``result`` (a ``highdicom.sr.Comprehensive3DSR``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = result.model
    algorithm = _algorithm(model)
    evidence = [evidence_dataset(r.dataset) for r in result.instances]
    score_name = hd.sr.CodedConcept(value="111047", scheme_designator="DCM", meaning="Probability of cancer")
    unit = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    decision_name = hd.sr.CodedConcept(value="MALIGNANCY-DECISION", scheme_designator="99BUSGEN",
                                       meaning="Malignancy decision at operating point")
    malignant = hd.sr.CodedConcept(value="363346000", scheme_designator="SCT", meaning="Malignant neoplastic disease")
    benign = hd.sr.CodedConcept(value="3898006", scheme_designator="SCT", meaning="Neoplasm, benign")
    key = f"{model['sha256']}|{result.study_uid}|" + "|".join(sorted(str(r.dataset.SOPInstanceUID) for r in result.instances))

    groups = []
    for n, r in enumerate(result.instances, 1):
        ds = r.dataset
        src = hd.sr.SourceImageForMeasurement(
            referenced_sop_class_uid=str(ds.SOPClassUID), referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            referenced_frame_numbers=_frames(ds, r.frame_indices))
        meas = hd.sr.Measurement(name=score_name, value=round(r.score, 6), unit=unit, algorithm_id=algorithm,
                                 referenced_images=[src])
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=deterministic_uid(key, "instance", n),
                                                         identifier=f"instance {n}"),
            algorithm_id=algorithm, measurements=[meas],
            source_images=[hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                                _frames(ds, r.frame_indices))]))
    if result.detector is not None:
        groups += _detection_groups(result, key)
    study_sources = [hd.sr.SourceImageForMeasurement(str(r.dataset.SOPClassUID), str(r.dataset.SOPInstanceUID))
                     for r in result.instances]
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=deterministic_uid(key, "study"), identifier="study"),
        algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=score_name, value=round(result.score, 6), unit=unit,
                                        algorithm_id=algorithm, referenced_images=study_sources)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            decision_name, malignant if result.decision == "malignant" else benign)],
    ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=deterministic_uid("busgen-deploy", app_version, model["sha256"]),
            name=f"busgen-deploy {app_version}"[:64], manufacturer_name=MANUFACTURER,
            model_name=str(model["name"])[:64]))
    procedure = hd.sr.CodedConcept(value="47079000", scheme_designator="SCT", meaning="Ultrasonography of breast")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure, imaging_measurements=groups,
        referenced_images=evidence)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report,
        series_instance_uid=deterministic_uid(key, "sr-series"), series_number=_SERIES_NUMBER_SR,
        sop_instance_uid=deterministic_uid(key, "sr"), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False,
    )
    sr.SeriesDescription = "AI lesion malignancy score (research, not for diagnosis)"
    return sr


def _detection_groups(result: StudyResult, key: str) -> list:
    """TID 1410 planar ROI groups, one per detected box: the rectangle as a closed POLYLINE in the source frame's
    pixel coordinates (column, row), its detection score, finding type SCT 4147007 "Mass"."""
    import highdicom as hd

    det = result.detector
    algorithm = hd.sr.AlgorithmIdentification(
        name=str(det["name"])[:64], version=str(det["version"])[:64],
        parameters=[f"weights sha256 {det['sha256']}", f"score threshold {float(det['score_threshold']):.6g}",
                    f"bundle {det['bundle']} configs {det['configs']}"[:1024]])
    score_name = hd.sr.CodedConcept(value="DETECTION-SCORE", scheme_designator="99BUSGEN",
                                    meaning="Lesion detection confidence")
    unit = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    mass = hd.sr.CodedConcept(value="4147007", scheme_designator="SCT", meaning="Mass")
    groups = []
    for n, r in enumerate(result.instances, 1):
        ds = r.dataset
        for k, (box, score) in enumerate(r.detections, 1):
            x0, y0, x1, y1 = box
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32),
                source_image=hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=str(ds.SOPClassUID), referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                    referenced_frame_numbers=_frames(ds, [r.detection_frame or 0])))
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=deterministic_uid(key, "box", n, k),
                                                             identifier=f"instance {n} lesion {k}"),
                referenced_region=region, finding_type=mass, algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(name=score_name, value=round(float(score), 6), unit=unit,
                                                algorithm_id=algorithm)]))
    return groups


def overlay_saliency(frame: np.ndarray, cam: np.ndarray, box: Sequence[int], alpha: float = 0.4) -> np.ndarray:
    """RGB frame with ``cam`` (``(h, w)`` in [0, 1], the size of ``box``) blended (jet) inside ``box`` and the box
    outlined. ``frame`` is the full converted frame ``(H, W)`` or ``(H, W, 3)`` uint8."""
    from matplotlib import colormaps

    rgb = np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame.copy()
    rgb = rgb.astype(np.float32)
    x0, y0, x1, y1 = [int(v) for v in box]
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255.0
    region = rgb[y0:y1, x0:x1]
    weight = alpha * np.clip(cam, 0, 1)[..., None] ** 0.5  # faint where the map is low
    rgb[y0:y1, x0:x1] = (1 - weight) * region + weight * heat[: region.shape[0], : region.shape[1]]
    out = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    yellow = np.array([255, 255, 0], np.uint8)
    out[y0, x0:x1] = yellow
    out[max(y1 - 1, y0), x0:x1] = yellow
    out[y0:y1, x0] = yellow
    out[y0:y1, max(x1 - 1, x0)] = yellow
    return out


def build_sc(result: StudyResult, image: np.ndarray, *, app_version: str):
    """The Secondary Capture of the saliency overlay ``image`` (``(H, W, 3)`` uint8) of the key frame."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    pos, frame = result.key
    src = result.instances[pos]
    ds = evidence_dataset(src.dataset)
    key = f"{result.model['sha256']}|{result.study_uid}|{ds.SOPInstanceUID}|{frame}"
    orientation = tuple(ds.get("PatientOrientation", []) or []) or ("A", "F")
    laterality = str(ds.get("Laterality", "") or ds.get("ImageLaterality", "") or "").upper()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ds, pixel_array=np.ascontiguousarray(image), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=deterministic_uid(key, "sc-series"),
        series_number=_SERIES_NUMBER_SC, sop_instance_uid=deterministic_uid(key, "sc"), instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=orientation[:2],
        laterality=laterality if laterality in ("L", "R") else None,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    if "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C in General Series (paired body part): present, unknown
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = ds.get("RecognizableVisualFeatures", "NO") or "NO"
    sc.SeriesDescription = "AI saliency map (research, not for diagnosis)"
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    sc.DerivationDescription = (f"Grad-CAM of {result.model['name']} {result.model['version']} "
                                f"(weights sha256 {str(result.model['sha256'])[:16]}) on frame {frame + 1}; "
                                f"score {src.score:.3f}; {result.saliency_note + '; ' if result.saliency_note else ''}"
                                f"{NOT_FOR_DIAGNOSIS}")[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        ref.ReferencedFrameNumber = frame + 1
    sc.SourceImageSequence = DicomSequence([ref])
    if "LossyImageCompression" not in sc:
        sc.LossyImageCompression = "00"
    return sc
