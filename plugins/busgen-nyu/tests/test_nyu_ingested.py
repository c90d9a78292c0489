"""Breasts from an ingested PACS export: laterality read from DICOM, images without laterality excluded (NYU rule)."""

from __future__ import annotations

import csv
import json
import logging

from busgen_monai.data.ingest import ingest
from busgen_monai.synthetic import pacs_export as pacs
from busgen_nyu.data import load_breasts


def test_breasts_from_ingested_dicom(tmp_path, caplog):
    root = pacs.write_pacs_export(tmp_path / "pacs", n_patients=4, seed=0)
    truth = json.loads((tmp_path / "pacs" / "ground_truth.json").read_text())
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:  # what a hospital exports: the lesion's side and its pathology
        w = csv.DictWriter(fh, fieldnames=["patient_id", "laterality", "pathology"])
        w.writeheader()
        for p in truth["patients"]:
            w.writerow({"patient_id": p["phi"]["PatientID"], "laterality": p["lesion_laterality"],
                        "pathology": p["pathology"]})
    out = tmp_path / "ingested"
    ingest(root, out, salt="nyu-test", progress=False, labels=labels)
    data = json.loads((out / "datalist.json").read_text())
    items = [it for s in ("training", "validation", "test") for it in data.get(s) or []]
    labelled = [it for it in items if it["pathology"] in ("benign", "malignant", "normal")]
    with_side = [it for it in labelled if it.get("laterality") in ("L", "R")]
    assert with_side, "the phantom export has images with a laterality"

    with caplog.at_level(logging.WARNING, logger="busgen_nyu.data"):
        breasts = load_breasts(out / "datalist.json", "all", group_by="patient_laterality")
    assert sum(b["n_images"] for b in breasts) == len(with_side)
    expected = {(it["patient_id"], it["laterality"]): it["pathology"] for it in with_side}
    assert len(breasts) == len(expected)
    for b in breasts:
        side = b["breast_id"].rsplit("|", 1)[1]
        assert side in ("L", "R")
        path = expected[(b["patient_id"], side)]
        assert b["label"] == [float(path == "benign"), float(path == "malignant")]
    if len(with_side) < len(items):  # unlabelled or side-less images are counted in the log, never dropped silently
        assert "excluded" in caplog.text
