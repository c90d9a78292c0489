"""Tests for busgen_monai.synthetic.phantom and .dataset (real behaviour, no mocks; about 10 s)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from busgen_monai.evaluation.lesion_shape import posterior_contrast, speckle_correlation_length
from busgen_monai.synthetic import PHANTOM_DEVICES, generate_case, generate_cine, mask_to_box, sample_grid, write_dataset

DEVICES = list(PHANTOM_DEVICES)


def _grey(img: np.ndarray) -> np.ndarray:
    return img.mean(axis=2) if img.ndim == 3 else img.astype(np.float64)


def test_device_registry():
    assert DEVICES == ["PhantomMed-L7", "PhantomMed-L12", "PhantomMed-C5", "PhantomMed-T9"]
    for name, style in PHANTOM_DEVICES.items():
        assert style.name == name
        assert style.manufacturer == "PhantomMed"
        assert name == f"PhantomMed-{style.model}"
    assert PHANTOM_DEVICES["PhantomMed-C5"].geometry == "sector"
    assert PHANTOM_DEVICES["PhantomMed-T9"].is_color
    assert sum(s.is_color for s in PHANTOM_DEVICES.values()) == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pathology", ["benign", "malignant"])
def test_boxes_match_masks(device, pathology):
    for seed in (0, 1):
        case = generate_case(seed, pathology, device, size=(96, 128), n_lesions=2)
        color = PHANTOM_DEVICES[device].is_color
        assert case.image.dtype == np.uint8
        assert case.image.shape == ((96, 128, 3) if color else (96, 128))
        assert case.mask.dtype == np.uint8 and case.mask.shape == (96, 128)
        assert set(np.unique(case.mask)) <= {0, 255}
        assert 1 <= len(case.lesion_masks) <= 2
        assert len(case.boxes) == len(case.lesion_masks) == len(case.shape_stats)
        union = np.zeros((96, 128), dtype=bool)
        for m, box in zip(case.lesion_masks, case.boxes):
            assert m.dtype == bool and m.any()
            assert box == mask_to_box(m)
            x1, y1, x2, y2 = box
            assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0
            union |= m
        assert np.array_equal(union, case.mask == 255)
        if len(case.lesion_masks) == 2:  # placed without overlap
            assert not (case.lesion_masks[0] & case.lesion_masks[1]).any()
        # lesions are hypoechoic: their inside (edge pixels blurred by the PSF) is much darker
        g = _grey(case.image)
        inner = ndimage.binary_erosion(case.mask > 0, iterations=2)
        assert g[inner].mean() < g[case.fov_mask].mean() - 40


def test_normal_case_has_no_lesion():
    case = generate_case(5, "normal", "PhantomMed-L12")
    assert case.boxes == [] and case.lesion_masks == [] and case.shape_stats == []
    assert not case.mask.any()
    assert case.birads == "1"


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 20), st.integers(4, 20), st.data())
def test_mask_to_box_is_tight(h, w, data):
    r0 = data.draw(st.integers(0, h - 1))
    r1 = data.draw(st.integers(r0, h - 1))
    c0 = data.draw(st.integers(0, w - 1))
    c1 = data.draw(st.integers(c0, w - 1))
    m = np.zeros((h, w), dtype=bool)
    m[r0, c0] = m[r1, c1] = True
    x1, y1, x2, y2 = mask_to_box(m)
    assert (round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h)) == (c0, r0, c1 + 1, r1 + 1)


def test_mask_to_box_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(np.zeros((4, 4), dtype=bool))


def test_determinism():
    a = generate_case(11, "malignant", "PhantomMed-C5")
    b = generate_case(11, "malignant", "PhantomMed-C5")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.boxes == b.boxes and a.birads == b.birads and a.shape_stats == b.shape_stats
    c = generate_case(12, "malignant", "PhantomMed-C5")
    assert not np.array_equal(a.image, c.image)
    assert a.boxes != c.boxes
    # the anatomy depends on the seed only: the same seed without a lesion matches far from it
    n = generate_case(11, "normal", "PhantomMed-C5")
    top = int(a.boxes[0][1] * 128) - 8
    assert top > 10
    assert np.array_equal(a.image[:top], n.image[:top])
    ca = generate_cine(3, "benign", "PhantomMed-T9", n_frames=3)
    cb = generate_cine(3, "benign", "PhantomMed-T9", n_frames=3)
    assert all(np.array_equal(x.image, y.image) and x.boxes == y.boxes for x, y in zip(ca, cb))


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="PhantomMed-L7"):
        generate_case(0, "benign", "GE-LOGIQ-E9")
    with pytest.raises(ValueError, match="malignant"):
        generate_case(0, "cancerous")
    with pytest.raises(ValueError, match="BI-RADS"):
        generate_case(0, "benign", birads="7")
    with pytest.raises(ValueError, match="seed"):
        generate_case(-1)


def test_device_styles_differ_measurably():
    stats = {}
    for d in DEVICES:
        means, stds, lat, zeros = [], [], [], []
        for seed in range(4):
            c = generate_case(seed, "normal", d)
            g = _grey(c.image)
            means.append(g[c.fov_mask].mean())
            stds.append(g[c.fov_mask].std())
            lat.append(speckle_correlation_length(c.image, axis=1))
            zeros.append((g == 0).mean())
        stats[d] = {k: float(np.mean(v)) for k, v in
                    dict(mean=means, std=stds, lat=lat, zero=zeros).items()}
    L7, L12, C5, T9 = (stats[d] for d in DEVICES)
    # gain: L12 is brighter than L7
    assert L12["mean"] > L7["mean"] + 10
    # speckle grain: L12 finest, C5 coarsest
    assert L12["lat"] < L7["lat"] - 0.8
    assert C5["lat"] > L7["lat"] + 0.3
    # fan geometry: black outside the sector for C5 only
    assert C5["zero"] > 0.25
    assert L7["zero"] == L12["zero"] == T9["zero"] == 0.0
    fov = generate_case(0, "normal", "PhantomMed-C5").fov_mask
    assert fov[-3, fov.shape[1] // 2] and not fov[0, 0] and not fov[-3, 0]
    # wide dynamic range: T9 is greyer (lower contrast) than L7
    assert T9["std"] < L7["std"] - 8
    # tint: T9 is RGB with a warm (sepia) colour map; the others are greyscale
    t9 = generate_case(0, "normal", "PhantomMed-T9").image
    r, g, b = (t9[..., k].astype(np.float64).mean() for k in range(3))
    assert r > g + 10 > b + 20
    for d in ("PhantomMed-L7", "PhantomMed-L12", "PhantomMed-C5"):
        assert generate_case(0, "normal", d).image.ndim == 2


def test_benign_vs_malignant_shape_statistics():
    rows = {"benign": [], "malignant": []}
    post = {"benign": [], "malignant": []}
    for pathology in rows:
        for seed in range(40):
            c = generate_case(seed, pathology, DEVICES[seed % 4])
            s = c.shape_stats[0]
            rows[pathology].append([s["aspect_ratio"], s["solidity"], s["circularity"]])
            post[pathology].append(posterior_contrast(c.image, c.lesion_masks[0]))
            if pathology == "benign":
                assert s["orientation"] == "parallel" and s["margin"] == "circumscribed"
                assert s["posterior"] == "enhancement" and s["shape"] in ("oval", "round")
            else:
                assert s["orientation"] == "not parallel" and s["margin"] in ("spiculated", "angular")
                assert s["posterior"] == "shadowing" and s["shape"] == "irregular"
    ben, mal = np.asarray(rows["benign"]), np.asarray(rows["malignant"])
    # height / width: benign wider than tall, malignant taller than wide
    assert ben[:, 0].mean() < 0.85 < 1.1 < mal[:, 0].mean()
    assert (ben[:, 0] < 1.0).mean() >= 0.9 and (mal[:, 0] > 1.0).mean() >= 0.9
    # irregular margins: lower solidity and circularity
    assert mal[:, 1].mean() < ben[:, 1].mean() - 0.1
    assert mal[:, 2].mean() < ben[:, 2].mean() - 0.2
    # posterior features: enhancement behind benign, shadowing behind malignant
    pb, pm = np.asarray(post["benign"]), np.asarray(post["malignant"])
    assert (pb > 0).mean() >= 0.85 and (pm < 0).mean() >= 0.95
    assert pb.mean() > 10 and pm.mean() < -30


def test_birads_consistent_with_pathology():
    ben = [generate_case(s, "benign").birads for s in range(40)]
    mal = [generate_case(s, "malignant").birads for s in range(40)]
    assert np.mean([b in ("2", "3", "4a") for b in ben]) >= 0.85
    assert np.mean([b in ("4b", "4c", "5") for b in mal]) >= 0.85
    assert generate_case(0, "benign", birads="4c").birads == "4c"


@pytest.mark.parametrize("device", ["PhantomMed-L7", "PhantomMed-C5"])
def test_cine_moves(device):
    frames = generate_cine(7, "benign", device, size=(96, 128), n_frames=8)
    assert [f.frame for f in frames] == list(range(8))
    for f in frames:
        assert len(f.boxes) == 1 and f.boxes[0] == mask_to_box(f.lesion_masks[0])
    cx = [(f.boxes[0][0] + f.boxes[0][2]) / 2 for f in frames]
    assert abs(cx[-1] - cx[0]) > 0.05  # the probe sweeps laterally
    assert np.all(np.abs(np.diff(cx)) < 0.05)  # smoothly
    fov = frames[0].fov_mask
    g = [_grey(f.image)[fov] for f in frames]
    # consecutive frames are correlated (same anatomy) but not identical (fresh speckle + motion)
    corr = np.corrcoef(g[3], g[4])[0, 1]
    other = _grey(generate_cine(8, "benign", device, size=(96, 128), n_frames=1)[0].image)[fov]
    assert 0.4 < corr < 0.99
    assert corr > np.corrcoef(g[3], other)[0, 1] + 0.2


def test_write_dataset(tmp_path):
    path = write_dataset(tmp_path / "a", n=48, seed=3, size=(64, 80))
    assert path == tmp_path / "a" / "datalist.json"
    dl = json.loads(path.read_text())
    assert dl["schema_version"] == 1
    assert dl["pathologies"] == ["benign", "malignant"] and dl["devices"] == DEVICES
    items = [it for s in ("training", "validation", "test") for it in dl[s]]
    assert len(items) == 48
    assert sorted(it["provenance"]["index"] for it in items) == list(range(48))
    cells = {}
    patients = {}
    for split in ("training", "validation", "test"):
        assert dl[split], f"empty split {split}"
        for it in dl[split]:
            assert it["split"] == split
            assert it["provenance"]["source"] == "phantom"
            assert it["patient_id"].startswith("PH-P") and it["study_id"].startswith("PH-S")
            assert it["width"] == 80 and it["height"] == 64
            assert it["birads"] and it["device"] in DEVICES
            patients.setdefault(it["patient_id"], set()).add(split)
            cells[(it["pathology"], it["device"])] = cells.get((it["pathology"], it["device"]), 0) + 1
            assert not it["image"].startswith("/")
            img = np.asarray(Image.open(path.parent / it["image"]))
            mask = np.asarray(Image.open(path.parent / it["mask"]))
            assert img.shape[:2] == mask.shape == (64, 80)
            assert len(it["boxes"]) == 1 and it["boxes"][0] == mask_to_box(mask > 0)
            # the stored seed regenerates the item
            assert np.array_equal(generate_case(it["provenance"]["seed"], it["pathology"], it["device"],
                                                (64, 80)).mask, mask)
    assert set(cells.values()) == {6} and len(cells) == 8  # balanced pathology x device
    assert all(len(s) == 1 for s in patients.values())  # splits by patient
    ids = [it["patient_id"] for it in items]
    assert max(ids.count(p) for p in set(ids)) == 2  # some patients have two images
    # byte-identical on a second run
    path2 = write_dataset(tmp_path / "b", n=48, seed=3, size=(64, 80))
    assert path2.read_bytes() == path.read_bytes()
    for it in items:
        assert (path.parent / it["image"]).read_bytes() == (path2.parent / it["image"]).read_bytes()


def test_write_dataset_loads_with_monai(tmp_path):
    import monai.data as monai_data
    path = write_dataset(tmp_path, n=8, seed=0, size=(48, 48), pathologies=("normal", "malignant"))
    train = monai_data.load_decathlon_datalist(str(path), data_list_key="training")
    assert train and all(str(tmp_path) in t["image"] for t in train)
    normals = [it for s in ("training", "validation", "test") for it in json.loads(path.read_text())[s]
               if it["pathology"] == "normal"]
    assert normals and all(it["boxes"] == [] for it in normals)
    # the project's own validator (schema version 1, device vocabulary, files, patient splits)
    from busgen_monai.data import schema
    assert schema.load_datalist(path)["schema_version"] == 1


def test_sample_grid(tmp_path):
    cases = [generate_case(s, "benign", d) for s, d in enumerate(DEVICES)]
    out = sample_grid([c.image for c in cases], [c.device for c in cases], tmp_path / "g" / "grid.png", ncols=2)
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size[0] > 2 * 128 and im.size[1] > 2 * 128
    with pytest.raises(ValueError, match="labels"):
        sample_grid([cases[0].image], ["a", "b"], tmp_path / "x.png")
