"""Content and style checks of busgen-deviceaug: lesion region, lesion SSIM, device classifier round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busgen_deviceaug.metrics import DeviceClassifier, lesion_region, lesion_ssim, to_gray  # noqa: E402


def test_lesion_region_from_boxes_and_mask():
    # box covering x 8..16, y 4..12 of a 32 x 32 image, grown by 25 %: 2 px each side
    assert lesion_region((32, 32), [[0.25, 0.125, 0.5, 0.375]], margin=0.25, min_size=4) == (2, 14, 6, 18)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 8:16] = 255
    assert lesion_region((32, 32), mask=mask, margin=0.25, min_size=4) == (2, 14, 6, 18)
    # mask at twice the resolution: same region
    big = np.kron(mask, np.ones((2, 2), np.uint8))
    assert lesion_region((32, 32), mask=big, margin=0.25, min_size=4) == (2, 14, 6, 18)
    # small lesion at the border: grown to min_size and kept inside the image
    y0, y1, x0, x1 = lesion_region((32, 32), [[0.0, 0.0, 0.05, 0.05]], min_size=16)
    assert (y0, x0) == (0, 0) and y1 - y0 == 16 and x1 - x0 == 16
    assert lesion_region((20, 30)) == (0, 20, 0, 30)  # no lesion: whole image


def test_lesion_ssim_sees_structure_not_only_intensity():
    torch.manual_seed(0)
    img = torch.rand(1, 48, 48) * 2 - 1
    assert lesion_ssim(img, img) == pytest.approx(1.0, abs=1e-5)
    restyled = (0.6 * img + 0.2).expand(3, -1, -1)  # contrast/gain change, same structure
    other = torch.rand(1, 48, 48) * 2 - 1
    box = [[0.2, 0.2, 0.6, 0.7]]
    assert lesion_ssim(img, restyled, box) > lesion_ssim(img, other, box) + 0.3
    with pytest.raises(ValueError, match="differ in shape"):
        lesion_ssim(img, torch.zeros(1, 40, 48))
    assert to_gray(torch.ones(2, 3, 4, 4)).shape == (2, 1, 4, 4)


def test_device_classifier_fit_predict_save_load(tmp_path):
    n = 48
    g = torch.Generator().manual_seed(0)
    bright = torch.rand(n, 3, 16, 16, generator=g) * 0.5 + 0.4
    dark = torch.rand(n, 3, 16, 16, generator=g) * 0.5 - 0.9
    x = torch.cat([bright, dark])
    labels = ["Bright-1"] * n + ["Dark-2"] * n
    clf = DeviceClassifier(["Bright-1", "Dark-2"], spatial_size=(16, 16), channels=(4, 8), strides=(2, 2), seed=0)
    state = torch.random.get_rng_state()
    clf.fit(x, labels, epochs=4, batch_size=16)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert clf.accuracy(x, labels) >= 0.95
    agree = clf.agreement(dark[:10], target="Dark-2", source="Bright-1")
    assert agree["n"] == 10 and agree["target_rate"] >= 0.9 and agree["source_rate"] <= 0.1
    clf.save(tmp_path / "clf.pt")
    again = DeviceClassifier.load(tmp_path / "clf.pt")
    assert np.allclose(again.predict_proba(x[:5]), clf.predict_proba(x[:5]), atol=1e-6)
    assert again.predict(torch.zeros(1, 1, 32, 32) + 0.8) == ["Bright-1"]  # 1 channel, other size
    with pytest.raises(ValueError, match="not among the classes"):
        clf.fit(x[:2], ["Bright-1", "Nope"])
