"""Box-preserving crop, flip, intensity jitter, box mask and condition encoding transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busgen_monai.data.dataset import datalist_items
from busgen_monai.data.schema import load_datalist
from busgen_monai.data.transforms import (
    BoxFlipd,
    BoxMaskd,
    BoxSquareCropd,
    EncodeConditionsd,
    IntensityJitterd,
    LoadRGBImaged,
    LoadUltrasoundImaged,
    RandBoxFlipd,
    RandBoxSquareCropd,
    RandIntensityJitterd,
    adjust_intensity,
    box_preserving_window,
    bus_train_transforms,
    crop_boxes,
    crop_square,
    flip_boxes_horizontal,
)
from busgen_monai.networks import ConditionalDiffusionUNet, ConditionCodec, unpack_conditions
from busgen_monai.networks.conditions import box_pixel_ranges, render_box_mask


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from busgen_monai.synthetic import write_dataset

    path = write_dataset(tmp_path_factory.mktemp("phantom"), n=12, seed=3, size=(72, 96))
    return load_datalist(path)


def _mask(boxes, h, w):
    return render_box_mask(torch.tensor(boxes, dtype=torch.float32).reshape(1, -1, 4), None, (h, w))[0]


def _random_boxes(rng, n):
    out = []
    for _ in range(n):
        x1, x2 = sorted(rng.uniform(0, 1, 2))
        y1, y2 = sorted(rng.uniform(0, 1, 2))
        out.append([x1, y1, max(x2, x1 + 0.01), max(y2, y1 + 0.01)])
    return np.clip(out, 0, 1).tolist()


def test_window_always_keeps_every_box():
    rng = np.random.default_rng(0)
    for trial in range(400):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        boxes = _random_boxes(rng, int(rng.integers(0, 4)))
        scale, pos = rng.uniform(), rng.uniform(size=2)
        x0, y0, side = box_preserving_window(h, w, boxes, scale, pos, min_scale=0.3)
        assert side >= 1
        if boxes:
            px = box_pixel_ranges(torch.tensor(boxes, dtype=torch.float64), h, w)
            assert (px[:, 0] >= x0).all() and (px[:, 2] <= x0 + side).all(), (trial, boxes, x0, side)
            assert (px[:, 1] >= y0).all() and (px[:, 3] <= y0 + side).all(), (trial, boxes, y0, side)
        if side <= min(h, w):  # the window stays inside the image unless the boxes need more room
            assert 0 <= x0 <= w - side and 0 <= y0 <= h - side


def test_crop_keeps_box_pixels_and_updates_boxes():
    """The box mask of the cropped boxes equals the crop of the original box mask, pixel for pixel."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        h, w = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        boxes = _random_boxes(rng, int(rng.integers(1, 3)))
        x0, y0, side = box_preserving_window(h, w, boxes, rng.uniform(), rng.uniform(size=2), 0.2)
        new = crop_boxes(boxes, h, w, x0, y0, side)
        mask = _mask(boxes, h, w)
        assert torch.equal(crop_square(mask, x0, y0, side, 0.0), _mask(new, side, side))
        assert mask.sum() == _mask(new, side, side).sum()  # no box pixel lost


def test_crop_pads_when_boxes_are_wider_than_the_image_is_tall():
    img = torch.arange(2 * 10 * 40, dtype=torch.float32).reshape(2, 10, 40)
    boxes = [[0.05, 0.1, 0.95, 0.9]]  # 36 px wide, image only 10 px tall
    out = BoxSquareCropd("image", fill_value=-1.0)({"image": img, "boxes": boxes})
    x0, y0, side = out["crop_window"]
    assert out["image"].shape == (2, side, side) and side >= 36
    assert y0 < 0 and (out["image"][:, : -y0] == -1).all()  # rows above the image are padding
    inside = out["image"][:, -y0 : -y0 + 10]  # the image rows, columns from the window's left edge
    assert torch.equal(inside[:, :, max(-x0, 0)], img[:, :, max(x0, 0)])
    assert torch.equal(_mask(out["boxes"], side, side).sum(), _mask(boxes, 10, 40).sum())


def test_rand_crop_is_square_reproducible_and_varies():
    data = {"image": torch.rand(3, 50, 70), "boxes": [[0.3, 0.3, 0.5, 0.6]]}
    t1 = RandBoxSquareCropd("image", min_scale=0.4).set_random_state(7)
    t2 = RandBoxSquareCropd("image", min_scale=0.4).set_random_state(7)
    windows = []
    for _ in range(5):
        a, b = t1(data), t2(data)
        assert torch.equal(a["image"], b["image"]) and a["boxes"] == b["boxes"]
        assert a["image"].shape[1] == a["image"].shape[2]
        windows.append(tuple(a["crop_window"]))
    assert len(set(windows)) > 1
    det = RandBoxSquareCropd("image", prob=0.0)(data)
    assert det["crop_window"] == BoxSquareCropd("image")(data)["crop_window"]


