import csv
import json
import re
from pathlib import Path

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
from busgen_monai.data.schema import DatalistError, EmptyDatalistError, iter_items, load_datalist, save_datalist


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
    # BUS-BRA's Side is the half of a dual-view capture, not the breast: laterality stays unknown
    assert {it["laterality"] for it in items} == {""}
    halves = {it["provenance"]["file"]: it["capture_half"] for it in items}
    assert halves["bus_0001-l.png"] == "left" and halves["bus_0001-r.png"] == "right"
    assert sum(v == "" for v in halves.values()) == 253  # the single views


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


def _write_busi(root, layout, classes=("benign", "malignant", "normal"), n=4, mask_suffix="_mask"):
    """A small BUSI copy in ``layout``: 'flat' (the original) or 'nested' (<class>/images + <class>/masks)."""
    for c, cls in enumerate(classes):
        kind = cls.lower()
        img_dir = root / cls / "images" if layout == "nested" else root / cls
        mask_dir = root / cls / "masks" if layout == "nested" else root / cls
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{kind} ({i + 1})"
            img = (np.random.default_rng(10 * c + i).random((40, 56)) * 255).astype(np.uint8)
            Image.fromarray(img).save(img_dir / f"{name}.png")
            stem = name + (mask_suffix if layout == "nested" else "_mask")
            mask = np.zeros((40, 56), np.uint8) if kind == "normal" else _disc(40, 56, 12 + 3 * i, 20 + c * 10, 6)
            Image.fromarray(mask).save(mask_dir / f"{stem}.png")
            if i == 0 and kind == "benign":  # a second lesion in a second mask file
                Image.fromarray(_disc(40, 56, 30, 45, 5)).save(mask_dir / f"{name}_mask_1.png")
    return root


def _by_name(data):
    return {(it["pathology"], Path(it["provenance"]["file"]).name): it for _, _, it in iter_items(data)}


@pytest.mark.parametrize("classes,mask_suffix", [
    (("benign", "malignant", "normal"), "_mask"),   # images/ + masks/<name>_mask.png
    (("Benign", "MALIGNANT", "Normal"), ""),         # masks/<name>.png, class folders in other cases
])
def test_busi_nested_layout_gives_the_same_datalist_as_the_flat_original(tmp_path, classes, mask_suffix):
    flat = load_busi_folder(_write_busi(tmp_path / "flat", "flat"), seed=3)
    nested = load_busi_folder(_write_busi(tmp_path / "nested", "nested", classes, mask_suffix=mask_suffix), seed=3)
    a, b = _by_name(flat), _by_name(nested)
    assert len(a) == 12 and set(a) == set(b)
    for key, it in a.items():
        other = b[key]
        assert other["boxes"] == it["boxes"] and other["split"] == it["split"]
        assert other["patient_id"] == it["patient_id"] and other["pathology"] == key[0]
    two = b[("benign", "benign (1).png")]
    assert len(two["boxes"]) == 2 and "mask" not in two  # two mask files: boxes from both, no single mask path
    one = b[("malignant", "malignant (2).png")]
    assert Path(one["mask"]).parent.name == "masks" and "/images/" in one["image"].replace("\\", "/")
    assert set(nested["pathologies"]) == {"benign", "malignant", "normal"}


def test_busi_flat_layout_with_upper_case_class_folders(tmp_path):
    data = load_busi_folder(_write_busi(tmp_path / "d", "flat", ("BENIGN", "Malignant")))
    assert {it["pathology"] for _, _, it in iter_items(data)} == {"benign", "malignant"}
    assert data["pathologies"] == ["benign", "malignant"]


