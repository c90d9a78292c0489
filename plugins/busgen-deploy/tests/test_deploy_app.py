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

from deploy_checks import PRESET, check_study_outputs, non_us_copy, train_tiny_classifier, us_files

from busgen_monai.plugins import discover_plugins


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return train_tiny_classifier(tmp_path_factory.mktemp("clf"))


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
    us = us_files(pacs_export)
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
    us = us_files(dicom_dir)
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


def test_bad_instance_and_non_us_study(pacs_export, classifier, tmp_path):
    """One truncated instance is rejected and the study still gets its results; a study with no ultrasound
    instance gets a clear DICOM-level error and nothing is written for it; the run goes on."""
    from busgen_deploy.app import run_app
    from busgen_deploy.study import study_label

    uid, paths = max(us_files(pacs_export).items(), key=lambda kv: len(kv[1]))
    src = tmp_path / "in"
    src.mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, src / f"good{i}.dcm")
    _truncated_copy(paths[0], src / "bad.dcm", pydicom.uid.generate_uid())
    ct_study = non_us_copy(paths[0], src / "ct.dcm")
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

    _, paths = next(iter(us_files(pacs_export).items()))
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


def test_detector_boxes_as_sr_spatial_coordinates(pacs_export, classifier, tmp_path):
    """With the optional detector (bus_detector, trained here for 2 epochs), each instance's key frame gets boxes,
    written into the SR as closed POLYLINE rectangles in source pixels that reference the source frame."""
    import highdicom as hd

    from busgen_deploy.app import run_app
    from busgen_deploy.detector import BundleDetector, DetectorConfig
    from busgen_deploy.study import study_label
    from busgen_detect.workflow import train
    from busgen_monai.data.dicom import UltrasoundDicom, read_ultrasound
    from busgen_monai.data.phantom import write_dataset

    datalist = write_dataset(tmp_path / "phantom", n=64, seed=0, size=(64, 64))
    train(["preset_cpu_tiny"], datalists=[str(datalist)], output_dir=str(tmp_path / "det"), max_epochs=2)
    detector = BundleDetector(DetectorConfig(model_path=str(tmp_path / "det" / "models" / "model.pt"),
                                             configs="train,preset_cpu_tiny", score_threshold=0.05, max_boxes=3))
    uid, paths = max(us_files(pacs_export).items(), key=lambda kv: len(kv[1]))
    src = tmp_path / "in"
    src.mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, src / f"{i}.dcm")
    out = tmp_path / "out"
    report = run_app(src, out, classifier.config, classifier=classifier, detector=detector)
    assert report["failed"] == [] and len(report["written"]) == 1
    check_study_outputs(out, uid, sorted(src.glob("*.dcm")), classifier)  # dciodvfy + classifier checks still hold
    sr = hd.sr.srread(out / study_label(uid) / "sr.dcm")
    summary = json.loads((out / study_label(uid) / "result.json").read_text())
    assert summary["detector"]["sha256"] == detector.model_sha256
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in src.glob("*.dcm")}
    in_sr: dict[str, list] = {}
    for g in sr.content.get_planar_roi_measurement_groups():
        ref = g.roi.ContentSequence[0].ReferencedSOPSequence[0]
        pts = np.asarray(g.roi.GraphicData, dtype=float).reshape(-1, 2)
        assert g.roi.GraphicType == "POLYLINE" and len(pts) == 5 and np.allclose(pts[0], pts[-1])
        (m,) = g.get_measurements()
        in_sr.setdefault(ref.ReferencedSOPInstanceUID, []).append(
            (int(ref.get("ReferencedFrameNumber", 1)) - 1, [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(),
                                                              pts[:, 1].max()], float(m.value)))
    assert in_sr, "the detector found nothing above 0.05 on any key frame"
    for sop, boxes in in_sr.items():
        (frame,) = {f for f, _, _ in boxes}
        # the same boxes from the detector run here on the frame read here, shifted by the crop offset
        crop = UltrasoundDicom(by_uid[sop]).crop.box
        img, _ = read_ultrasound(by_uid[sop], frames=frame, color="gray")
        expected = [([b[0] + crop[0], b[1] + crop[1], b[2] + crop[0], b[3] + crop[1]], s)
                    for b, s in detector.detect(img)]
        assert len(expected) == len(boxes)
        for (_, got, score), (box, s) in zip(sorted(boxes, key=lambda t: -t[2]), expected):
            assert np.allclose(got, box, atol=1e-3) and score == pytest.approx(s, abs=1e-5)
            assert crop[0] <= got[0] < got[2] <= crop[2] and crop[1] <= got[1] < got[3] <= crop[3]
