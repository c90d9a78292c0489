import numpy as np
import pytest

from busgen_monai.data.loaders import load_bus_bra
from busgen_monai.data.schema import iter_items
from busgen_monai.inferers.box_prior import BoxPrior, box_features, features_to_boxes


def _items(rng, n, pathology, cx, w, h):
    out = []
    for _ in range(n):
        c = rng.normal([cx, 0.4], 0.03)
        ww, hh = w * rng.uniform(0.9, 1.1), h * rng.uniform(0.9, 1.1)
        out.append({"pathology": pathology, "boxes": [[c[0] - ww / 2, c[1] - hh / 2, c[0] + ww / 2, c[1] + hh / 2]]})
    return out


def test_features_round_trip():
    b = np.array([[0.1, 0.2, 0.5, 0.3], [0.6, 0.1, 0.7, 0.9]])
    assert np.allclose(features_to_boxes(box_features(b)), b)


def test_prior_reproduces_per_pathology_statistics(tmp_path):
    rng = np.random.default_rng(0)
    items = _items(rng, 300, "benign", 0.3, 0.30, 0.15) + _items(rng, 300, "malignant", 0.7, 0.12, 0.20)
    prior = BoxPrior().fit(items)
    for pathology, cx, aspect in (("benign", 0.3, 2.0), ("malignant", 0.7, 0.6)):
        boxes = prior.sample(pathology, 400, seed=1)
        assert boxes.shape == (400, 4)
        assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2] > boxes[:, 0]).all()
        f = box_features(boxes)
        assert abs(f[:, 0].mean() - cx) < 0.03
        assert abs(np.exp(f[:, 2]).mean() - aspect) < 0.25
    # deterministic by seed, different across seeds
    assert np.array_equal(prior.sample("benign", 5, seed=3), prior.sample("benign", 5, seed=3))
    assert not np.array_equal(prior.sample("benign", 5, seed=3), prior.sample("benign", 5, seed=4))
    # the benign prior prefers benign-looking boxes
    ben, mal = items[0]["boxes"], items[-1]["boxes"]
    assert prior.log_density("benign", ben)[0] > prior.log_density("benign", mal)[0]
    # save / load gives the same samples
    path = prior.save(tmp_path / "box_prior.json")
    again = BoxPrior.load(path)
    assert np.allclose(again.sample("malignant", 7, seed=9), prior.sample("malignant", 7, seed=9))


def test_boxes_at_the_border_stay_inside():
    items = [{"pathology": "benign", "boxes": [[0.0, 0.0, 0.5, 0.5 + 0.01 * i]]} for i in range(30)]
    boxes = BoxPrior().fit(items).sample("benign", 100, seed=0)
    assert (boxes >= 0).all() and (boxes <= 1).all()


def test_errors():
    with pytest.raises(ValueError, match="carry no boxes"):
        BoxPrior().fit([{"pathology": "normal", "boxes": []}])
    prior = BoxPrior().fit([{"pathology": "benign", "boxes": [[0.1, 0.1, 0.3, 0.3]]}] * 3)
    with pytest.raises(KeyError, match="no boxes for pathology 'dcis'"):
        prior.sample("dcis", 1)


def test_prior_on_bus_bra(bus_bra_root):
    data = load_bus_bra(bus_bra_root, check_masks=False)
    train = [it for s, _, it in iter_items(data) if s == "training"]
    prior = BoxPrior().fit(train)
    real = {p: box_features(np.array([it["boxes"][0] for it in train if it["pathology"] == p])) for p in prior.pathologies}
    for p in prior.pathologies:
        f = box_features(prior.sample(p, 1000, seed=0))
        # median log-area and aspect of sampled boxes track the real ones
        assert abs(np.median(f[:, 3]) - np.median(real[p][:, 3])) < 0.35
        assert abs(np.median(f[:, 2]) - np.median(real[p][:, 2])) < 0.3
    # malignant lesions in BUS-BRA are less elongated (taller relative to width) than benign ones
    assert np.median(real["malignant"][:, 2]) < np.median(real["benign"][:, 2])
