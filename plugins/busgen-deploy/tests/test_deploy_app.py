"""busgen-deploy: the MONAI Deploy app on the phantom PACS export and on every real DICOM file.

A tiny classifier is trained on the phantom in a fixture (seconds, CPU preset); nothing is committed.
Outputs are validated with dciodvfy (dicom3tools, installed by .ci/setup.d/orthanc.sh) and re-read with
highdicom; the SR's scores are checked against the classifier run directly on the referenced frames.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from busgen_monai.plugins import discover_plugins

PRESET = "inference,presets/cpu_tiny"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from busgen_classify.workflow import train
    from busgen_monai.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("clf")
    datalist = write_dataset(root / "phantom", n=96, seed=0, size=(64, 64))
    train(["presets/cpu_tiny"], datalists=[str(datalist)], output_dir=str(root / "run"), max_epochs=2)
    path = root / "run" / "models" / "model.pt"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def classifier(model_path):
    from busgen_deploy.model import BundleClassifier, ModelConfig

    return BundleClassifier(ModelConfig(configs=PRESET, model_path=str(model_path)))


@pytest.fixture(scope="module")
def pacs_export(tmp_path_factory) -> Path:
    from busgen_monai.data.pacs_export import write_pacs_export

    return write_pacs_export(tmp_path_factory.mktemp("pacs") / "pacs", n_patients=4, seed=0)


@pytest.fixture(scope="module")
def phantom_run(pacs_export, classifier, tmp_path_factory) -> dict:
    from busgen_deploy.app import run_app

    out = tmp_path_factory.mktemp("out")
    report = run_app(pacs_export, out, classifier.config, classifier=classifier, max_frames=8)
    return {"out": out, "report": report}


def _us_files(folder: Path) -> dict[str, list[Path]]:
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
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: bash .ci/setup.d/orthanc.sh installs it")
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
    assert algo["111001"] == {model["name"]} and algo["111003"] == {model["version"]}
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
    summary = json.loads((folder / "result.json").read_text())
    assert summary["score"] == pytest.approx(study_score, abs=1e-6)
    text = json.dumps(summary)
    assert study_uid not in text and not any(uid in text for uid in sources)  # the summary is PHI-free
    for value in (src0.get("PatientID", ""), str(src0.get("PatientName", ""))):
        assert len(str(value)) < 3 or str(value) not in text
    return {"study": study_score, "instances": per_instance}


# ------------------------------------------------------------------------------------------ plugin
def test_plugin_registered_and_light():
    reg = discover_plugins()
    assert "deploy" in reg, f"plugin not registered; errors: {reg.errors}"
    cmds = reg.commands()
    for name in ("deploy-run", "deploy-pacs", "pacs-ingest"):
        assert name in cmds and cmds[name][0] == "deploy"
    code = ("import sys, busgen_deploy.plugin; "
            "print(sorted(m for m in ('torch', 'monai', 'holoscan', 'highdicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for role in reg["deploy"].components:
        assert reg.component("deploy", role) is not None


# ------------------------------------------------------------------------------------------ app
def test_app_on_phantom_pacs_export(phantom_run, pacs_export, classifier):
    out, report = phantom_run["out"], phantom_run["report"]
    us = _us_files(pacs_export)
    assert len(us) >= 3
    assert len(report["written"]) == len(us)
    for uid, paths in us.items():
        check_study_outputs(out, uid, paths, classifier)
    assert report["failed"] == [] and not (out / "errors.json").exists()
    assert not list(out.glob(".tmp-*"))
    # the export's secondary capture is skipped, not scored
    skipped = [s for d in out.glob("ST-*") for s in json.loads((d / "result.json").read_text())["skipped"]]
    assert {"kind": "secondary capture"} in skipped


def test_app_on_real_dicom(dicom_dir, classifier, tmp_path):
    from busgen_deploy.app import run_app

    report = run_app(dicom_dir, tmp_path / "out", classifier.config, classifier=classifier)
    us = _us_files(dicom_dir)
    n_files = sum(len(v) for v in us.values())
    assert n_files == len([p for p in dicom_dir.iterdir() if p.suffix == ".dcm"])  # every real file is US
    assert report["failed"] == [] and len(report["written"]) == len(us)
    for uid, paths in us.items():
        check_study_outputs(tmp_path / "out", uid, paths, classifier)


def _truncated_copy(src: Path, dst: Path, new_uid: str) -> None:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    ds.save_as(dst, enforce_file_format=True)
    data = dst.read_bytes()
    dst.write_bytes(data[: len(data) - len(ds.PixelData) // 2])  # half of the pixel data is missing


def _non_us_copy(src: Path, dst: Path) -> str:
    """A CT-labelled copy of an ultrasound file in a study of its own; returns the new study UID."""
    ds = pydicom.dcmread(src)
    ds.Modality = "CT"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dst, enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def test_bad_instance_and_non_us_study(pacs_export, classifier, tmp_path):
    """One truncated instance is rejected and the study still gets its results; a study with no ultrasound
    instance gets a clear DICOM-level error and nothing is written for it; the run goes on."""
    from busgen_deploy.app import run_app
    from busgen_deploy.study import study_label

    uid, paths = max(_us_files(pacs_export).items(), key=lambda kv: len(kv[1]))
    src = tmp_path / "in"
    src.mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, src / f"good{i}.dcm")
    _truncated_copy(paths[0], src / "bad.dcm", pydicom.uid.generate_uid())
    ct_study = _non_us_copy(paths[0], src / "ct.dcm")
    out = tmp_path / "out"
    report = run_app(src, out, classifier.config, classifier=classifier)
    assert len(report["written"]) == 1 and [f["code"] for f in report["failed"]] == ["no_ultrasound"]
    errors = json.loads((out / "errors.json").read_text())
    assert [(e["study"], e["code"]) for e in errors] == [(study_label(ct_study), "no_ultrasound")]
    assert "holds no ultrasound image instance" in errors[0]["message"] and "CT x1" in errors[0]["message"]
    assert not (out / study_label(ct_study)).exists() and not list(out.glob(".tmp-*"))
    check_study_outputs(tmp_path / "out", uid, [src / f"good{i}.dcm" for i in range(len(paths))], classifier)
    summary = json.loads(next((tmp_path / "out").glob("ST-*/result.json")).read_text())
    assert len(summary["rejected"]) == 1 and summary["rejected"][0]["reason"] in ("truncated", "decode_error")


def test_unreadable_study_writes_nothing_and_fails_the_run(pacs_export, model_path, tmp_path):
    from busgen_deploy.app import main

    _, paths = next(iter(_us_files(pacs_export).items()))
    src = tmp_path / "in"
    src.mkdir()
    _truncated_copy(paths[0], src / "only.dcm", pydicom.uid.generate_uid())
    # the bundle folder way of giving the model: configs/ + models/model.pt + deploy.json (as a MAP ships it)
    from busgen_monai.bundle_run import resolve_bundle

    bundle = tmp_path / "model"
    shutil.copytree(resolve_bundle("bus_classifier") / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    shutil.copy(model_path, bundle / "models" / "model.pt")
    (bundle / "deploy.json").write_text(json.dumps({"configs": PRESET, "threshold": 0.4,
                                                    "threshold_source": "test operating point"}))
    out = tmp_path / "out"
    assert main(["-i", str(src), "-o", str(out), "-m", str(bundle)]) == 2
    errors = json.loads((out / "errors.json").read_text())
    assert len(errors) == 1 and errors[0]["code"] == "no_readable_instance"
    assert "could be read" in errors[0]["message"] and "nothing was written" in errors[0]["message"]
    assert not list(out.glob("ST-*")) and not list(out.glob(".tmp-*"))
    # the same folder with a readable instance added: exit 0, the error entry is cleared
    shutil.copy(paths[0], src / "good.dcm")
    assert main(["-i", str(src), "-o", str(out), "-m", str(bundle)]) == 0
    assert json.loads((out / "errors.json").read_text()) == []
    summary = json.loads(next(out.glob("ST-*/result.json")).read_text())
    assert summary["model"]["threshold"] == 0.4 and summary["model"]["threshold_source"] == "test operating point"
    assert summary["decision"] == ("malignant" if summary["score"] >= 0.4 else "benign")
