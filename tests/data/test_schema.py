import json

import numpy as np
import pytest
from PIL import Image

from busgen_monai.data.schema import (
    DatalistError,
    EmptyDatalistError,
    load_datalist,
    make_datalist,
    save_datalist,
    summarize_datalist,
    validate_datalist,
)


def _item(image="a.png", split="training", patient="P-1", **kw):
    item = {"image": image, "pathology": "benign", "device": "GE-LOGIQ-E9", "boxes": [[0.1, 0.2, 0.5, 0.6]],
            "patient_id": patient, "study_id": "S-1", "split": split, "provenance": {"source": "test"}}
    item.update(kw)
    return item


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    return tmp_path


def test_valid_datalist_round_trip(folder):
    data = make_datalist([_item("a.png"), _item("b.png", "test", "P-2")], name="t")
    path = save_datalist(data, folder / "datalist.json")
    loaded = load_datalist(path)
    assert loaded["base_dir"] == str(folder.resolve())
    assert [it["image"] for it in loaded["training"]] == ["a.png"]
    s = summarize_datalist(loaded)
    assert s["items"] == 2 and s["splits"]["test"]["items"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image": "missing.png"}, r"training\[0\] \(missing.png\): image file .*missing.png does not exist"),
        ({"boxes": [[0.1, 0.2, 1.3, 0.6]]}, r"box 0 \[0.1, 0.2, 1.3, 0.6\] lies outside the image"),
        ({"boxes": [[0.5, 0.2, 0.1, 0.6]]}, r"empty or inverted"),
        ({"pathology": "benign-ish"}, r"unknown pathology 'benign-ish'"),
        ({"device": "GE Logiq 7 @10-14MHz"}, r"did you mean the canonical name 'GE-LOGIQ-7'"),
        ({"birads": "7"}, r"BI-RADS '7'"),
        ({"split": "test"}, r"says split 'test' but is listed under 'training'"),
        ({"boxes": [[0.1, 0.2]]}, r"key 'boxes.0'"),
    ],
)
def test_invalid_items_are_named(folder, change, message):
    data = make_datalist([_item()], name="t")
    data["training"][0].update(change)
    with pytest.raises(DatalistError, match=message):
        validate_datalist(data, base_dir=folder)


def test_missing_required_key_and_all_problems_listed(folder):
    data = make_datalist([_item(), _item("b.png")], name="t")
    del data["training"][0]["patient_id"]
    data["training"][1]["pathology"] = "zzz"
    with pytest.raises(DatalistError) as info:
        validate_datalist(data, base_dir=folder)
    assert len(info.value.problems) == 2
    assert "'patient_id' is a required property" in str(info.value)


def test_patient_in_two_splits_is_refused(folder):
    data = make_datalist([_item("a.png"), _item("b.png", "test")], name="t")
    with pytest.raises(DatalistError, match="patient 'P-1' appears in several splits"):
        validate_datalist(data, base_dir=folder)


def test_declared_pathologies_extend_the_vocabulary(folder):
    data = make_datalist([_item(pathology="tnbc")], name="t", pathologies=["benign", "tnbc"])
    validate_datalist(data, base_dir=folder)


def test_wrong_schema_version_and_bad_json(folder):
    (folder / "d.json").write_text(json.dumps({"schema_version": 2, "training": []}))
    with pytest.raises(DatalistError, match="schema_version"):
        load_datalist(folder / "d.json")
    (folder / "e.json").write_text("{not json")
    with pytest.raises(DatalistError, match="not valid JSON"):
        load_datalist(folder / "e.json")


@pytest.mark.parametrize("splits", [{}, {"training": [], "validation": [], "test": []}])
def test_empty_datalist_is_refused_in_one_line_when_items_are_required(folder, splits):
    path = folder / "empty.json"
    path.write_text(json.dumps({"schema_version": 1, "name": "e", **splits}))
    load_datalist(path)  # the contract allows empty splits: default callers (filters, reports) may see one
    with pytest.raises(EmptyDatalistError) as info:
        load_datalist(path, allow_empty=False)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "no items in training/validation/test" in msg
    with pytest.raises(EmptyDatalistError):
        validate_datalist(json.loads(path.read_text()), allow_empty=False)
    validate_datalist(make_datalist([_item()], name="t"), base_dir=folder, allow_empty=False)  # one item is enough


def test_cli_validate_refuses_an_empty_datalist_in_one_line(folder, capsys):
    from busgen_monai.cli import main

    good = save_datalist(make_datalist([_item()], name="t"), folder / "good.json")
    assert main(["datalist", "validate", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    empty = folder / "empty.json"
    empty.write_text(json.dumps({"schema_version": 1, "name": "e", "training": [], "validation": [], "test": []}))
    code = main(["datalist", "validate", str(empty)])
    captured = capsys.readouterr()
    assert code != 0 and "valid" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "empty datalist" in lines[0] and str(empty) in lines[0]


def test_monai_reads_our_datalist(folder):
    from monai.data import load_decathlon_datalist

    path = save_datalist(make_datalist([_item("a.png"), _item("b.png", "validation", "P-2")], name="t"),
                         folder / "dl.json")
    items = load_decathlon_datalist(str(path), data_list_key="training")
    assert items[0]["image"] == str(folder / "a.png") and items[0]["pathology"] == "benign"
