"""Entry-point object of the busgen-deviceaug plugin (kept free of heavy imports: no torch, no monai)."""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="deviceaug",
    version=__version__,
    description="device-style translation (one CycleGAN per target device), as a MONAI transform and a batch tool",
    components={
        "transform": "busgen_deviceaug.transforms.RandDeviceTranslated",
        "deterministic_transform": "busgen_deviceaug.transforms.DeviceTranslated",
        "bank": "busgen_deviceaug.bank.TranslatorBank",
        "generator": "busgen_deviceaug.networks.CycleGANGenerator",
        "trainer": "busgen_deviceaug.engines.CycleGANTrainer",
        "device_classifier": "busgen_deviceaug.metrics.DeviceClassifier",
    },
    bundles={"device_cyclegan": "bundles/device_cyclegan"},
    commands={
        "device-augment": "busgen_deviceaug.batch.main",
        "device-bank": "busgen_deviceaug.bank.main",
    },
)
