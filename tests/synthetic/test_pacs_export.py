"""Tests for busgen_monai.synthetic.pacs_export (real DICOM files read back with pydicom; about 5 s)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from busgen_monai.synthetic.pacs_export import (
    ENHANCED_SR_STORAGE,
    SECONDARY_CAPTURE_IMAGE_STORAGE,
    US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE,
    write_pacs_export,
)
from busgen_monai.synthetic import PHANTOM_DEVICES, generate_case, generate_cine, mask_to_box

PHI_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
            "AccessionNumber", "OperatorsName")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = tmp_path_factory.mktemp("pacs")
    root = write_pacs_export(out, n_patients=4, seed=0)
    manifest = json.loads((out / "ground_truth.json").read_text())
    datasets = {f["path"]: pydicom.dcmread(root / f["path"]) for f in manifest["files"]}
    return out, root, manifest, datasets


def test_layout(export):
    out, root, manifest, _ = export
    assert root == out / "export" and manifest["export_root"] == "export"
    assert not (root / "ground_truth.json").exists()
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    listed = {f["path"] for f in manifest["files"]} | {f["path"] for f in manifest["extra_files"]}
    assert on_disk == listed  # every file written is in the manifest, nothing stray (no temp files)
    paths = [f["path"] for f in manifest["files"]]
    assert all(p.count("/") >= 1 for p in paths)  # nested
    assert any(p.endswith(".dcm") for p in paths) and any("." not in p.rsplit("/", 1)[1] for p in paths)
    assert len({f["sop_instance_uid"] for f in manifest["files"]}) == len(paths)


def test_every_file_reads_and_matches_manifest(export):
    _, root, manifest, datasets = export
    for f in manifest["files"]:
        ds = datasets[f["path"]]
        assert ds.SOPInstanceUID == f["sop_instance_uid"] == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.SOPClassUID == f["sop_class_uid"]
        assert ds.file_meta.TransferSyntaxUID == f["transfer_syntax"]
        assert ds.StudyInstanceUID == f["study_instance_uid"]
        if f["kind"] == "sr":
            assert ds.SOPClassUID == ENHANCED_SR_STORAGE and "PixelData" not in ds and ds.Modality == "SR"
            assert f["n_frames"] == 0
            continue
        arr = ds.pixel_array
        assert arr.dtype == np.uint8 and ds.BitsAllocated == 8
        if ds.SOPClassUID == US_MULTIFRAME_IMAGE_STORAGE:
            assert int(ds.NumberOfFrames) == arr.shape[0] == f["n_frames"] >= 2
            assert float(ds.FrameTime) > 0 and int(ds.CineRate) > 0
            assert len(f["frame_boxes"]) == f["n_frames"]
            frames = arr
        else:
            assert "NumberOfFrames" not in ds and f["n_frames"] == 1
            frames = arr[None]
        assert frames.shape[1:3] == (ds.Rows, ds.Columns) == tuple(manifest["canvas"])
        assert float((arr == 0).mean()) == pytest.approx(f["zero_fraction"])
        style = PHANTOM_DEVICES[f["device"]]
        assert ds.Manufacturer == "PhantomMed" and ds.ManufacturerModelName == style.model
        if ds.SOPClassUID == SECONDARY_CAPTURE_IMAGE_STORAGE:
            continue
        assert ds.Modality == "US" and ds.BodyPartExamined == "BREAST"
        assert ds.get("ImageLaterality", ds.get("Laterality")) == f["laterality"] in ("L", "R")
        assert style.model in ds.TransducerData
        if style.is_color:
            assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
            assert ds.PlanarConfiguration == 0 and frames.ndim == 4
        else:
            assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
            assert frames.ndim == 3


def test_regions_match_manifest_and_crop_reproduces_phantom(export):
    _, _, manifest, datasets = export
    h, w = manifest["image_size"]
    checked = 0
    for f in manifest["files"]:
        if f["region_box"] is None:
            assert f["kind"] in ("sr", "secondary_capture")
            continue
        ds = datasets[f["path"]]
        (reg,) = ds.SequenceOfUltrasoundRegions
        box = [reg.RegionLocationMinX0, reg.RegionLocationMinY0, reg.RegionLocationMaxX1, reg.RegionLocationMaxY1]
        assert box == f["region_box"]
        assert reg.RegionSpatialFormat == 1 and reg.RegionDataType == 1
        assert reg.PhysicalUnitsXDirection == reg.PhysicalUnitsYDirection == 3
        assert 0 < reg.PhysicalDeltaX == reg.PhysicalDeltaY < 0.1
        x0, y0, x1, y1 = box
        assert (y1 - y0 + 1, x1 - x0 + 1) == (h, w)
        assert y0 >= 28  # below the burned-in header band: cropping removes the text
        arr = ds.pixel_array if f["n_frames"] > 1 else ds.pixel_array[None]
        header = arr[:, :y0, :]
        assert (header >= 200).any()  # burned-in text is there ...
        crop = arr[:, y0 : y1 + 1, x0 : x1 + 1]
        if f["kind"] == "cine":
            cases = generate_cine(f["phantom_seed"], f["pathology"], f["device"], (h, w), f["n_frames"])
        elif f["kind"] == "single":
            cases = [generate_case(f["phantom_seed"], f["pathology"], f["device"], (h, w))]
        else:
            continue
        for t, case in enumerate(cases):  # ... and the region is exactly the phantom frame
            assert np.array_equal(crop[t], case.image)
            assert case.boxes == f["frame_boxes"][t]
            for b, m in zip(f["frame_boxes"][t], case.lesion_masks):
                assert b == mask_to_box(m)
        checked += 1
    assert checked >= 12


def test_transfer_syntaxes_are_mixed(export):
    _, _, manifest, datasets = export
    syntaxes = {datasets[f["path"]].file_meta.TransferSyntaxUID for f in manifest["files"]}
    assert {ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless} <= syntaxes
    names = [f["transfer_syntax_name"] for f in manifest["files"]]
    assert names.count("explicit") > names.count("implicit") and names.count("rle") >= 2
    kept = [f for f in manifest["files"] if f["decision"] == "keep"]
    assert {f["transfer_syntax_name"] for f in kept} == {"explicit", "implicit", "rle"}
    assert any(f["transfer_syntax_name"] == "rle" and PHANTOM_DEVICES[f["device"]].is_color for f in manifest["files"])


def test_phi_present_in_inputs(export):
    _, root, manifest, datasets = export
    patients = manifest["patients"]
    assert len(patients) == 4
    all_phi = manifest["phi_strings"]
    assert len(all_phi) == len(set(all_phi))  # unique made-up strings
    for pat in patients:
        for v in pat["phi"].values():
            assert v in all_phi
    for f in manifest["files"]:
        ds = datasets[f["path"]]
        phi = patients[f["patient_index"]]["phi"]
        for tag in PHI_TAGS:
            allowed = {phi[tag], phi["AccessionNumber2"]} if tag == "AccessionNumber" else {phi[tag]}
            assert str(ds.get(tag)) in allowed
    # PHI also leaks through a folder name (a real-world trap), and the DICOMDIR repeats names
    assert any(any(v.replace("^", "_") in f["path"] for v in all_phi) for f in manifest["files"])
    assert patients[0]["phi"]["PatientName"].encode() in (root / "DICOMDIR").read_bytes()
    # burned-in header band differs between patients (their names are drawn into the pixels)
    heads = {}
    for f in manifest["files"]:
        if f["kind"] == "single":
            heads[f["patient_index"]] = datasets[f["path"]].pixel_array[:14, :, ...]
    assert len(heads) == 4 and not np.array_equal(heads[0], heads[1])


def test_rejects_present(export):
    _, _, manifest, datasets = export
    by_kind = {}
    for f in manifest["files"]:
        by_kind.setdefault(f["kind"], []).append(f)
    assert set(by_kind) == {"cine", "single", "sr", "secondary_capture", "biopsy", "mostly_zero"}
    assert len(by_kind["cine"]) == 8 and len(by_kind["single"]) == 4
    for f in manifest["files"]:
        if f["kind"] in ("cine", "single"):
            assert f["decision"] == "keep" and f["reason"] is None
            assert f["zero_fraction"] < 0.8
        else:
            assert f["decision"] == "reject"
    reasons = {k: {f["reason"] for f in v} for k, v in by_kind.items() if k not in ("cine", "single")}
    assert reasons == {"sr": {"sop_class"}, "secondary_capture": {"sop_class"}, "biopsy": {"biopsy"},
                       "mostly_zero": {"mostly_zero"}}
    (sc,) = by_kind["secondary_capture"]
    assert datasets[sc["path"]].SOPClassUID == SECONDARY_CAPTURE_IMAGE_STORAGE
    assert datasets[sc["path"]].Modality == "US"  # modality alone does not identify it
    (bx,) = by_kind["biopsy"]
    ds = datasets[bx["path"]]
    assert "BIOPSY" in ds.StudyDescription and "BIOPSY" in ds.PerformedProcedureStepDescription
    assert ds.SOPClassUID == US_MULTIFRAME_IMAGE_STORAGE
    (mz,) = by_kind["mostly_zero"]
    ds = datasets[mz["path"]]
    assert ds.SOPClassUID == US_IMAGE_STORAGE and (ds.pixel_array == 0).mean() > 0.8
    # contralateral cines are normal, lesion-side ones carry boxes in every frame
    for f in by_kind["cine"]:
        if f["pathology"] == "normal":
            assert all(b == [] for b in f["frame_boxes"])
        else:
            assert all(len(b) == 1 for b in f["frame_boxes"])


def test_dicomdir_indexes_the_managed_files(export):
    _, root, manifest, _ = export
    fs = FileSet(pydicom.dcmread(root / "DICOMDIR"))
    indexed = {}
    for inst in fs:
        path = pathlib.Path(inst.path)
        assert path.is_file()
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == inst.SOPInstanceUID
        indexed[path.relative_to(root).as_posix()] = inst.SOPInstanceUID
    expected = {f["path"]: f["sop_instance_uid"] for f in manifest["files"] if f["in_dicomdir"]}
    assert indexed == expected
    assert len(expected) < len(manifest["files"])  # some loose files outside the index
    # the raw records agree (independent of FileSet): one IMAGE record per indexed file
    records = pydicom.dcmread(root / "DICOMDIR").DirectoryRecordSequence
    ids = {"/".join(r.ReferencedFileID) for r in records if "ReferencedFileID" in r}
    assert ids == set(expected)
    stage = getattr(fs, "_stage", {}).get("t")  # pydicom's staging TemporaryDirectory
    if stage is not None:
        stage.cleanup()


def test_deterministic_and_single_patient(tmp_path):
    a = write_pacs_export(tmp_path / "a", n_patients=1, seed=5, frames=(2, 3))
    b = write_pacs_export(tmp_path / "b", n_patients=1, seed=5, frames=(2, 3))
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files_a)
    assert (tmp_path / "a" / "ground_truth.json").read_bytes() == (tmp_path / "b" / "ground_truth.json").read_bytes()
    kinds = {f["kind"] for f in json.loads((tmp_path / "a" / "ground_truth.json").read_text())["files"]}
    assert {"sr", "secondary_capture", "biopsy", "mostly_zero", "cine", "single"} == kinds


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="canvas"):
        write_pacs_export(tmp_path, canvas=(100, 100))
    with pytest.raises(ValueError, match="frames"):
        write_pacs_export(tmp_path, frames=(5, 3))
    with pytest.raises(ValueError, match="PhantomMed"):
        write_pacs_export(tmp_path, devices=["Acme-X1"])
