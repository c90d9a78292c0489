"""Ingestion under hostile input and concurrency: seeded fuzz of real files (no crash, no hang, nothing
lost, no identifier value in any output byte), and one test per finding of the hardening review."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from busgen_monai.data.dicom import DicomRejectError, UltrasoundDicom
from busgen_monai.data.dicom_fuzz import audit_outputs, element_offsets, reidentify, write_mutants
from busgen_monai.data.ingest import TRANSIENT_REASONS, IngestError, file_id_of, ingest, ingest_main

warnings.filterwarnings("ignore", module="pydicom")

SALT = "hardening"
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ["examples_rgb_color.dcm", "ExplVR_BigEnd.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm",
           "examples_palette.dcm"]


@pytest.fixture(scope="module")
def identified(dicom_dir, tmp_path_factory):
    """Real files (shared DICOM + pydicom's samples) carrying distinctive identifiers: (paths, values)."""
    folder = tmp_path_factory.mktemp("identified")
    sources = sorted(dicom_dir.glob("*.dcm")) + [Path(get_testdata_file(n)) for n in SAMPLES]
    paths, values = [], []
    for i, src in enumerate(sources):
        dst = folder / f"{i:02d}_{src.stem}.dcm"
        values += reidentify(src, dst, i)
        paths.append(dst)
    return paths, sorted(set(values), key=len, reverse=True)


def _rejects(out: Path) -> list[dict]:
    with open(out / "rejects.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _items(out: Path) -> list[dict]:
    data = json.loads((out / "datalist.json").read_text())
    return [it for split in ("training", "validation", "test") for it in data.get(split, [])]


def _run_cli(args: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = ingest_main(args)
    return rc, buf.getvalue()


def _fuzz(identified, tmp_path, count: int, seed: int, workers: int) -> None:
    paths, values = identified
    src, out = tmp_path / "src", tmp_path / "out"
    kinds = write_mutants([p.read_bytes() for p in paths], src, count, seed=seed)
    t0 = time.perf_counter()
    rc, text = _run_cli([str(src), str(out), "--salt", SALT, "--no-progress", "--workers", str(workers),
                         "--file-timeout", "60", "--stride", "4"])
    elapsed = time.perf_counter() - t0
    assert rc == 0, text
    report = json.loads((out / "ingest_report.json").read_text())
    # every mutant is ingested or rejected, exactly once
    ingested = {it["provenance"]["file_id"] for it in _items(out)}
    rejected = {r["file_id"] for r in _rejects(out) if r["reason"] != "missing_file"}
    wanted = {file_id_of(name, SALT) for name in kinds}
    assert ingested | rejected == wanted and not ingested & rejected
    assert report["counts"]["files"] == count
    # no crash (a bug is an internal_error) and no hang (a timeout)
    bad = [(r["file"], kinds.get(r["file"]), r["reason"], r["detail"]) for r in report["rejects"]
           if r["reason"] in ("internal_error", "timeout")]
    assert not bad, bad
    # no identifier value of any input in any output byte (datalist, rejects, report, manifest, state, stdout)
    hits = audit_outputs(out, values, text)
    assert not hits, hits[:10]
    assert elapsed < 60 + count  # bounded: well under a second per mutant


@pytest.mark.realdata
def test_fuzz_mutants_of_real_files(identified, tmp_path):
    """300 seeded mutants (header flips, lengths too large/small, VR damage, inserted/deleted bytes, pixel
    flips, truncation, mixes) of real files with identifiers, in one 2-worker run."""
    _fuzz(identified, tmp_path, count=int(os.environ.get("BUSGEN_FUZZ_MUTANTS", "300")), seed=16, workers=2)


@pytest.mark.slow
@pytest.mark.realdata
def test_fuzz_mutants_of_real_files_long(identified, tmp_path):
    _fuzz(identified, tmp_path, count=3000, seed=1600, workers=2)


# ------------------------------------------------------------------------------------------ findings
@pytest.mark.realdata
def test_length_corruption_does_not_leak_identifiers(identified, tmp_path):
    """An element whose length field is too large swallows the identifying elements after it; their values
    must still be found and kept out of every output."""
    paths, values = identified
    src = tmp_path / "src"
    src.mkdir()
    data = paths[1].read_bytes()  # us1_uncompressed: explicit VR little endian
    ds = pydicom.dcmread(paths[1], stop_before_pixels=True)
    name_at = data.find(str(ds.PatientName).encode())
    made = 0
    for tag_at, len_at, size, order in element_offsets(data):
        if tag_at < name_at and struct.unpack("<HH", data[tag_at:tag_at + 4])[0] == 0x0008:
            for grow in (40, 400, 4000):
                buf = bytearray(data)
                (old,) = struct.unpack(order + ("H" if size == 2 else "L"), data[len_at:len_at + size])
                buf[len_at:len_at + size] = struct.pack(order + ("H" if size == 2 else "L"), old + grow)
                (src / f"LEN{made:03d}").write_bytes(bytes(buf))
                made += 1
    assert made >= 10
    out = tmp_path / "out"
    rc, text = _run_cli([str(src), str(out), "--salt", SALT, "--no-progress"])
    assert rc in (0, 1)
    assert len(_rejects(out)) + len({it["provenance"]["file_id"] for it in _items(out)}) >= made
    hits = audit_outputs(out, values, text)
    assert not hits, hits[:10]


@pytest.mark.realdata
def test_manufacturer_holding_a_name_never_reaches_shared_outputs(identified, tmp_path):
    paths, _ = identified
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(paths[0])
    ds.Manufacturer, ds.ManufacturerModelName = "Dr Zqxwolf Private Clinic", "Room of Zqxmiller"
    ds.save_as(src / "a.dcm")
    for mode in ("null", "add"):
        out = tmp_path / mode
        rc, text = _run_cli([str(src), str(out), "--salt", SALT, "--no-progress", "--on-unknown-device", mode])
        assert rc == 0
        hits = audit_outputs(out, ["Zqxwolf", "Zqxmiller"], text)
        assert {h[0] for h in hits} <= {".ingest/unknown_devices.json", ".ingest/manifest.jsonl"}, hits
        assert "DEV-" in text


def _series(tmp_path: Path, good: int, black: int) -> Path:
    """One series of ``good`` decodable stills and ``black`` ones (rejected while decoding)."""
    src = tmp_path / "series"
    src.mkdir()
    for i in range(good + black):
        ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.4216.{i + 1}"
        arr = ds.pixel_array.copy()
        if i % 2 == 1 and i // 2 < black:  # interleaved, so both workers reject and write at once
            arr[:] = 0
        else:
            arr = np.roll(arr, 7 * i, axis=1)  # distinct content
        ds.PixelData = arr.tobytes()
        ds.save_as(src / f"IMG{i:02d}.dcm")
    return src


def test_two_workers_never_lose_good_files_of_a_shared_series(tmp_path):
    """A worker rejecting a file must not remove the series folder another worker is writing into."""
    src = _series(tmp_path, good=5, black=5)
    for run in range(20):
        out = tmp_path / f"out{run}"
        r = ingest(src, out, salt=SALT, workers=2, progress=False)
        assert r.files_ingested == 5 and r.reasons == {"no_imaging_region": 5}, (run, r.reasons)
        assert all((out / it["image"]).is_file() for it in _items(out))


def test_second_run_into_a_locked_folder_fails_fast_and_nothing_is_lost(tmp_path):
    import fcntl

    src = _series(tmp_path, good=3, black=1)
    out = tmp_path / "out"
    out.mkdir()
    # another process holds the folder (a running ingestion): a second run must refuse at once
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        with pytest.raises(IngestError, match="another ingestion is writing into"):
            ingest(src, out, salt=SALT, progress=False)
        rc, text = _run_cli([str(src), str(out), "--salt", SALT, "--no-progress"])
        assert rc == 1 and "another ingestion" in text and text.count("\n") <= 2
        assert time.perf_counter() - t0 < 10
        assert not (out / ".ingest").exists()  # refused before touching anything
    finally:
        holder.kill()
        holder.wait()
    r = ingest(src, out, salt=SALT, progress=False)
    assert r.files_ingested == 3 and r.files_total == 4
    # the lock is released at the end of a run
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_salt_file_is_created_exclusively(tmp_path):
    from busgen_monai.data.ingest import _read_or_create_salt

    salt_file = tmp_path / "salt"
    first = _read_or_create_salt(salt_file)
    assert _read_or_create_salt(salt_file) == first and len(first) == 32
    assert salt_file.stat().st_mode & 0o777 == 0o600


def test_transient_failures_are_retried_up_to_a_limit_and_counted_apart(tmp_path):
    src = _series(tmp_path, good=1, black=0)
    out = tmp_path / "out"
    # a per-file timeout no decode can meet makes a real transient failure
    r = ingest(src, out, salt=SALT, progress=False, file_timeout=1e-6)
    assert r.reasons == {"timeout": 1}
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["counts"]["transient"] == 1 and report["counts"]["rejected"] == 1
    manifest = [json.loads(line) for line in (out / ".ingest/manifest.jsonl").read_text().splitlines()]
    assert manifest[-1]["attempts"] == 1
    r = ingest(src, out, salt=SALT, progress=False, file_timeout=1e-6)  # retried (attempt 2), fails again
    assert r.files_resumed == 0 and r.reasons == {"timeout": 1}
    r = ingest(src, out, salt=SALT, progress=False, file_timeout=1e-6, max_attempts=2)  # limit reached: kept
    assert r.files_resumed == 1 and r.reasons == {"timeout": 1}
    r = ingest(src, out, salt=SALT, progress=False)  # a normal run retries and succeeds
    assert r.files_ingested == 1 and r.reasons == {}
    assert "timeout" in TRANSIENT_REASONS


@pytest.mark.realdata
def test_big_endian_palette_equals_its_rle_twin(dicom_dir, tmp_path):
    rle = dicom_dir / "us_palette_11f_rle.dcm"
    ds = pydicom.dcmread(rle)
    ds.PixelData = np.ascontiguousarray(ds.pixel_array).astype(np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    for c in ("Red", "Green", "Blue"):
        kw = f"{c}PaletteColorLookupTableData"
        ds[kw].value = np.frombuffer(ds[kw].value, "<u2").astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    big = tmp_path / "palette_be.dcm"
    pydicom.dcmwrite(big, ds, enforce_file_format=True)
    a = [f for _, f in UltrasoundDicom(big, region="none").frames()]
    b = [f for _, f in UltrasoundDicom(rle, region="none").frames()]
    assert len(a) == len(b) == 11
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and max(f.mean() for f in a) > 5


@pytest.mark.realdata
def test_geometry_that_contradicts_the_pixel_data_is_rejected(dicom_dir, tmp_path):
    # native: surplus pixel bytes (less than one frame) -- the header does not describe the data
    ds = pydicom.dcmread(dicom_dir / "us1_uncompressed.dcm")
    ds.PixelData = ds.PixelData + bytes(1000)
    ds.save_as(tmp_path / "surplus.dcm")
    # native: one row fewer than the data holds
    ds = pydicom.dcmread(dicom_dir / "us1_uncompressed.dcm")
    ds.Rows = ds.Rows - 1
    ds.save_as(tmp_path / "rows.dcm")
    # RLE cine with a too-small NumberOfFrames (used to keep frame 0 only)
    ds = pydicom.dcmread(dicom_dir / "us_palette_11f_rle.dcm")
    ds.NumberOfFrames = 3
    ds.save_as(tmp_path / "frames.dcm")
    # RLE frame whose segment count contradicts SamplesPerPixel
    ds = pydicom.dcmread(dicom_dir / "us1_rle.dcm")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.save_as(tmp_path / "segments.dcm")
    for name in ("surplus.dcm", "rows.dcm", "frames.dcm", "segments.dcm"):
        with pytest.raises(DicomRejectError) as err:
            UltrasoundDicom(tmp_path / name)
        assert err.value.reason == "bad_geometry", (name, err.value)


@pytest.mark.realdata
def test_decompression_bomb_is_rejected_from_the_header_in_milliseconds(dicom_dir, tmp_path):
    ds = pydicom.dcmread(dicom_dir / "us1_rle.dcm")
    ds.Rows = ds.Columns = 8192
    ds.save_as(tmp_path / "bomb.dcm")
    t0 = time.perf_counter()
    with pytest.raises(DicomRejectError) as err:
        UltrasoundDicom(tmp_path / "bomb.dcm")
    assert err.value.reason == "too_large" and time.perf_counter() - t0 < 0.5
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "bomb.dcm").rename(src / "bomb.dcm")
    r = ingest(src, tmp_path / "out", salt=SALT, progress=False)
    assert r.reasons == {"too_large": 1}


@pytest.mark.realdata
def test_corrupt_header_is_not_reported_as_missing_pixel_data(dicom_dir, tmp_path):
    data = bytearray((dicom_dir / "us1_uncompressed.dcm").read_bytes())
    elems = element_offsets(bytes(data))
    # a VR damaged half-way through the header: pydicom stops before the pixel data
    tag_at = elems[len(elems) // 2][0]
    data[tag_at + 4:tag_at + 6] = b"\x00\x00"
    src = tmp_path / "src"
    src.mkdir()
    (src / "corrupt.dcm").write_bytes(bytes(data))
    ingest(src, tmp_path / "out", salt=SALT, progress=False)
    (reject,) = _rejects(tmp_path / "out")
    assert reject["reason"] != "no_pixel_data", reject
