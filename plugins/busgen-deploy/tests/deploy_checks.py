"""Checks shared by the busgen-deploy tests (not a test module): find the ultrasound files of a folder, train a
tiny classifier, validate the SR + SC the app wrote for a study against its sources."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

PRESET = "inference,preset_cpu_tiny"


def train_tiny_classifier(root: Path) -> Path:
    """Train the classifier bundle's CPU preset on a small phantom for 2 epochs (seconds); returns model.pt."""
    from busgen_classify.workflow import train
    from busgen_monai.data.phantom import write_dataset

    datalist = write_dataset(root / "phantom", n=96, seed=0, size=(64, 64))
    train(["preset_cpu_tiny"], datalists=[str(datalist)], output_dir=str(root / "run"), max_epochs=2)
    path = root / "run" / "models" / "model.pt"
    assert path.is_file()
    return path


def us_files(folder: Path) -> dict[str, list[Path]]:
    """Ultrasound image files per study UID, read independently of the app."""
    from busgen_monai.data.dicom import US_IMAGE_SOP_CLASSES

    by_study: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - README, DICOMDIR...
            continue
        if str(ds.get("SOPClassUID", "")) in US_IMAGE_SOP_CLASSES and ds.get("Modality") == "US":
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(p)
    return by_study


def _dciodvfy_errors(path: Path, source_uids: set[str] = frozenset()) -> list[str]:
    """dciodvfy's errors, less "illegal UID root" errors on UIDs copied from the source (a real file of the test
    set has 999.999... UIDs: results must keep the study's UIDs, right or wrong)."""
    exe = shutil.which("dciodvfy")
    if exe is None:  # the other checks (highdicom parse, references, scores) still run
        warnings.warn("dciodvfy (Debian package dicom3tools) is not installed, SR/SC not IOD-validated: "
                      "bash .ci/setup.d/orthanc.sh installs it", stacklevel=2)
        return []
    out = subprocess.run([exe, str(path)], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    return [e for e in errors if not ("Illegal root for UID" in e and any(f'"{u}"' in e for u in source_uids))]


def _text_items(ds) -> dict[str, set[str]]:
    """TEXT content items of an SR by concept code value (recursively)."""
    out: dict[str, set[str]] = {}
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            out.setdefault(item.ConceptNameCodeSequence[0].CodeValue, set()).add(str(item.TextValue))
        for k, v in _text_items(item).items():
            out.setdefault(k, set()).update(v)
    return out


def _crop_box(path: Path) -> list[int]:
    from busgen_monai.data.dicom import UltrasoundDicom

    return list(UltrasoundDicom(path).crop.box)


def check_study_outputs(out: Path, study_uid: str, us_paths: list[Path], classifier, max_frames: int = 8) -> dict:
    """Validate the SR + SC the app wrote for ``study_uid`` against its source files; returns the SR's scores."""
    import highdicom as hd

    from busgen_deploy.study import study_label
    from busgen_monai.data.dicom import read_ultrasound

    folder = out / study_label(study_uid)
    assert folder.is_dir(), f"no results for study {study_label(study_uid)}: {sorted(p.name for p in out.iterdir())}"
    sr_path, sc_path = folder / "sr.dcm", folder / "sc.dcm"
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in us_paths]
    sources = {str(h.SOPInstanceUID): p for h, p in zip(headers, us_paths)}
    src0 = headers[0]
    source_uids = {str(h.get(k, "")) for h in headers for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    for p in (sr_path, sc_path):
        assert _dciodvfy_errors(p, source_uids) == [], p

    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    for ds in (sr, pydicom.dcmread(sc_path)):
        assert ds.StudyInstanceUID == study_uid
        assert ds.PatientID == src0.PatientID and str(ds.PatientName) == str(src0.PatientName)
        assert ds.get("AccessionNumber", "") == src0.get("AccessionNumber", "")
    evidence = {item.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for item in se.ReferencedSOPSequence}
    assert evidence == set(sources), "the SR must reference exactly the study's ultrasound instances"

    # scores: one group per instance + the study group, read back through highdicom's TID 1500 parser
    ms_groups = sr.content.get_image_measurement_groups()
    assert len(ms_groups) == len(sources) + 1
    per_instance, study_score, decision = {}, None, None
    for g in ms_groups:
        (m,) = g.get_measurements()
        assert m.name.value == "111047" and m.name.scheme_designator == "DCM"
        if g.tracking_identifier == "study":
            study_score = float(m.value)
            (q,) = g.get_qualitative_evaluations()
            decision = q.value.meaning
        else:
            (img,) = m.referenced_images
            per_instance[img.referenced_sop_instance_uid] = float(m.value)
    assert set(per_instance) == set(sources)
    model = classifier.describe()
    algo = _text_items(sr)  # TID 4019 Algorithm Identification: 111001 name, 111003 version, 111002 parameters
    assert model["name"] in algo["111001"] and model["version"] in algo["111003"]
    assert f"weights sha256 {model['sha256']}" in algo["111002"]

    # the scores equal the classifier run directly on the same frames (read here, not by the app)
    for uid, path in sources.items():
        n = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
        idx = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, max_frames))})
        frames, _ = read_ultrasound(path, frames=idx, color="gray")
        expected = float(np.mean(classifier.predict(list(frames)).scores))
        assert per_instance[uid] == pytest.approx(expected, abs=2e-6), uid
    assert study_score == pytest.approx(max(per_instance.values()), abs=2e-6)
    threshold = model["threshold"]
    assert decision == ("Malignant neoplastic disease" if study_score >= threshold else "Neoplasm, benign")

    sc = pydicom.dcmread(sc_path)
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
    ref = sc.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID in sources
    key = pydicom.dcmread(sources[ref.ReferencedSOPInstanceUID], stop_before_pixels=True)
    assert sc.pixel_array.shape == (key.Rows, key.Columns, 3)
    # the SC is the key frame: unchanged outside the imaging region (bar its outline), saliency blended inside
    frame_no = int(ref.get("ReferencedFrameNumber", 1))
    full, _ = read_ultrasound(sources[ref.ReferencedSOPInstanceUID], frames=frame_no - 1, region="none")
    full = np.repeat(full[..., None], 3, axis=-1) if full.ndim == 2 else full
    x0, y0, x1, y1 = [int(v) for v in _crop_box(sources[ref.ReferencedSOPInstanceUID])]
    outside = np.ones(full.shape[:2], bool)
    outside[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = False
    assert np.array_equal(sc.pixel_array[outside], full[outside])
    summary = json.loads((folder / "result.json").read_text())
    inside = (slice(y0 + 1, y1 - 1), slice(x0 + 1, x1 - 1))
    empty = "map of class" in sc.DerivationDescription and "is empty" in sc.DerivationDescription
    if "saliency_note" in summary:  # the app's summary (the PACS test has only the SR and SC)
        assert bool(summary["saliency_note"]) == empty
    if not empty:
        assert np.abs(sc.pixel_array[inside].astype(int) - full[inside].astype(int)).max() > 0
    assert summary["score"] == pytest.approx(study_score, abs=1e-6)
    text = json.dumps(summary)
    assert study_uid not in text and not any(uid in text for uid in sources)  # the summary is PHI-free
    for value in (src0.get("PatientID", ""), str(src0.get("PatientName", ""))):
        assert len(str(value)) < 3 or str(value) not in text
    return {"study": study_score, "instances": per_instance}


def non_us_copy(src: Path, dst: Path) -> str:
    """A CT-labelled copy of an ultrasound file in a study of its own; returns the new study UID."""
    ds = pydicom.dcmread(src)
    ds.Modality = "CT"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dst, enforce_file_format=True)
    return str(ds.StudyInstanceUID)
