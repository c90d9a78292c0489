"""ConditionalDiffusionPrepareBatch: what it hands MONAI's inferer, and the measured dropout rate."""

from __future__ import annotations

import pytest
import torch

from busgen_monai.engines import ConditionalDiffusionPrepareBatch
from busgen_monai.networks import pack_conditions, unpack_conditions
from busgen_monai.networks.conditions import CONDITION_KEYS


def _batch(n=8):
    cond = pack_conditions([1] * n, [5] * n, [3] * n, [[[0.1, 0.2, 0.5, 0.6]]] * n, max_boxes=2)
    return {"image": torch.rand(n, 3, 8, 8) * 2 - 1, "cond": cond[:, 0]}  # (B, K) as collated from (1, K) items


def test_returns_what_the_monai_inferer_needs():
    pb = ConditionalDiffusionPrepareBatch(500, drop_prob=0.0)
    batch = _batch()
    images, target, args, kwargs = pb(batch, torch.device("cpu"))
    assert torch.equal(images, batch["image"]) and args == ()
    assert set(kwargs) == {"noise", "timesteps", "condition", "mode"} and kwargs["mode"] == "crossattn"
    assert torch.equal(target, kwargs["noise"]) and target.shape == images.shape
    assert kwargs["timesteps"].shape == (8,) and 0 <= kwargs["timesteps"].min() and kwargs["timesteps"].max() < 500
    assert kwargs["condition"].shape == (8, 1, 11)
    assert torch.equal(kwargs["condition"][:, 0], batch["cond"])  # p = 0: nothing dropped
    with pytest.raises(KeyError, match="'cond'"):
        pb({"image": batch["image"]})


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_joint_dropout_rate_matches_config_and_drops_everything(p):
    pb = ConditionalDiffusionPrepareBatch(500, drop_prob=p, drop_mode="joint", seed=0)
    n_batches, bs = 500, 8
    for _ in range(n_batches):
        _, _, _, kw = pb(_batch(bs))
        parts = unpack_conditions(kw["condition"])
        dropped = pb.last_drop_mask["pathology"]
        # dropped items are null in every condition at once, kept items untouched
        assert (parts.pathology[dropped] == 0).all() and (parts.device[dropped] == 0).all()
        assert (parts.birads[dropped] == 0).all() and not parts.box_valid[dropped].any()
        assert (parts.pathology[~dropped] == 1).all() and parts.box_valid[~dropped, 0].all()
    n = n_batches * bs
    assert pb.num_items == n
    rates = pb.drop_rates
    sigma = (p * (1 - p) / n) ** 0.5
    for key in (*CONDITION_KEYS, "all"):
        assert abs(rates[key] - p) < 4 * sigma, (key, rates[key])
    assert pb.expected_drop_rates()["all"] == p


def test_independent_dropout_rates_per_condition():
    probs = {"pathology": 0.05, "device": 0.2, "boxes": 0.5}
    pb = ConditionalDiffusionPrepareBatch(500, drop_prob=0.1, drop_mode="independent", drop_probs=probs, seed=1)
    for _ in range(600):
        _, _, _, kw = pb(_batch(8))
        parts = unpack_conditions(kw["condition"])
        m = pb.last_drop_mask
        assert torch.equal(parts.device == 0, m["device"]) and torch.equal(~parts.box_valid[:, 0], m["boxes"])
    n = pb.num_items
    expected = pb.expected_drop_rates()
    assert expected["birads"] == 0.1  # default for conditions not listed
    for key in CONDITION_KEYS:
        p = expected[key]
        assert abs(pb.drop_rates[key] - p) < 4 * (p * (1 - p) / n) ** 0.5, key
    assert pb.drop_rates["all"] < 0.01
    pb.reset_counters()
    assert pb.num_items == 0 and pb.drop_rates["pathology"] == 0


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="drop_mode"):
        ConditionalDiffusionPrepareBatch(500, drop_mode="sometimes")
    with pytest.raises(ValueError, match="unknown conditions"):
        ConditionalDiffusionPrepareBatch(500, drop_mode="independent", drop_probs={"colour": 0.1})
    with pytest.raises(ValueError, match="only used with drop_mode='independent'"):
        ConditionalDiffusionPrepareBatch(500, drop_probs={"device": 0.1})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ConditionalDiffusionPrepareBatch(500, drop_prob=1.5)
