"""Device-style translation as MONAI dictionary transforms (TorchIO-style deterministic/random pair).

``DeviceTranslated`` turns the image(s) of an item into the style of one target device with the translator
bank's generator; ``RandDeviceTranslated`` only draws *whether* and *to which device* to translate and calls
its deterministic twin, so the random transform is reproducible with ``set_random_state``.

Both keep ``boxes``, ``mask`` and every other key untouched (the translation keeps the geometry: same size,
same lesion position), set the item's ``device`` key to the target and record the original device in
``device_translated_from`` (``""`` when the item was left unchanged, so every item of a batch has the key).

Image convention: channel-first ``(C, H, W)`` with C = 1 or 3 (numpy array, torch tensor or MetaTensor),
intensities in ``value_range`` -- ``(0, 1)`` by default (MONAI's usual scaling), ``(-1, 1)`` for
diffusion-model inputs, or ``(0, 255)``. The output has the same type, dtype, shape and value range (a
one-channel image stays one-channel: the translation's grey level is kept, so colour styles need a
three-channel input). Images of any size are resized to the translator's training size, translated and
resized back; put the transform after the pipeline's resize so no detail is lost twice.

Example (bundle config of the adaptation stage, augmentation hook)::

    {"_target_": "busgen_deviceaug.transforms.RandDeviceTranslated",
     "keys": "image", "bank": "$@bundle_root + '/../device_bank'", "prob": 0.5}
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type

from .bank import BankError, TranslatorBank

__all__ = ["DeviceTranslated", "RandDeviceTranslated", "DeviceTranslateD", "RandDeviceTranslateD"]

NOT_TRANSLATED = ""


def _as_bank(bank: TranslatorBank | str | os.PathLike) -> TranslatorBank:
    return bank if isinstance(bank, TranslatorBank) else TranslatorBank(bank)


class DeviceTranslated(MapTransform):
    """Translate ``keys`` images to ``target_device``'s style with a translator bank (deterministic).

    Args:
        keys: image keys to translate (default ``"image"``).
        bank: a :class:`~busgen_deviceaug.bank.TranslatorBank` or the path of a bank folder / ``bank.json``.
        target_device: device to translate to (must be in the bank).
        value_range: ``(low, high)`` intensity range of the images (``(0, 1)``, ``(-1, 1)`` or ``(0, 255)``).
        device_key: item key holding the device name (updated to the target).
        from_key: item key recording the original device (``""`` when not translated).
        skip_same_device: leave items already of the target device unchanged (default True).
        torch_device: where the generator runs (default ``"cpu"``).
        allow_missing_keys: skip absent image keys.

    Raises:
        BankError: ``target_device`` is not in the bank.
        ValueError: an image is not ``(C, H, W)`` with 1 or 3 channels.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection = "image",
        bank: TranslatorBank | str | os.PathLike | None = None,
        target_device: str | None = None,
        value_range: Sequence[float] = (0.0, 1.0),
        device_key: str = "device",
        from_key: str = "device_translated_from",
        skip_same_device: bool = True,
        torch_device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if bank is None:
            raise ValueError("DeviceTranslated needs `bank` (a translator bank folder or TranslatorBank)")
        self.bank = _as_bank(bank)
        if target_device is not None and target_device not in self.bank:
            raise BankError(f"DeviceTranslated: target device {target_device!r} not in bank {self.bank.root}; "
                            f"it has {self.bank.devices}")
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
        self.target_device = target_device
        self.value_range = (lo, hi)
        self.device_key = device_key
        self.from_key = from_key
        self.skip_same_device = skip_same_device
        self.torch_device = torch_device

    def translate_image(self, img: Any, target_device: str) -> Any:
        """Translate one ``(C, H, W)`` image; returns the same type/dtype/shape/value range."""
        if hasattr(img, "as_tensor"):  # MetaTensor: work on the plain tensor, meta is restored on output
            t = img.as_tensor()
        elif isinstance(img, torch.Tensor):
            t = img
        else:
            t = torch.as_tensor(np.asarray(img))
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"DeviceTranslated: expected a channel-first image (C, H, W) with C in (1, 3), "
                             f"got shape {tuple(t.shape)}")
        lo, hi = self.value_range
        x = (t.float().to(self.torch_device) - lo) / (hi - lo) * 2.0 - 1.0
        y = self.bank.translate(x[None].clamp(-1, 1), target_device, torch_device=self.torch_device)[0]
        if t.shape[0] == 1:
            y = y.mean(dim=0, keepdim=True)
        y = (y + 1.0) / 2.0 * (hi - lo) + lo
        if not torch.is_floating_point(t):
            y = y.round().clamp(lo, hi)
        out, *_ = convert_to_dst_type(y.cpu(), img, dtype=getattr(img, "dtype", None))
        return out

    def __call__(self, data: Mapping[Hashable, Any], target_device: str | None = None) -> dict[Hashable, Any]:
        """Translate ``data``'s images to ``target_device`` (default: the one given at construction)."""
        d = dict(data)
        target = target_device or self.target_device
        if target is None:
            raise ValueError("DeviceTranslated: no target device (pass target_device at construction or call)")
        if target not in self.bank:
            raise BankError(f"DeviceTranslated: target device {target!r} not in bank {self.bank.root}; "
                            f"it has {self.bank.devices}")
        source = str(d.get(self.device_key, "unknown"))
        if self.skip_same_device and source == target:
            d[self.from_key] = NOT_TRANSLATED
            return d
        for key in self.key_iterator(d):
            d[key] = self.translate_image(d[key], target)
        d[self.device_key] = target
        d[self.from_key] = source
        return d


