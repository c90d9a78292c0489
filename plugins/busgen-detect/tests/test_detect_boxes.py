"""Anchors and box coder round trip, box conversions and box-preserving transforms, the 2-D detector itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.data.box_utils import box_iou
from monai.transforms import Compose, Resized

from busgen_detect.data import load_items, subset
from busgen_detect.networks import build_detector, count_parameters
from busgen_detect.transforms import NormalisedBoxesToPixelsd, boxes_to_normalised, boxes_to_pixels
from busgen_monai.data.transforms import BoxFlipd


def test_anchor_generator_and_box_coder_round_trip():
    gen = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4], base_anchor_shapes=((8, 8), (12, 8), (8, 12)))
    image = torch.zeros(1, 1, 64, 64)
    feats = [torch.zeros(1, 4, 32, 32), torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 8, 8)]
    anchors = gen(image, feats)[0]
    assert anchors.shape == (3 * (32 * 32 + 16 * 16 + 8 * 8), 4)
    # anchor sizes per level: the base shapes times the level's scale
    wh = (anchors[:, 2:] - anchors[:, :2]).unique(dim=0)
    assert {tuple(v) for v in wh.tolist()} == {(w * s, h * s) for s in (1, 2, 4) for w, h in ((8, 8), (12, 8), (8, 12))}
    # encode ground-truth boxes against random anchors and decode them back
    rng = torch.Generator().manual_seed(0)
    idx = torch.randint(0, anchors.shape[0], (50,), generator=rng)
    xy = torch.rand(50, 2, generator=rng) * 40
    gt = torch.cat([xy, xy + 4 + torch.rand(50, 2, generator=rng) * 20], dim=1)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coder = BoxCoder(weights=weights)
        deltas = coder.encode_single(gt, anchors[idx])
        back = coder.decode_single(deltas, anchors[idx])
        torch.testing.assert_close(back, gt, atol=1e-4, rtol=1e-5)


def test_detector_anchors_match_its_feature_maps():
    det = build_detector("resnet_tiny", returned_layers=(1, 2), fpn_channels=16)
    det.eval()
    with torch.no_grad():
        out = det(torch.rand(2, 1, 64, 64))
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "labels_scores"}
    # three FPN levels at strides 2, 4, 8 (stride-2 stem, no max-pool): 3 anchors per location
    assert det.anchors[0].shape[0] == 3 * (32 * 32 + 16 * 16 + 8 * 8)
    b = out[0]["boxes"]
    assert b.shape[1] == 4 and (b[:, 2:] >= b[:, :2]).all()
    assert 50_000 < count_parameters(det) < 500_000


def test_detector_trains_with_lesion_free_images_in_the_batch():
    torch.manual_seed(0)
    det = build_detector("resnet_tiny")
    det.train()
    images = torch.rand(2, 1, 64, 64)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 30.0, 34.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = det(images, targets)
    assert set(losses) == {"classification", "box_regression"}
    total = losses["classification"] + losses["box_regression"]
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    grads = [p.grad for p in det.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_unknown_backbone_names_the_key():
    with pytest.raises(ValueError, match="backbone"):
        build_detector("resnet999")


def test_normalised_pixel_round_trip():
    boxes = np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    px = boxes_to_pixels(boxes, 48, 64)
    # MONAI order for (C, H, W) tensors: [row1, col1, row2, col2] = [y1 * H, x1 * W, y2 * H, x2 * W]
    torch.testing.assert_close(px[0], torch.tensor([9.6, 6.4, 43.2, 32.0]))
    np.testing.assert_allclose(boxes_to_normalised(px, 48, 64), boxes, atol=1e-6)
    assert boxes_to_pixels([], 64, 64).shape == (0, 4)


def _box_image(box, h, w):
    img = torch.zeros(1, h, w)
    x1, y1, x2, y2 = (int(round(v)) for v in (box[0] * w, box[1] * h, box[2] * w, box[3] * h))
    img[0, y1:y2, x1:x2] = 1.0
    return img


def _bright_box(img):
    """[row1, col1, row2, col2] of the bright pixels (MONAI's order for a (C, H, W) tensor)."""
    rows, cols = np.nonzero(np.asarray(img[0]) > 0.5)
    return [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]


def test_pixel_boxes_follow_monai_anchor_axes():
    """MONAI's anchors put their first coordinate along the tensor's first spatial axis; our pixel boxes must
    too, or every target would be matched with anchors at the transposed position."""
    gen = AnchorGeneratorWithAnchorShape(feature_map_scales=[1], base_anchor_shapes=((2, 2),))
    anchors = gen(torch.zeros(1, 1, 32, 64), [torch.zeros(1, 1, 32, 64)])[0]
    assert anchors[:, 2].max() == pytest.approx(32, abs=1) and anchors[:, 3].max() == pytest.approx(64, abs=1)
    px = boxes_to_pixels([[0.0, 0.0, 1.0, 1.0]], 32, 64)  # the whole (C, 32, 64) image
    torch.testing.assert_close(px[0], torch.tensor([0.0, 0.0, 32.0, 64.0]))


def test_resize_and_flip_keep_boxes_on_the_lesion():
    """A bright rectangle drawn at the box: after Resized (non-square to square) and BoxFlipd, the pixel box
    from NormalisedBoxesToPixelsd still covers the bright rectangle."""
    box = [0.125, 0.25, 0.5, 0.625]
    d = {"image": _box_image(box, 80, 120), "boxes": [box], "labels": [0]}
    pipe = Compose([Resized("image", (64, 64), mode="nearest"), BoxFlipd("image", box_key="boxes"),
                    NormalisedBoxesToPixelsd(ref_key="image")])
    out = pipe(d)
    px = out["boxes"]
    assert px.shape == (1, 4) and out["labels"].tolist() == [0]
    assert box_iou(px, torch.tensor([_bright_box(out["image"])], dtype=torch.float32)).item() > 0.9
    np.testing.assert_allclose(out["boxes_norm"][0], [1 - 0.5, 0.25, 1 - 0.125, 0.625])
    r1, c1, r2, c2 = (int(round(float(v))) for v in px[0])
    assert out["image"][0, r1:r2, c1:c2].float().mean() > 0.9  # the pixel box indexes the lesion as [rows, cols]
    # a lesion-free image keeps zero boxes through the same pipeline
    empty = pipe({"image": torch.zeros(1, 80, 120), "boxes": [], "labels": []})
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def _write_datalist(tmp_path, items):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i, boxes in enumerate(items):
        p = tmp_path / "img" / f"x{i}.png"
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
        rows.append({"image": f"img/x{i}.png", "pathology": "benign" if boxes else "normal", "device": "unknown",
                     "boxes": boxes, "patient_id": f"P{i // 2}", "study_id": f"S{i}", "split": "training",
                     "provenance": {"source": "test"}})
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"schema_version": 1, "training": rows}))
    return path


def test_load_items_keeps_lesion_free_images_and_subsets_by_patient(tmp_path):
    path = _write_datalist(tmp_path, [[[0.1, 0.1, 0.4, 0.4]], [], [[0.2, 0.2, 0.3, 0.5], [0.6, 0.6, 0.9, 0.9]], []])
    items = load_items(path, "training")
    assert [len(it["boxes"]) for it in items] == [1, 0, 2, 0]
    assert items[2]["labels"] == [0, 0] and items[0]["image"].endswith("x0.png")
    assert len(load_items(path, "training", lesion_free=False)) == 2
    sub = subset(items, 2, seed=0)
    assert len(sub) == 2 and len({it["patient_id"] for it in sub}) == 1


def test_bad_boxes_give_one_clear_error(tmp_path):
    path = _write_datalist(tmp_path, [[[0.5, 0.1, 0.4, 0.4]]])
    with pytest.raises(ValueError, match=r"training\[0\].*x1 < x2"):
        load_items(path, "training")
    data = json.loads(path.read_text())
    data["base_dir"] = str(tmp_path)
    with pytest.raises(ValueError, match="normalised"):
        load_items(data, "training", on_bad_box="error")
