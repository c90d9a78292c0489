"""DeviceTranslated / RandDeviceTranslated and the translator bank, with small (untrained) generators.

Untrained generators are enough here: these tests check the transform contract (geometry keys untouched,
device bookkeeping, types/ranges, reproducibility, config construction), not translation quality
(see test_deviceaug_train.py).
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch

from monai.data import DataLoader, Dataset, MetaTensor  # noqa: E402

from busgen_monai.plugins import AugmentationTransform  # noqa: E402

from busgen_deviceaug.bank import BankError, TranslatorBank  # noqa: E402
from busgen_deviceaug.networks import CycleGANGenerator  # noqa: E402
from busgen_deviceaug.transforms import DeviceTranslated, RandDeviceTranslated  # noqa: E402

DEVICES = ["GE-LOGIQ-7", "GE-LOGIQ-5", "TOSHIBA-Aplio-300"]


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> TranslatorBank:
    root = tmp_path_factory.mktemp("bank")
    bank = TranslatorBank.create(root)
    for k, dev in enumerate(DEVICES):
        torch.manual_seed(k)
        g = CycleGANGenerator(channels=4, num_res_blocks=1)
        bank.add(dev, g, spatial_size=(32, 32), color=(dev == "TOSHIBA-Aplio-300"),
                 source_devices=[d for d in DEVICES if d != dev], provenance={"test": True})
    return TranslatorBank(root)


def _item(device="GE-LOGIQ-5", shape=(3, 40, 48)):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, *shape[1:], generator=g) > 0.8).to(torch.uint8)
    return {
        "image": torch.rand(shape, generator=g),
        "mask": mask,
        "boxes": [[0.1, 0.2, 0.5, 0.6]],
        "label": 1,
        "pathology": "malignant",
        "device": device,
        "patient_id": "P1",
    }


def test_bank_roundtrip_and_lookup(bank):
    assert bank.devices == DEVICES and "GE-LOGIQ-7" in bank and len(bank) == 3
    e = bank.entry("GE-LOGIQ-7")
    assert e["weights"] == "translators/GE-LOGIQ-7.pt" and e["value_range"] == [-1, 1]
    assert e["network"]["channels"] == 4 and e["source_devices"] == ["GE-LOGIQ-5", "TOSHIBA-Aplio-300"]
    assert bank.generator_hash("GE-LOGIQ-7") == e["sha256"]
    assert bank.is_color("TOSHIBA-Aplio-300") and not bank.is_color("GE-LOGIQ-7")
    g = bank.generator("GE-LOGIQ-7")
    assert not g.training and bank.generator("GE-LOGIQ-7") is g  # cached
    y = bank.translate(torch.zeros(2, 1, 20, 28), "GE-LOGIQ-7")  # any size, one channel
    assert y.shape == (2, 3, 20, 28) and y.min() >= -1 and y.max() <= 1
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])  # greyscale style


def test_bank_errors_are_clear(bank, tmp_path):
    with pytest.raises(BankError, match="no translator for device 'Nope'.*GE-LOGIQ-7"):
        bank.entry("Nope")
    with pytest.raises(BankError, match="no bank.json"):
        TranslatorBank(tmp_path)
    (tmp_path / "bank.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(BankError, match="not a busgen-deviceaug-bank"):
        TranslatorBank(tmp_path)
    with pytest.raises(BankError, match="not in bank"):
        DeviceTranslated("image", bank=bank, target_device="Nope")
    with pytest.raises(BankError, match=r"device\(s\) \['Nope'\] not in bank"):
        RandDeviceTranslated("image", bank=bank, devices=["Nope"])


def test_deterministic_keeps_geometry_and_records_device(bank):
    item = _item()
    before = copy.deepcopy(item)
    t = DeviceTranslated("image", bank=bank.root, target_device="GE-LOGIQ-7")
    assert isinstance(t, AugmentationTransform)
    out = t(item)
    assert out is not item and item["image"].equal(before["image"])  # input not modified
    assert out["mask"] is item["mask"] and out["mask"].equal(before["mask"])
    assert out["boxes"] == before["boxes"] and out["label"] == 1 and out["pathology"] == "malignant"
    assert out["device"] == "GE-LOGIQ-7" and out["device_translated_from"] == "GE-LOGIQ-5"
    assert out["image"].shape == (3, 40, 48) and out["image"].dtype == torch.float32
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 1
    assert not out["image"].equal(item["image"])
    assert torch.allclose(out["image"], t(item)["image"])  # deterministic
    # same device: left unchanged, bookkeeping says so
    same = t(_item(device="GE-LOGIQ-7"))
    assert same["image"].equal(_item(device="GE-LOGIQ-7")["image"]) and same["device_translated_from"] == ""


@pytest.mark.parametrize("kind", ["numpy", "metatensor", "one_channel", "uint8", "minus_one_one"])
def test_types_and_value_ranges(bank, kind):
    img = torch.rand(3, 32, 32)
    vr = (0.0, 1.0)
    if kind == "numpy":
        img = img.numpy()
    elif kind == "metatensor":
        img = MetaTensor(img, meta={"filename_or_obj": "x.png"})
    elif kind == "one_channel":
        img = img[:1]
    elif kind == "uint8":
        img, vr = (img * 255).to(torch.uint8).numpy(), (0, 255)
    else:
        img, vr = img * 2 - 1, (-1.0, 1.0)
    out = DeviceTranslated("image", bank=bank, target_device="TOSHIBA-Aplio-300", value_range=vr)(
        {"image": img, "device": "GE-LOGIQ-5"})["image"]
    assert type(out) is type(img) and out.shape == img.shape and out.dtype == img.dtype
    lo, hi = vr
    assert lo <= float(out.min()) and float(out.max()) <= hi
    if kind == "metatensor":
        assert out.meta["filename_or_obj"] == "x.png"


def test_bad_image_shape_message(bank):
    t = DeviceTranslated("image", bank=bank, target_device="GE-LOGIQ-7")
    with pytest.raises(ValueError, match=r"channel-first image \(C, H, W\)"):
        t({"image": torch.rand(32, 32), "device": "GE-LOGIQ-5"})


def test_random_transform_is_reproducible_by_seed(bank):
    items = [_item(device=d) for d in DEVICES * 4]

    def run(seed):
        t = RandDeviceTranslated("image", bank=bank, prob=0.7).set_random_state(seed=seed)
        return [t(it) for it in items]

    a, b, c = run(3), run(3), run(4)
    assert [o["device"] for o in a] == [o["device"] for o in b]
    assert all(x["image"].equal(y["image"]) for x, y in zip(a, b))
    assert [o["device_translated_from"] for o in a] != [o["device_translated_from"] for o in c] or \
        [o["device"] for o in a] != [o["device"] for o in c]
    applied = [o for o in a if o["device_translated_from"]]
    assert 0 < len(applied) < len(a)  # prob 0.7 over 12 items
    for it, o in zip(items, a):
        assert o["boxes"] == it["boxes"] and o["mask"] is it["mask"]
        if o["device_translated_from"]:
            assert o["device_translated_from"] == it["device"] != o["device"]  # never its own device
        else:
            assert o["device"] == it["device"] and o["image"].equal(it["image"])


def test_random_transform_prob_and_device_choice(bank):
    it = _item(device="GE-LOGIQ-5")
    never = RandDeviceTranslated("image", bank=bank, prob=0.0).set_random_state(0)(it)
    assert never["device"] == "GE-LOGIQ-5" and never["device_translated_from"] == ""
    only = RandDeviceTranslated("image", bank=bank, prob=1.0, devices=["GE-LOGIQ-7"]).set_random_state(0)
    assert {only(it)["device"] for _ in range(5)} == {"GE-LOGIQ-7"}
    # the only candidate is the item's own device: nothing to do
    own = RandDeviceTranslated("image", bank=bank, prob=1.0, devices=["GE-LOGIQ-5"])(it)
    assert own["device"] == "GE-LOGIQ-5" and own["device_translated_from"] == ""


def test_constructible_from_bundle_config(bank):
    from monai.bundle import ConfigParser

    parser = ConfigParser({
        "bank_dir": str(bank.root),
        "augmentation": [
            {"_target_": "busgen_deviceaug.transforms.RandDeviceTranslated", "keys": "image", "bank": "@bank_dir",
             "prob": 1.0, "devices": ["GE-LOGIQ-7", "TOSHIBA-Aplio-300"]},
        ],
        "preprocessing": {"_target_": "Compose", "transforms": "@augmentation"},
    })
    compose = parser.get_parsed_content("preprocessing")
    compose.set_random_state(seed=0)
    out = compose(_item())
    assert out["device"] in ("GE-LOGIQ-7", "TOSHIBA-Aplio-300") and out["device_translated_from"] == "GE-LOGIQ-5"


def test_in_a_dataloader_batches_collate(bank):
    """Every item gets `device_translated_from`, so translated and untouched items collate together."""
    t = RandDeviceTranslated("image", bank=bank, prob=0.5)
    t2 = pickle.loads(pickle.dumps(t))  # DataLoader workers pickle the transform (generator cache dropped)
    assert t2.bank.devices == DEVICES
    data = [{k: v for k, v in _item(device=d).items() if k != "boxes"} for d in DEVICES * 2]
    ds = Dataset(data, transform=t)
    batch = next(iter(DataLoader(ds, batch_size=6, num_workers=0)))
    assert batch["image"].shape == (6, 3, 40, 48) and len(batch["device_translated_from"]) == 6
    assert np.all([isinstance(s, str) for s in batch["device"]])
