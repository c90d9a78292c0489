"""busgen-deviceaug: device-style translation for breast ultrasound (BUSGen's device augmentation).

One CycleGAN per target device turns any image into that device's style while keeping its content; the
trained generators form a *translator bank* that a MONAI dictionary transform (:mod:`.transforms`) and a
batch tool (:mod:`.batch`) apply.

Modules (imported on demand; importing this package imports nothing heavy):

- :mod:`.networks`   ResNet-style CycleGAN generator built from MONAI blocks
- :mod:`.engines`    :class:`~.engines.CycleGANTrainer` (a ``monai.engines.Trainer``), image pool, LR decay
- :mod:`.handlers`   sample-grid handler (original | translated | reconstructed)
- :mod:`.data`       RGB loading, unpaired two-domain dataset, domain split of a datalist
- :mod:`.bank`       translator bank (``bank.json``) and the driver that trains one translator per target
- :mod:`.transforms` ``DeviceTranslated`` / ``RandDeviceTranslated``
- :mod:`.batch`      ``busgen device-augment DATALIST BANK OUT``
- :mod:`.metrics`    lesion-region SSIM and a device classifier
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
