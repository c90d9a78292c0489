"""busgen-deploy against a real PACS: Orthanc (Debian packages orthanc + orthanc-dicomweb) started by a fixture on
loopback with a temporary storage folder and a free port, stopped afterwards.

Round trip: the phantom PACS export and the real DICOM files go in with STOW-RS, the app retrieves each study with
WADO-RS, runs, and stores its SR + SC back; the test queries Orthanc and validates what it finds. PACS ingestion:
QIDO-RS query by modality / date range / study UIDs, retrieval resumable by study, then the folder ingestion.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from deploy_checks import PRESET, check_study_outputs, non_us_copy, train_tiny_classifier, us_files


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from busgen_deploy.model import BundleClassifier, ModelConfig

    path = train_tiny_classifier(tmp_path_factory.mktemp("clf"))
    return BundleClassifier(ModelConfig(configs=PRESET, model_path=str(path)))


@pytest.fixture(scope="module")
def pacs_export(tmp_path_factory) -> Path:
    from busgen_monai.data.pacs_export import write_pacs_export

    return write_pacs_export(tmp_path_factory.mktemp("pacs") / "pacs", n_patients=3, seed=1)


@pytest.fixture()
def orthanc(tmp_path):
    from busgen_deploy.orthanc import OrthancServer, OrthancUnavailable, find_orthanc

    try:
        find_orthanc()
    except OrthancUnavailable as err:  # only a missing install skips (CI installs it: .ci/setup.d/orthanc.sh)
        pytest.skip(f"Orthanc is not installed here: {err}")
    server = OrthancServer(tmp_path / "orthanc")
    server.start()  # installed: a start-up failure is a failure of the test, never a skip
    try:
        yield server
    finally:
        server.stop()
        assert server.proc.poll() is not None  # never left running


def _dicom_files(folder: Path) -> list[Path]:
    from busgen_monai.data.dicom import sniff_dicom

    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "DICOMDIR" and sniff_dicom(p):
            out.append(p)
    return out


def _instances(client, study_uid: str) -> list[tuple[str, str]]:
    return sorted((client.value(i, "00080016"), client.value(i, "00080018")) for i in client.search_instances(study_uid))


def test_pacs_round_trip(orthanc, pacs_export, dicom_dir, classifier, tmp_path):
    from busgen_deploy.pacs import DicomWebClient, run_on_pacs

    client = DicomWebClient(orthanc.dicomweb_url)
    files = _dicom_files(pacs_export) + _dicom_files(dicom_dir)
    local = {**us_files(pacs_export), **us_files(dicom_dir)}
    ct_study = non_us_copy(next(iter(local.values()))[0], tmp_path / "ct.dcm")  # a study without ultrasound
    files.append(tmp_path / "ct.dcm")
    client.store(files)
    all_studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files}
    us_studies = client.study_uids(modality="US")
    assert set(us_studies) == set(local)  # QIDO by modality finds exactly the ultrasound studies

    for uid in us_studies:
        before = _instances(client, uid)
        res = run_on_pacs(client, uid, classifier.config, classifier=classifier)
        assert res["status"] == "stored", res
        after = _instances(client, uid)
        new = sorted(set(after) - set(before))
        assert [c for c, _ in new] == sorted(["1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"])
        # fetch the study back from the PACS and validate the stored SR + SC against the stored sources
        back = tmp_path / "back" / uid
        client.retrieve_study(uid, back)
        by_sop = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in back.glob("*.dcm")}
        from busgen_deploy.study import study_label

        results = tmp_path / "results"
        (results / study_label(uid)).mkdir(parents=True)
        for cls, sop in new:
            name = "sr.dcm" if cls.endswith("88.34") else "sc.dcm"
            (results / study_label(uid) / name).write_bytes(by_sop[sop].read_bytes())
        (results / study_label(uid) / "result.json").write_text(json.dumps({"score": res["score"]}))
        scores = check_study_outputs(results, uid, local[uid], classifier)
        assert scores["study"] == pytest.approx(res["score"], abs=1e-6)
        # running again replaces nothing and duplicates nothing (deterministic UIDs)
        if uid == us_studies[0]:
            assert run_on_pacs(client, uid, classifier.config, classifier=classifier)["status"] == "stored"
            assert _instances(client, uid) == after

    # a study without ultrasound: a DICOM-level error and nothing stored
    non_us = sorted(all_studies - set(local))
    assert ct_study in non_us
    for uid in non_us:
        before = _instances(client, uid)
        res = run_on_pacs(client, uid, classifier.config, classifier=classifier)
        assert res["status"] == "failed" and res["code"] == "no_ultrasound", res
        assert "holds no ultrasound image instance" in res["error"]
        assert _instances(client, uid) == before


def test_pacs_ingest_matches_folder_ingest_and_resumes(orthanc, pacs_export, tmp_path):
    from busgen_deploy.pacs import DicomWebClient
    from busgen_deploy.pacs_ingest import pacs_ingest
    from busgen_monai.data.ingest import ingest

    client = DicomWebClient(orthanc.dicomweb_url)
    files = _dicom_files(pacs_export)
    client.store(files)
    salt = "test-salt"
    res = pacs_ingest(orthanc.dicomweb_url, tmp_path / "pacs_out", modality="US", salt=salt, isolate=False)
    local = us_files(pacs_export)
    assert res["studies_found"] == len(local) and res["retrieved"] == len(local) and res["failed"] == 0
    # the same ingestion on a folder holding the same studies (every instance of the ultrasound studies)
    us_only = tmp_path / "us_only"
    us_only.mkdir()
    for i, p in enumerate(files):
        if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) in local:
            shutil.copy(p, us_only / f"{i:04d}.dcm")
    folder = ingest(us_only, tmp_path / "folder_out", salt=salt, progress=False, isolate=False)
    dl_pacs = json.loads((tmp_path / "pacs_out" / "datalist.json").read_text())
    dl_folder = json.loads((tmp_path / "folder_out" / "datalist.json").read_text())

    def key(item):
        return (item["patient_id"], item["study_id"], item["provenance"]["sop_instance_uid_hash"],
                item["provenance"]["frame"])

    items_pacs = sorted(key(i) for s in ("training", "validation", "test") for i in dl_pacs.get(s, []))
    items_folder = sorted(key(i) for s in ("training", "validation", "test") for i in dl_folder.get(s, []))
    assert items_pacs and items_pacs == items_folder  # same frames, same pseudonyms as the folder ingestion
    assert res["ingest"].items == folder.items
    # the same rejects with the same reasons (secondary capture, SR, biopsy, mostly-black frames...)
    assert res["ingest"].reasons == folder.reasons and res["ingest"].files_rejected == folder.files_rejected
    text = (tmp_path / "pacs_out" / "datalist.json").read_text()
    for p in files[:3]:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert str(ds.StudyInstanceUID) not in text and str(ds.PatientID) not in text

    # resumable by study: a second run retrieves nothing again
    again = pacs_ingest(orthanc.dicomweb_url, tmp_path / "pacs_out", modality="US", salt=salt, isolate=False)
    assert again["retrieved"] == 0 and again["resumed"] == len(local) and again["ingest"].items == folder.items
    # a date range and explicit UIDs narrow the query
    first = pydicom.dcmread(local[sorted(local)[0]][0], stop_before_pixels=True)
    same_day = {u for u, ps in local.items()
                if pydicom.dcmread(ps[0], stop_before_pixels=True).StudyDate == first.StudyDate}
    assert set(client.study_uids(modality="US", study_date=f"{first.StudyDate}-{first.StudyDate}")) == same_day
    one = pacs_ingest(orthanc.dicomweb_url, tmp_path / "one_out", study_uids=[str(first.StudyInstanceUID)],
                      salt=salt, isolate=False)
    assert one["studies_found"] == 1 and one["retrieved"] == 1


def test_busgen_ingest_accepts_a_dicomweb_url(orthanc, pacs_export, tmp_path, capsys):
    """`busgen ingest URL OUT` is the PACS ingestion (the same options as for folders)."""
    from busgen_deploy.pacs import DicomWebClient
    from busgen_monai.cli import main

    DicomWebClient(orthanc.dicomweb_url).store(_dicom_files(pacs_export))
    out = tmp_path / "via_ingest"
    assert main(["ingest", orthanc.dicomweb_url, str(out), "--salt", "s", "--modality", "US"]) == 0
    data = json.loads((out / "datalist.json").read_text())
    assert sum(len(data.get(s, [])) for s in ("training", "validation", "test")) > 0
