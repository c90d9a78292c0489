import csv
import json

import numpy as np
import pytest
from PIL import Image

from busgen_monai.data.devices import UnknownDeviceError
from busgen_monai.data.loaders import (
    box_iou,
    load_bus_bra,
    load_busi_folder,
    load_image_csv,
    mask_to_boxes,
    patient_split,
)
from busgen_monai.data.schema import DatalistError, iter_items, save_datalist, load_datalist


# ------------------------------------------------------------------------------------------- BUS-BRA (real)
@pytest.fixture(scope="module")
def bus_bra(bus_bra_root):
    return load_bus_bra(bus_bra_root)


def test_bus_bra_all_items_patient_wise(bus_bra, bus_bra_root):
    items = [it for _, _, it in iter_items(bus_bra)]
    assert len(items) == 1875
    splits_of = {}
    for it in items:
        splits_of.setdefault(it["patient_id"], set()).add(it["split"])
    assert all(len(s) == 1 for s in splits_of.values()), "a patient is in two splits"
    assert len(splits_of) == 1064
    counts = {s: len(bus_bra[s]) for s in ("training", "validation", "test")}
    assert 0.6 < counts["training"] / 1875 < 0.8 and counts["test"] > 200
    assert {it["device"] for it in items} == {"GE-LOGIQ-7", "GE-LOGIQ-5", "TOSHIBA-Aplio-300", "U-Systems"}
    # pseudonymous ids: no raw case number
    assert all(it["patient_id"].startswith("BB-") and len(it["patient_id"]) == 15 for it in items)


def test_bus_bra_boxes_inside_and_overlap_masks(bus_bra):
    items = [it for _, _, it in iter_items(bus_bra)]
    rng = np.random.default_rng(0)
    for k in rng.choice(len(items), 150, replace=False):
        it = items[k]
        (box,) = it["boxes"]
        assert all(0 <= v <= 1 for v in box) and box[0] < box[2] and box[1] < box[3]
        mask = np.asarray(Image.open(it["mask"]).convert("L")) > 0
        assert mask.shape == (it["height"], it["width"])
        (mbox,) = mask_to_boxes(mask, per_component=False)
        assert box_iou(box, mbox) > 0.8, it["image"]
    # the 1-based CSV convention makes the CSV box equal the mask box on a clean row
    first = next(it for it in items if it["provenance"]["file"] == "bus_0001-l.png")
    mask = np.asarray(Image.open(first["mask"]).convert("L")) > 0
    assert np.allclose(first["boxes"][0], mask_to_boxes(mask, per_component=False)[0])


def test_bus_bra_quirks_are_reported_not_fatal(bus_bra):
    warnings = bus_bra["load_report"]["warnings"]
    assert any("bus_0845-s" in w and "using the mask's box" in w for w in warnings)
    assert any("bus_0856-l" in w and "using the image size" in w for w in warnings)


def test_bus_bra_fold_split_and_saved_datalist(bus_bra_root, tmp_path):
    data = load_bus_bra(bus_bra_root, fold=2, check_masks=False, relative_to=tmp_path)
    with open(bus_bra_root / "5-fold-cv.csv") as fh:
        fold = {r["ID"]: int(r["kFold"]) for r in csv.DictReader(fh)}
    for it in data["test"]:
        assert fold[it["provenance"]["file"][:-4]] == 2
    data.pop("load_report")
    path = save_datalist(data, tmp_path / "bus_bra.json")
    loaded = load_datalist(path)
    assert not loaded["training"][0]["image"].startswith("/")
    assert len(loaded["training"]) + len(loaded["validation"]) + len(loaded["test"]) == 1875