@pytest.mark.parametrize("make, hint", [
    (lambda r: (r / "benign" / "pics").mkdir(parents=True),
     r"folders found: benign/; ignored subfolders: benign/pics/"),
    (lambda r: None, r"folders found: none"),
    (lambda r: _write_busi(r / "Dataset_BUSI_with_GT", "flat"), r"Dataset_BUSI_with_GT/ holds class folders"),
    (lambda r: [(r / d).mkdir(parents=True) for d in ("images", "masks")], r"looks like one class folder"),
])
def test_busi_folder_without_images_names_the_folder_and_the_layouts(tmp_path, make, hint):
    root = tmp_path / "busi"
    root.mkdir()
    make(root)
    with pytest.raises(EmptyDatalistError) as info:
        load_busi_folder(root)
    msg = str(info.value)
    assert "\n" not in msg and str(root) in msg and "found 0 images" in msg
    assert "<class>/<name>_mask.png" in msg and "<class>/images/<name>.png" in msg and "masks/" in msg
    assert re.search(hint, msg), msg


def test_busi_masks_without_images_are_counted_in_the_empty_error(tmp_path):
    root = _write_busi(tmp_path / "busi", "nested", ("benign",))
    (root / "benign" / "images").rename(root / "benign" / "pictures")
    with pytest.raises(EmptyDatalistError, match=r"masks of 4 name\(s\) without an image; ignored subfolders: "
                                                 r"benign/pictures/"):
        load_busi_folder(root)


def test_busi_nested_orphan_mask_and_ignored_subfolder_are_reported(tmp_path):
    root = _write_busi(tmp_path / "busi", "nested", ("benign", "malignant"))
    (root / "benign" / "images" / "benign (3).png").unlink()
    with pytest.raises(DatalistError, match=r"benign/masks/benign \(3\)_mask.png: mask without an image"):
        load_busi_folder(root)
    (root / "benign" / "masks" / "benign (3)_mask.png").unlink()
    (root / "benign" / "thumbnails").mkdir()
    data = load_busi_folder(root)
    assert len(list(iter_items(data))) == 7
    assert any("benign/thumbnails/: ignored" in w for w in data["load_report"]["warnings"])


def test_busi_same_image_in_both_layouts_is_refused(tmp_path):
    root = _write_busi(tmp_path / "busi", "nested", ("malignant",))
    _write_busi(root, "flat", ("malignant",), n=1)
    with pytest.raises(DatalistError, match=r"malignant/images/malignant \(1\).png: same image name as "
                                        r"malignant/malignant \(1\).png; keep one copy"):
        load_busi_folder(root)


def test_cli_busi_build_accepts_nested_layout_and_refuses_an_empty_source(tmp_path, capsys):
    from busgen_monai.cli import main

    root = _write_busi(tmp_path / "busi", "nested")
    out = tmp_path / "dl" / "busi.json"
    assert main(["datalist", "build", "busi", str(root), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and len(list(iter_items(load_datalist(out)))) == 12

    empty = tmp_path / "empty"
    (empty / "benign" / "pics").mkdir(parents=True)
    out2 = tmp_path / "dl" / "empty.json"
    code = main(["datalist", "build", "busi", str(empty), str(out2)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out2.exists()
    assert len(err.splitlines()) == 1 and "found 0 images" in err and str(empty) in err


def test_loader_that_keeps_no_row_raises_instead_of_returning_an_empty_datalist(tmp_path):
    # a one-row BUS-BRA-style folder whose CSV box misses the mask, with on_box_mismatch='drop'
    (tmp_path / "Images").mkdir()
    (tmp_path / "Masks").mkdir()
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "Images" / "bus_0001-s.png")
    Image.fromarray(_disc(40, 50, 30, 40, 5)).save(tmp_path / "Masks" / "mask_0001-s.png")
    with open(tmp_path / "bus_data.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"])
        w.writerow(["bus_0001-s", "1", "Fibroadenoma", "benign", "3", "GE Logiq 7", "50", "40", "left",
                    "[2, 2, 8, 8]"])
    with pytest.raises(EmptyDatalistError,
                       match=r"0 usable items \(all 1 rows were left out, first: bus_data.csv row 2"):
        load_bus_bra(tmp_path, on_box_mismatch="drop")
    assert len(list(iter_items(load_bus_bra(tmp_path)))) == 1  # on_box_mismatch='mask' keeps it


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