def test_flip_flips_image_boxes_and_mask_together():
    img = torch.rand(3, 20, 30)
    boxes = [[0.1, 0.2, 0.4, 0.5], [0.55, 0.6, 0.9, 0.95]]
    out = BoxFlipd("image")({"image": img, "boxes": boxes})
    assert torch.equal(out["image"], img.flip(-1))
    assert np.allclose(out["boxes"], flip_boxes_horizontal(boxes))
    assert np.allclose(flip_boxes_horizontal(out["boxes"]), boxes)
    assert torch.equal(_mask(out["boxes"], 20, 30), _mask(boxes, 20, 30).flip(-1))
    always = RandBoxFlipd("image", prob=1.0)({"image": img, "boxes": boxes})
    never = RandBoxFlipd("image", prob=0.0)({"image": img, "boxes": boxes})
    assert torch.equal(always["image"], out["image"]) and torch.equal(never["image"], img)


def test_intensity_jitter_is_bounded_and_reproducible():
    img = torch.linspace(-1, 1, 300).reshape(3, 10, 10)
    assert torch.equal(adjust_intensity(img, 0.0, 1.0), img)
    bright = IntensityJitterd("image", brightness=0.2)({"image": img})["image"]
    assert bright.max() <= 1 and bright.mean() > img.mean()
    low = IntensityJitterd("image", contrast=0.5)({"image": img})["image"]
    assert low.std() < img.std()
    r1 = RandIntensityJitterd("image", prob=1.0).set_random_state(3)
    r2 = RandIntensityJitterd("image", prob=1.0).set_random_state(3)
    a, b = r1({"image": img})["image"], r2({"image": img})["image"]
    assert torch.equal(a, b) and not torch.equal(a, img) and a.min() >= -1 and a.max() <= 1


def test_load_mask_and_encode_on_phantom(phantom):
    item = datalist_items(phantom, "training")[0]
    d = LoadRGBImaged("image")(item)  # the RGB option: grey replicated to three channels
    assert d["image"].shape == (3, 72, 96) and d["image"].dtype == torch.float32
    grey = LoadUltrasoundImaged("image")(item)  # the default: one channel, ITU-R 601 luma of colour files
    from busgen_monai.data.io import read_image_gray

    assert grey["image"].shape == (1, 72, 96)
    assert torch.equal(grey["image"][0], torch.from_numpy(read_image_gray(item["image"])).float())
    assert 0 <= d["image"].min() and d["image"].max() <= 255 and d["image"].max() > 1
    d = BoxMaskd()(d)
    assert d["box_mask"].shape == (1, 72, 96) and d["box_mask"].sum() > 0
    codec = ConditionCodec.from_datalist(phantom)
    d = EncodeConditionsd(codec)(d)
    parts = unpack_conditions(d["cond"][None])
    assert parts.pathology.item() == codec.pathology_id(item["pathology"])
    assert parts.device.item() == codec.device_id(item["device"])
    assert parts.box_valid.sum().item() == len(item["boxes"])
    with pytest.raises(KeyError, match="pathology list"):
        EncodeConditionsd(ConditionCodec(["normal"]))(d)


def test_train_pipeline_output_matches_network_mask(phantom):
    codec = ConditionCodec.from_datalist(phantom)
    net = ConditionalDiffusionUNet(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                   norm_num_groups=8, num_head_channels=8, **codec.network_kwargs())
    xform = bus_train_transforms(codec, image_size=32)
    xform.set_random_state(0)
    for item in datalist_items(phantom, "training")[:4]:
        out = xform(item)
        assert set(out) == {"image", "box_mask", "cond"}
        assert out["image"].shape == (1, 32, 32) and -1 <= out["image"].min() and out["image"].max() <= 1  # grey
        assert out["cond"].shape == (1, codec.width)
        # the network draws exactly the transform's box mask from the packed boxes
        parts = unpack_conditions(out["cond"][None])
        assert torch.equal(net.box_mask(parts, (32, 32))[0], out["box_mask"])
        if item["boxes"]:
            assert out["box_mask"].sum() > 0
    val = bus_train_transforms(codec, image_size=32, augment=False)
    item = datalist_items(phantom, "training")[0]
    assert torch.equal(val(item)["image"], val(item)["image"])
