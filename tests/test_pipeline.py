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


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path):
    """The whole main job as a new user runs it (`busgen demo`): the shipped generator is adapted to the phantom's
    devices, the sample stage draws from the adapted model, and every later stage consumes the earlier outputs."""
    from busgen_monai.inferers import default_generator, file_sha256

    summary = run_demo(tmp_path)
    assert list(summary["seconds"]) == [s.name for s in STAGES]
    res = summary["results"]
    adapt = res["adapt"]
    assert adapt["base"] == str(default_generator()) and adapt["verified"]["sampled"] > 0
    assert set(adapt["devices"]) == {"PhantomMed-L7", "PhantomMed-L12", "PhantomMed-C5", "PhantomMed-T9"}
    gen = json.loads((tmp_path / "sample" / "datalist.json").read_text())["training"]
    assert len(gen) == res["sample"]["generated"] == 128
    assert {it["provenance"]["model_sha256"] for it in gen} == {file_sha256(adapt["model"])}
    assert {it["device"] for it in gen} <= set(adapt["devices"])
    with Image.open(tmp_path / "sample" / gen[0]["image"]) as im:
        assert im.mode == "L" and im.size == (64, 64)
    assert res["privacy"]["audit"]["guarded"]["passed"] is not None
    assert 0 < res["clean"]["summary"]["kept"] <= 128
    assert 0.0 <= res["classify"]["test_auroc"]["estimate"] <= 1.0
