"""From a read study to its DICOM results on disk: score, explain, build SR + SC, write atomically.

Used by the MONAI Deploy operators (:mod:`busgen_deploy.operators`); kept apart from them so the same code
is testable without starting a Holoscan graph.

Output layout (one folder per study, named by a non-identifying label, written to a temporary folder and
renamed, so a study has either all its results or none)::

    OUT/<ST-label>/sr.dcm        TID 1500 measurement report (score, decision, model, references)
    OUT/<ST-label>/sc.dcm        saliency Secondary Capture (derived, not for diagnosis)
    OUT/<ST-label>/result.json   PHI-free summary (scores per instance position, model, rejects by reason)
    OUT/errors.json              studies that produced nothing, with their DICOM-level error
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from busgen_monai.utils.io import atomic_write_json

from .model import BundleClassifier
from .study import StudyInput
from .writers import InstanceResult, StudyResult, build_sc, build_sr, overlay_saliency

__all__ = ["score_study", "saliency_image", "write_study", "write_outputs", "record_error", "clear_error"]


def score_study(study: StudyInput, classifier: BundleClassifier, detector=None) -> StudyResult:
    """Malignancy probability of every frame read from the study's instances; with a
    :class:`~busgen_deploy.detector.BundleDetector`, also the lesion boxes of each instance's highest-scoring
    frame (in source pixels)."""
    from .detector import source_boxes

    frames = [f for inst in study.instances for f in inst.frames]
    scores = classifier.predict(frames).scores.tolist()
    out, k = [], 0
    for inst in study.instances:
        n = len(inst.frames)
        r = InstanceResult(inst.dataset, list(inst.frame_indices), scores[k:k + n], inst.n_frames)
        if detector is not None:
            best = int(np.argmax(r.frame_scores))
            r.detection_frame = inst.frame_indices[best]
            r.detections = source_boxes(detector.detect(inst.frames[best]), inst.crop_box)
        out.append(r)
        k += n
    return StudyResult(study.study_uid, out, classifier.describe(),
                      detector=detector.describe() if detector is not None else None)


def saliency_image(study: StudyInput, result: StudyResult, classifier: BundleClassifier):
    """RGB overlay of the Grad-CAM map of the key frame on the full (uncropped) frame."""
    pos, frame_index = result.key
    inst = study.instances[pos]
    cropped = inst.frames[inst.frame_indices.index(frame_index)]
    cam = classifier.gradcam(cropped)
    if float(cam.max()) <= 0.0:
        # Grad-CAM keeps only regions whose features raise the explained class; none do for this frame
        result.saliency_note = (f"the Grad-CAM map of class '{classifier.classes[classifier.positive_index]}' is "
                                "empty: no image region raises its score")
    full = inst.full_frame(frame_index)
    return overlay_saliency(full, cam, inst.crop_box)


def write_study(out_dir: str | os.PathLike, study: StudyInput, classifier: BundleClassifier, *,
                app_version: str, detector=None) -> dict:
    """Score, explain (and detect) and write the SR + SC + summary of one study into ``out_dir/<label>/``
    atomically. Returns the summary written to ``result.json``."""
    result = score_study(study, classifier, detector)
    return write_outputs(out_dir, study, result, saliency_image(study, result, classifier), app_version=app_version)


def write_outputs(out_dir: str | os.PathLike, study: StudyInput, result: StudyResult, overlay, *,
                  app_version: str) -> dict:
    """Build the SR and the SC (from the ``overlay`` RGB frame) of a scored study and write them with a
    summary into ``out_dir/<label>/`` atomically. Returns the summary written to ``result.json``."""
    sr = build_sr(result, app_version=app_version)
    sc = build_sc(result, overlay, app_version=app_version)
    out_dir = Path(out_dir)
    final = out_dir / study.label
    tmp = out_dir / f".tmp-{study.label}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sr.save_as(tmp / "sr.dcm", enforce_file_format=True)
        sc.save_as(tmp / "sc.dcm", enforce_file_format=True)
        summary = {
            "study": study.label,
            "score": round(result.score, 6),
            "decision": result.decision,
            "model": dict(result.model),
            "instances": [{"position": i, "score": round(r.score, 6), "frames_scored": len(r.frame_indices),
                           "n_frames": r.n_frames,
                           **({"detection_frame": r.detection_frame,
                               "boxes": [{"box": [round(v, 1) for v in b], "score": round(sc, 6)}
                                         for b, sc in r.detections]} if result.detector is not None else {})}
                          for i, r in enumerate(result.instances)],
            "detector": dict(result.detector) if result.detector is not None else None,
            "key_frame": {"position": result.key[0], "frame": result.key[1]},
            "saliency_note": result.saliency_note,
            "rejected": [{"reason": r["reason"], "detail": r["detail"]} for r in study.rejected],
            "skipped": [{"kind": s["kind"]} for s in study.skipped],
            "files": ["sr.dcm", "sc.dcm"],
        }
        atomic_write_json(tmp / "result.json", summary)
        for f in tmp.iterdir():  # flush before the rename makes the study visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        clear_error(out_dir, study.label)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def clear_error(out_dir: str | os.PathLike, label: str) -> None:
    """Drop ``label`` from ``out_dir/errors.json`` (the study has been written since)."""
    path = Path(out_dir) / "errors.json"
    if path.is_file():
        errors = json.loads(path.read_text())
        kept = [e for e in errors if e.get("study") != label]
        if len(kept) != len(errors):
            atomic_write_json(path, kept)


def record_error(out_dir: str | os.PathLike, label: str, code: str, message: str) -> None:
    """Add a study that produced nothing to ``out_dir/errors.json`` (and drop any earlier results of it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "errors.json"
    errors = json.loads(path.read_text()) if path.is_file() else []
    errors = [e for e in errors if e.get("study") != label] + [{"study": label, "code": code, "message": message}]
    atomic_write_json(path, errors)
    shutil.rmtree(out_dir / label, ignore_errors=True)
