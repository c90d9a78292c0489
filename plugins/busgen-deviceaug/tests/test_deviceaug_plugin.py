"""busgen-deviceaug is registered through the ``busgen_monai.plugins`` entry point, exactly as a third party."""

from __future__ import annotations

import subprocess
import sys

import pytest

from busgen_monai.plugins import AugmentationTransform, discover_plugins, locate  # noqa: E402


def test_registered_through_entry_point():
    reg = discover_plugins()
    assert "deviceaug" in reg, reg.errors
    p = reg["deviceaug"]
    assert p.version == __import__("busgen_deviceaug").__version__
    assert p.components["transform"] == "busgen_deviceaug.transforms.RandDeviceTranslated"
    for role in p.components:
        assert reg.component("deviceaug", role) is not None
    bundles = p.bundle_paths()
    assert (bundles["device_cyclegan"] / "configs" / "train.json").is_file()
    assert reg.bundles()["device_cyclegan"] == bundles["device_cyclegan"]
    cmds = reg.commands()
    assert cmds["device-augment"] == ("deviceaug", "busgen_deviceaug.batch.main")
    assert callable(locate(cmds["device-bank"][1]))


def test_transform_meets_the_augmentation_protocol(tmp_path):
    """The registered transform, built from the registry, maps an item dict to an item dict in another device."""
    import torch

    from busgen_deviceaug.bank import TranslatorBank
    from busgen_deviceaug.networks import CycleGANGenerator

    bank = TranslatorBank.create(tmp_path / "bank")
    bank.add("GE-LOGIQ-7", CycleGANGenerator(channels=4, num_res_blocks=1), spatial_size=(16, 16), color=False,
             source_devices=["GE-LOGIQ-5"], provenance={"test": True})
    cls = discover_plugins().component("deviceaug", "transform")
    t = cls(keys="image", bank=str(tmp_path / "bank"), prob=1.0)
    assert isinstance(t, AugmentationTransform)
    item = {"image": torch.rand(1, 20, 24), "device": "GE-LOGIQ-5", "boxes": [[0.1, 0.2, 0.5, 0.6]]}
    out = t(dict(item))
    assert out["device"] == "GE-LOGIQ-7" and out["boxes"] == item["boxes"]
    assert out["image"].shape[-2:] == (20, 24) and not torch.equal(out["image"], item["image"])


def test_plugin_module_is_light():
    """Loading the plugin (what `busgen plugins` does) must not import torch or monai."""
    code = ("import sys, busgen_deviceaug.plugin as p; "
            "print(p.PLUGIN.name, 'torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["deviceaug", "False", "False"]


def test_cli_lists_the_command(capsys):
    from busgen_monai.cli import main

    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "deviceaug" in text and "busgen device-augment" in text and "bundle device_cyclegan" in text
    with pytest.raises(SystemExit):
        main(["device-augment", "--help"])
    assert "translator bank" in capsys.readouterr().out
