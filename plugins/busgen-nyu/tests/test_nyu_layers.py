"""Unit tests of the NYU-style model's layers, loss, data grouping and statistics (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busgen_nyu.data import birads_value, breast_counts, collate_breasts, load_breasts
from busgen_nyu.engine import NYULoss, localisation_scores
from busgen_nyu.evaluate import hybrid_scores, mean_ci
from busgen_nyu.networks import GatedAttention, TopTPooling, build_nyu_net, top_t_pool


@pytest.mark.parametrize("t", [0.01, 0.03, 0.1, 0.5, 1.0])
def test_top_t_pooling_equals_sort(t):
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(5, 2, 8, 8, generator=g)
    got = TopTPooling(t)(maps).numpy()
    flat = maps.reshape(5, 2, -1).numpy()
    k = max(1, int(round(t * 64)))
    want = np.sort(flat, axis=-1)[..., ::-1][..., :k].mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (5, 2)


def test_top_t_pooling_rejects_bad_t():
    with pytest.raises(ValueError, match="fraction"):
        TopTPooling(0.0)
    with pytest.raises(ValueError, match="fraction"):
        top_t_pool(torch.rand(1, 1, 2, 2), 1.5)


def _net():
    torch.manual_seed(0)
    return build_nyu_net("resnet_tiny", n_stages=2, no_max_pool=True, top_t=0.05, attention_hidden=16).eval()


def test_attention_one_image_reduces_to_that_image():
    net = _net()
    with torch.no_grad():
        out = net(torch.rand(3, 1, 32, 32))
    torch.testing.assert_close(out["attention"], torch.ones(3, 1))
    torch.testing.assert_close(out["breast"], out["image"][:, 0].clamp(1e-6, 1 - 1e-6))


def test_attention_permutation_invariant_and_weights_sum_to_one():
    net = _net()
    x = torch.rand(2, 5, 32, 32)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        a, b = net(x), net(x[:, perm])
    torch.testing.assert_close(a["breast"], b["breast"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["attention"][:, perm], b["attention"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["attention"].sum(1), torch.ones(2))
    assert (a["attention"] > 0).all()


def test_attention_ignores_masked_images():
    net = _net()
    real = torch.rand(2, 2, 32, 32)
    pad = torch.rand(2, 3, 32, 32) * 5.0  # junk in the padded slots
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]).bool()
    with torch.no_grad():
        alone = net(real)
        padded = net(torch.cat([real, pad], 1), mask)
    torch.testing.assert_close(alone["breast"], padded["breast"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded["attention"][:, 2:], torch.zeros(2, 3))
    torch.testing.assert_close(padded["attention"].sum(1), torch.ones(2))
    # the gated-attention layer on its own: masked instances get weight 0 whatever their features
    ga = GatedAttention(4, 8)
    h = torch.randn(1, 3, 4)
    w1 = ga.weights(h, torch.tensor([[1, 1, 0]]))
    h2 = h.clone()
    h2[0, 2] = 100.0
    torch.testing.assert_close(w1, ga.weights(h2, torch.tensor([[1, 1, 0]])))
    with pytest.raises(ValueError, match="no unmasked"):
        ga.weights(h, torch.zeros(1, 3))


def test_saliency_map_size_and_stride():
    net = build_nyu_net("resnet18", image_size=(256, 256))
    assert net.stride == 32  # 8 x 8 maps for a 256 x 256 input, as in Shen et al.
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 1, 256, 256))
    assert out["saliency"].shape == (1, 1, 2, 8, 8)
    assert float(out["saliency"].min()) >= 0 and float(out["saliency"].max()) <= 1
    with pytest.raises(ValueError, match="2 x 2"):
        build_nyu_net("resnet18", image_size=(32, 32))


def test_loss_is_bce_plus_beta_l1_over_real_images():
    sal = torch.rand(2, 3, 2, 4, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    breast = torch.tensor([[0.2, 0.7], [0.9, 0.4]])
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    pred = {"breast": breast, "saliency": sal, "mask": mask}
    want = torch.nn.functional.binary_cross_entropy(breast, target) + 0.5 * sal[mask].abs().mean()
    torch.testing.assert_close(NYULoss(beta=0.5)(pred, target), want)
    with pytest.raises(ValueError, match="do not match"):
        NYULoss()(pred, torch.zeros(2, 3))


def _datalist():
    def item(i, pid, lat, path, birads):
        return {"image": f"img{i}.png", "mask": f"m{i}.png", "pathology": path, "device": "d", "boxes": [],
                "patient_id": pid, "study_id": f"S{pid}", "split": "training", "laterality": lat, "birads": birads,
                "provenance": {"file": f"img{i}.png"}}

    return {"name": "toy", "base_dir": "/data", "training": [
        item(0, "P1", "L", "benign", "3"), item(1, "P1", "L", "malignant", "4b"), item(2, "P1", "R", "normal", "1"),
        item(3, "P2", "", "benign", "2"), item(4, "P2", "R", "benign", "4a")]}


def test_load_breasts_groups_by_patient_and_laterality():
    breasts = load_breasts(_datalist(), "training", group_by="patient_laterality", validate=False)
    by_id = {b["breast_id"]: b for b in breasts}
    assert sorted(by_id) == ["toy:P1|L", "toy:P1|R", "toy:P2|R"]  # P2's image without laterality excluded
    assert by_id["toy:P1|L"]["label"] == [1.0, 1.0] and by_id["toy:P1|L"]["n_images"] == 2
    assert by_id["toy:P1|L"]["birads"] == pytest.approx(4.5)
    assert by_id["toy:P1|R"]["label"] == [0.0, 0.0] and by_id["toy:P1|R"]["label_name"] == "normal"
    assert by_id["toy:P1|L"]["images"] == ["/data/img0.png", "/data/img1.png"]
    assert by_id["toy:P1|L"]["masks"] == ["/data/m0.png", "/data/m1.png"]
    by_patient = load_breasts(_datalist(), "training", group_by="patient", validate=False)
    assert [b["n_images"] for b in by_patient] == [3, 2]
    assert breast_counts(by_patient)["images"] == 5
    with pytest.raises(ValueError, match="group_by"):
        load_breasts(_datalist(), group_by="side")
    no_lat = _datalist()
    for it in no_lat["training"]:
        it["laterality"] = ""
    with pytest.raises(ValueError, match="group_by=patient"):
        load_breasts(no_lat, "training", validate=False)


def test_birads_value():
    assert birads_value("4c") == pytest.approx(4.8) and birads_value("5") == 5.0
    assert np.isnan(birads_value(None)) and np.isnan(birads_value("x"))


def test_collate_pads_and_masks():
    batch = [{"image": torch.rand(1, 8, 8), "label": [0.0, 1.0], "breast_id": "a", "image_ids": ["a0"]},
             {"image": torch.rand(3, 8, 8), "label": [1.0, 0.0], "breast_id": "b", "image_ids": ["b0", "b1", "b2"]}]
    out = collate_breasts(batch)
    assert out["image"].shape == (2, 3, 8, 8)
    assert out["image_mask"].tolist() == [[True, False, False], [True, True, True]]
    assert float(out["image"][0, 1:].abs().sum()) == 0.0
    assert out["label"].tolist() == [[0.0, 1.0], [1.0, 0.0]] and out["breast_id"] == ["a", "b"]


def test_localisation_scores():
    lesion = np.zeros((64, 64), bool)
    lesion[20:30, 20:30] = True
    m = np.zeros((64, 64))
    m[24, 25] = 1.0
    s = localisation_scores(m, lesion)
    assert s["hit"] == 1.0 and s["hit_strict"] == 1.0
    m2 = np.zeros((64, 64))
    m2[33, 25] = 1.0  # 4 px below the lesion: within the 15/224 tolerance (4.3 px at 64 px), not inside
    s2 = localisation_scores(m2, lesion)
    assert s2["hit"] == 1.0 and s2["hit_strict"] == 0.0
    m3 = np.zeros((64, 64))
    m3[60, 60] = 1.0
    assert localisation_scores(m3, lesion)["hit"] == 0.0
    full = lesion.astype(float)
    assert localisation_scores(full, lesion)["dice"] == pytest.approx(1.0)


def test_hybrid_and_mean_ci():
    ai = np.array([0.1, 0.2, 0.8, 0.9])
    reader = np.array([2.0, 3.0, 4.0, 5.0])
    h = hybrid_scores(ai, reader)
    za = (ai - ai.mean()) / ai.std()
    zr = (reader - reader.mean()) / reader.std()
    np.testing.assert_allclose(h, (za + zr) / 2)
    ci = mean_ci([1, 0, 1, 1], ["a", "a", "b", "c"], n_boot=200)
    assert ci["estimate"] == 0.75 and 0.0 <= ci["lower"] <= 0.75 <= ci["upper"] <= 1.0 and ci["n_groups"] == 3


def test_bus_bra_breasts_are_patients(bus_bra_root):
    from busgen_monai.data.loaders import load_bus_bra

    data = load_bus_bra(bus_bra_root, check_masks=False)
    breasts = load_breasts(data, "all", group_by="patient", validate=False)
    assert len(breasts) == len({b["patient_id"] for b in breasts}) == 1064
    assert max(b["n_images"] for b in breasts) == 2 and sum(b["n_images"] for b in breasts) == 1875
    assert all(b["label"][0] + b["label"][1] == 1.0 for b in breasts)  # one lesion per BUS-BRA patient
    assert all(np.isfinite(b["birads"]) for b in breasts)


def test_load_breast_leaves_out_unreadable_images(tmp_path):
    from PIL import Image

    from busgen_nyu.data import LoadBreastd

    good = tmp_path / "good.png"
    Image.fromarray((np.arange(40 * 30) % 255).astype(np.uint8).reshape(40, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    item = {"breast_id": "b1", "images": [str(bad), str(good)], "image_ids": ["bad", "good"], "masks": ["", ""]}
    out = LoadBreastd(image_size=(16, 16), load_masks=True)(item)
    assert out["image"].shape == (1, 16, 16) and out["image_ids"] == ["good"]
    assert out["lesion_mask"].shape == (1, 16, 16) and out["has_mask"].tolist() == [0.0]
    assert "bad.png" in out["rejected_images"][0]
    with pytest.raises(ValueError, match="none of its images"):
        LoadBreastd(image_size=(16, 16))({"breast_id": "b2", "images": [str(bad)]})
