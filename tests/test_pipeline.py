"""The main job: its stage table is well formed (every input is an earlier output, every output is read or final,
every bundle key exists), its first stages run and resume, and (slow) the whole job runs end to end."""

import json
from pathlib import Path

import pytest
from PIL import Image

from busgen_monai.pipeline import FINAL, STAGES, run_demo, stage_graph


def test_stage_table_is_a_data_flow():
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    produced: set[str] = set()
    for stage in STAGES:
        for key, ref in stage.inputs.items():
            for r in ref if isinstance(ref, list) else [ref]:
                assert r in produced, f"{stage.name}.{key} reads {r!r}, which no earlier stage produces"
        produced |= {f"{stage.name}.{o}" for o in stage.outputs}
        assert (stage.bundle is None) != (stage.run is None), stage.name  # a bundle or a library step
    readers = stage_graph()
    unread = sorted(o for o, who in readers.items() if not who and o not in FINAL)
    assert unread == [], f"outputs nobody reads and not declared final: {unread}"
    assert FINAL <= set(readers), sorted(FINAL - set(readers))
    # the flow of DESIGN.md: ingest feeds pretrain, the adapted model feeds sampling, sampling feeds cleaning
    assert "pretrain" in readers["ingest.datalist"] and "sample" in readers["adapt.model"]
    assert "clean" in readers["sample.datalist"] and "classify_train" in readers["clean.datalist"]


def test_every_bundle_stage_names_real_bundle_keys():
    """Static: the bundle and configs exist and every key the table sets is declared by the config (no typo can
    wait until minute 10 of the job)."""
    from busgen_monai.bundle_check import validate_overrides
    from busgen_monai.bundle_run import resolve_bundle, resolve_configs
    from busgen_monai.pipeline import _config_arg

    for stage in STAGES:
        if stage.bundle is None:
            continue
        root = resolve_bundle(stage.bundle)
        files = resolve_configs(root, _config_arg(stage.config))
        keys = {k: (["x"] if isinstance(v, list) else "x") for k, v in stage.inputs.items()}
        if not callable(stage.params):
            keys.update(stage.params)
        if stage.output_key:
            keys[stage.output_key] = "x"
        validate_overrides(files, keys, bundle=stage.bundle)


def test_demo_first_stages_and_resume(tmp_path, capsys):
    summary = run_demo(tmp_path, until="datalist")
    assert list(summary["seconds"]) == ["phantom", "ingest", "datalist"]
    ing = summary["results"]["ingest"]
    assert ing["files_ingested"] > 0 and ing["files_rejected"] > 0 and ing["reject_reasons"]
    assert {"benign", "malignant"} <= set(ing["pathologies"])  # labelled from the hospital's CSV
    dl = summary["results"]["datalist"]
    assert dl["items"]["phantom"] == 240 and dl["items"]["ingested"] == ing["frames"] > 0
    assert set(dl["devices"]) == {"PhantomMed-L7", "PhantomMed-L12", "PhantomMed-C5", "PhantomMed-T9"}
    grid = summary["outputs"]["datalist"]["grid"]
    with Image.open(grid) as im:
        assert im.format == "PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["outputs"]["datalist"]["grid"] == grid
    # a re-run skips finished stages
    again = run_demo(tmp_path, until="datalist")
    assert set(again["seconds"].values()) == {"done earlier (skipped)"} and len(again["seconds"]) == 3
    assert again["outputs"] == summary["outputs"]
    assert "already done, skipped" in capsys.readouterr().out
    # a stage whose declared output went missing runs again
    Path(grid).unlink()
    third = run_demo(tmp_path, until="datalist")
    assert third["seconds"]["datalist"] != "done earlier (skipped)" and Path(grid).is_file()


def test_demo_unknown_stage():
    with pytest.raises(ValueError, match="unknown demo stage 'nope'"):
        run_demo("/tmp/never-written", until="nope")
    assert [s.name for s in STAGES][:3] == ["phantom", "ingest", "datalist"]


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path):
    """The whole main job as a new user runs it (`busgen demo`): the shipped generator is adapted to the phantom's
    devices, the sample stage draws from the adapted model, and every later stage consumes the earlier outputs."""
    from busgen_monai.inferers import file_sha256

    summary = run_demo(tmp_path)
    assert list(summary["seconds"]) == [s.name for s in STAGES]
    res, out = summary["results"], summary["outputs"]
    assert res["package"]["verified"]["sampled"] > 0
    gen = json.loads(Path(out["sample"]["datalist"]).read_text())["training"]
    assert len(gen) == res["sample"]["generated"] == 128
    assert {it["provenance"]["model_sha256"] for it in gen} == {file_sha256(out["adapt"]["model"])}
    assert {it["device"] for it in gen} <= set(res["datalist"]["devices"])
    with Image.open(Path(out["sample"]["datalist"]).parent / gen[0]["image"]) as im:
        assert im.mode == "L" and im.size == (64, 64)
    assert res["audit_guarded"]["passed"] is not None and res["audit"]["cosine_max"] <= 1.0
    assert 0 < res["clean"]["kept"] <= 128
    assert 0.0 <= res["classify"]["test_auroc"]["estimate"] <= 1.0