class RandDeviceTranslated(RandomizableTransform, MapTransform):
    """With probability ``prob``, translate the item to a device drawn uniformly from ``devices``.

    Only draws parameters (apply or not, target device) and calls :class:`DeviceTranslated`; the item's own
    device is excluded from the draw when ``exclude_source`` (so an applied translation always changes style).

    Args:
        keys: image keys to translate.
        bank: translator bank (object or folder path).
        prob: probability of translating an item.
        devices: devices to draw from (default: every device of the bank).
        exclude_source: do not draw the item's own device.
        value_range, device_key, from_key, torch_device, allow_missing_keys: as in :class:`DeviceTranslated`.

    Example:
        >>> t = RandDeviceTranslated("image", bank="runs/bank", prob=0.5).set_random_state(seed=0)
        >>> out = t({"image": img, "device": "GE-LOGIQ-5", "boxes": [[0.2, 0.3, 0.5, 0.6]]})
    """

    backend = DeviceTranslated.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        bank: TranslatorBank | str | os.PathLike | None = None,
        prob: float = 0.5,
        devices: Sequence[str] | None = None,
        exclude_source: bool = True,
        value_range: Sequence[float] = (0.0, 1.0),
        device_key: str = "device",
        from_key: str = "device_translated_from",
        torch_device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.translator = DeviceTranslated(keys, bank, None, value_range, device_key, from_key,
                                           skip_same_device=False, torch_device=torch_device,
                                           allow_missing_keys=allow_missing_keys)
        bank_devices = self.translator.bank.devices
        self.devices = list(devices) if devices is not None else list(bank_devices)
        missing = [d for d in self.devices if d not in bank_devices]
        if missing:
            raise BankError(f"RandDeviceTranslated: device(s) {missing} not in bank {self.translator.bank.root}; "
                            f"it has {bank_devices}")
        if not self.devices:
            raise BankError(f"RandDeviceTranslated: bank {self.translator.bank.root} has no translators")
        self.exclude_source = exclude_source
        self._target: str | None = None

    @property
    def bank(self) -> TranslatorBank:
        return self.translator.bank

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandDeviceTranslated:
        super().set_random_state(seed, state)
        return self

    def randomize(self, data: Mapping[Hashable, Any] | None = None) -> None:
        """Draw whether to translate and the target device (never the item's own device if ``exclude_source``)."""
        super().randomize(None)
        self._target = None
        if not self._do_transform:
            return
        source = str((data or {}).get(self.translator.device_key, ""))
        candidates = [d for d in self.devices if not (self.exclude_source and d == source)]
        if candidates:
            self._target = candidates[int(self.R.randint(len(candidates)))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(d)
        if self._target is None:
            d[self.translator.from_key] = NOT_TRANSLATED
            return d
        return self.translator(d, target_device=self._target)


DeviceTranslateD = DeviceTranslated
RandDeviceTranslateD = RandDeviceTranslated
