"""Fuzz test: mutated real DICOM files never crash or hang the ingester, and are never lost.

Hypothesis flips bytes of real ultrasound files (biased to the header, where a single byte changes a
length, a VR, a transfer syntax or an image size) and truncates them; every mutant must end up either in
the datalist or in the rejects with a reason, within the per-example deadline. ``BUSGEN_FUZZ_EXAMPLES``
raises the number of examples for a longer local run (default 60, derandomised for CI).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from busgen_monai.data.ingest import file_id_of, ingest

warnings.filterwarnings("ignore", module="pydicom")

SHARED = Path(os.environ.get("BUSGEN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
REAL = ["us_doppler_8f_jpeg_baseline_fragmented.dcm", "us_palette_11f_rle.dcm", "us1_rle.dcm",
        "us_doppler_8f_implicit_le_rgb.dcm"]
SAMPLES = ["examples_rgb_color.dcm", "ExplVR_BigEnd.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm"]
EXAMPLES = int(os.environ.get("BUSGEN_FUZZ_EXAMPLES", "60"))


def _bases() -> dict[str, bytes]:
    out = {}
    for name in REAL:
        if (SHARED / "dicom" / name).is_file():
            out[name] = (SHARED / "dicom" / name).read_bytes()
    for name in SAMPLES:
        path = get_testdata_file(name)
        if path is not None:
            out[name] = Path(path).read_bytes()
    return out


BASES = _bases()


@pytest.mark.timeout(600)
@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=30), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    name=st.sampled_from(sorted(BASES) or ["<none>"]),
    flips=st.lists(st.tuples(st.one_of(st.integers(0, 2047), st.integers(0, 1 << 22)), st.integers(0, 255)),
                   min_size=1, max_size=16),
    cut=st.one_of(st.none(), st.floats(0.02, 1.0)),
)
def test_mutated_real_files_never_crash_or_get_lost(name, flips, cut):
    if name not in BASES:
        pytest.skip("no real DICOM file to mutate")
    data = bytearray(BASES[name])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: max(1, int(len(data) * cut))]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        src.mkdir()
        (src / "MUTANT").write_bytes(bytes(data))
        result = ingest(src, out, salt="fuzz", progress=False)
        assert result.files_total == 1
        fid = file_id_of("MUTANT", "fuzz")
        datalist = json.loads((out / "datalist.json").read_text())
        items = [it for split in ("training", "validation", "test") for it in datalist.get(split, [])]
        with open(out / "rejects.csv", newline="") as fh:
            rejects = [r for r in csv.DictReader(fh) if r["file_id"] == fid]
        if items:
            assert not rejects and result.files_ingested == 1
            assert all(it["provenance"]["file_id"] == fid for it in items)
            assert all((out / it["image"]).is_file() for it in items)
        else:
            assert len(rejects) == 1 and rejects[0]["reason"] and rejects[0]["detail"]
            assert rejects[0]["reason"] != "internal_error", rejects[0]["detail"]
            assert not list(out.glob("images/**/*.png"))
