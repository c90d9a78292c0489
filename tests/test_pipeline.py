"""The main job's first stages, and its resume behaviour."""

import json

import pytest
from PIL import Image

from busgen_monai.pipeline import STAGES, run_demo


def test_demo_first_stages_and_resume(tmp_path, capsys):
    summary = run_demo(tmp_path, until="datalist")
    assert list(summary["seconds"]) == ["phantom", "ingest", "datalist"]
    ing = summary["results"]["ingest"]
    assert ing["files_ingested"] > 0 and ing["files_rejected"] > 0 and ing["reject_reasons"]
    dl = summary["results"]["datalist"]
    assert dl["summary"]["items"] == 240
    assert set(dl["summary"]["device"]) == {"PhantomMed-L7", "PhantomMed-L12", "PhantomMed-C5", "PhantomMed-T9"}
    with Image.open(dl["grid"]) as im:
        assert im.format == "PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["datalist"]["grid"] == dl["grid"]
    # a re-run skips finished stages
    again = run_demo(tmp_path, until="datalist")
    assert set(again["seconds"].values()) == {"done earlier (skipped)"} and len(again["seconds"]) == 3
    assert "already done, skipped" in capsys.readouterr().out


def test_demo_unknown_stage():
    with pytest.raises(ValueError, match="unknown demo stage 'nope'"):
        run_demo("/tmp/never-written", until="nope")
    assert [s.name for s in STAGES][:3] == ["phantom", "ingest", "datalist"]
