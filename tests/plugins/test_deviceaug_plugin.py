"""busgen-deviceaug is registered through the ``busgen_monai.plugins`` entry point, exactly as a third party."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("busgen_deviceaug")

from busgen_monai.plugins import AugmentationTransform, discover_plugins, locate  # noqa: E402


def test_registered_through_entry_point():
    reg = discover_plugins()
    assert "deviceaug" in reg, reg.errors
    p = reg["deviceaug"]
    assert p.version == __import__("busgen_deviceaug").__version__
    assert p.components["transform"] == "busgen_deviceaug.transforms.RandDeviceTranslated"
    for role in p.components:
        assert reg.component("deviceaug", role) is not None
    assert issubclass(reg.component("deviceaug", "transform"), object)
    bundles = p.bundle_paths()
    assert (bundles["device_cyclegan"] / "configs" / "train.json").is_file()
    assert reg.bundles()["device_cyclegan"] == bundles["device_cyclegan"]
    cmds = reg.commands()
    assert cmds["device-augment"] == ("deviceaug", "busgen_deviceaug.batch.main")
    assert callable(locate(cmds["device-bank"][1]))


def test_transform_meets_the_augmentation_protocol():
    for name in ("RandDeviceTranslated", "DeviceTranslated"):
        cls = locate(f"busgen_deviceaug.transforms.{name}")
        assert isinstance(cls.__new__(cls), AugmentationTransform)  # structural protocol: a dict -> dict callable


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