def test_bus_bra_unknown_device_errors_name_the_row(bus_bra_root, tmp_path):
    rows = list(csv.DictReader(open(bus_bra_root / "bus_data.csv")))[:6]
    rows[2]["Device"] = "Hitachi Arietta @5MHz"
    root = tmp_path / "bb"
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    for r in rows:
        for sub, name in (("Images", f"{r['ID']}.png"), ("Masks", f"mask_{r['ID'][4:]}.png")):
            (root / sub / name).symlink_to(bus_bra_root / sub / name)
    with open(root / "bus_data.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DatalistError, match=r"Hitachi Arietta @5MHz.*row 4 \(bus_0002-l\)"):
        load_bus_bra(root)
    data = load_bus_bra(root, on_unknown_device="null", fractions=(1, 0, 0))
    assert data["unknown_devices"] == {"Hitachi Arietta @5MHz": 1}
    assert sum(it["device"] == "unknown" for _, _, it in iter_items(data)) == 1


# ------------------------------------------------------------------------------------------- BUSI-style
def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255


@pytest.fixture
def busi(tmp_path):
    root = tmp_path / "Dataset_BUSI"
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
    for i in range(6):
        img = (np.random.default_rng(i).random((60, 80)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "benign" / f"benign ({i}).png")
        Image.fromarray(_disc(60, 80, 20, 20, 8)).save(root / "benign" / f"benign ({i})_mask.png")
        if i == 0:  # a second lesion in a second mask file
            Image.fromarray(_disc(60, 80, 45, 60, 6)).save(root / "benign" / f"benign ({i})_mask_1.png")
        Image.fromarray(img).save(root / "malignant" / f"malignant ({i}).png")
        Image.fromarray(_disc(60, 80, 30, 40, 10)).save(root / "malignant" / f"malignant ({i})_mask.png")
        Image.fromarray(img).save(root / "normal" / f"normal ({i}).png")
        Image.fromarray(np.zeros((60, 80), np.uint8)).save(root / "normal" / f"normal ({i})_mask.png")
    return root


def test_busi_folder_boxes_from_masks(busi):
    data = load_busi_folder(busi, device="Philips-iU22")
    items = {it["provenance"]["file"]: it for _, _, it in iter_items(data)}
    assert len(items) == 18
    two = items["benign/benign (0).png"]
    assert len(two["boxes"]) == 2
    assert np.allclose(sorted(two["boxes"])[0], [12 / 80, 12 / 60, 29 / 80, 29 / 60])
    assert items["normal/normal (3).png"]["boxes"] == []
    assert items["malignant/malignant (1).png"]["pathology"] == "malignant"
    assert set(data["pathologies"]) == {"benign", "malignant", "normal"}


def test_busi_missing_mask_is_named(busi):
    (busi / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(DatalistError, match=r"malignant/malignant \(2\).png: malignant image without a lesion mask"):
        load_busi_folder(busi)


# ------------------------------------------------------------------------------------------- CSV folder
def test_image_csv(tmp_path):
    for i in range(8):
        Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / f"im{i}.png")
    rows = [{"image": f"im{i}.png", "pathology": "malignant" if i % 2 else "benign", "device": "GE LOGIQ E9",
             "patient_id": f"MRN{i // 2}", "boxes": "5 4 25 20" if i != 3 else "0.1 0.1 0.5 0.5; 0.6 0.6 0.9 0.8",
             "birads": "4A"} for i in range(8)]
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = load_image_csv(tmp_path / "labels.csv", fractions=(0.5, 0.25, 0.25))
    items = [it for _, _, it in iter_items(data)]
    assert len(items) == 8
    assert all("MRN" not in it["patient_id"] for it in items)
    im0 = next(it for it in items if it["provenance"]["file"] == "im0.png")
    assert np.allclose(im0["boxes"][0], [0.1, 0.1, 0.5, 0.5]) and im0["device"] == "GE-LOGIQ-E9"
    assert im0["birads"] == "4a"
    assert len(next(it for it in items if it["provenance"]["file"] == "im3.png")["boxes"]) == 2

    rows[5]["pathology"] = "weird"
    rows[6]["boxes"] = "5 4 80 20"
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DatalistError) as info:
        load_image_csv(tmp_path / "labels.csv")
    msg = str(info.value)
    assert "row 7 (im5.png): unknown pathology 'weird'" in msg and "row 8 (im6.png): box" in msg


# ------------------------------------------------------------------------------------------- helpers
def test_patient_split_is_deterministic_stratified_and_disjoint():
    labels = {f"p{i}": ("malignant" if i % 3 == 0 else "benign") for i in range(300)}
    a = patient_split(labels, (0.7, 0.15, 0.15), seed=1)
    assert a == patient_split(labels, (0.7, 0.15, 0.15), seed=1)
    assert a != patient_split(labels, (0.7, 0.15, 0.15), seed=2)
    test_mal = sum(1 for p, s in a.items() if s == "test" and labels[p] == "malignant")
    assert test_mal == 15  # 15 % of the 100 malignant patients
    with pytest.raises(ValueError, match="fractions"):
        patient_split(labels, (0.5, 0.5))


def test_mask_to_boxes_exact():
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 1
    m[7:9, 15:18] = 1
    assert mask_to_boxes(m) == [[3 / 20, 2 / 10, 9 / 20, 5 / 10], [15 / 20, 7 / 10, 18 / 20, 9 / 10]]
    assert mask_to_boxes(np.zeros((4, 4))) == []
