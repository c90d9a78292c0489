"""Data for device translation: RGB loading, the unpaired two-domain dataset and the domain split.

Domains for a translator to ``target_device`` (BUSGen's "any source -> target"):

- domain A = every item whose device is not the target (or only the chosen ``source_devices``);
- domain B = every item of the target device.

Items of device ``unknown`` (or the null device) are left out of both domains.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from torch.utils.data import Dataset

__all__ = ["LoadRGBd", "UnpairedDataset", "split_domains", "domain_items", "is_color_domain", "EXCLUDED_DEVICES"]

EXCLUDED_DEVICES = ("unknown", "null", "")


class LoadRGBd(MapTransform):
    """Read image files as channel-first RGB float tensors ``(3, H, W)`` in [0, 1].

    Greyscale files are replicated to three channels (``busgen_monai.data.io.read_image_rgb``), so grey and
    tinted devices share one tensor layout. Relative paths are resolved against ``base_dir``.

    Args:
        keys: keys holding file paths (default ``"image"``).
        base_dir: folder relative paths are relative to (the datalist's folder).
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection = "image", base_dir: str | os.PathLike | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.base_dir = Path(base_dir) if base_dir else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from busgen_monai.data.io import read_image_rgb

        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            if self.base_dir is not None and not path.is_absolute():
                path = self.base_dir / path
            arr = read_image_rgb(path)
            d[key] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0
        return d


class UnpairedDataset(Dataset, Randomizable):
    """Unpaired samples from two domains for CycleGAN training.

    Item ``i`` pairs ``dataset_a[i % len(a)]`` with a *random* item of ``dataset_b`` (drawn with the dataset's
    own random state, reseeded per DataLoader worker by ``monai.data.DataLoader``), so an epoch visits every
    A image once (``len = max(len(a), len(b))``) and the pairing changes from epoch to epoch.

    Returns ``{"image_a": ..., "image_b": ..., "device_a": str, "device_b": str}`` (devices from the items'
    ``device`` keys when present).

    Args:
        dataset_a: dataset of domain A (e.g. a ``monai.data.CacheDataset`` of preprocessed items).
        dataset_b: dataset of domain B.
        image_key: the image key inside the domain items (default ``"image"``).
        seed: seed of the random B draw.
    """

    def __init__(self, dataset_a: Sequence, dataset_b: Sequence, image_key: str = "image", seed: int = 0) -> None:
        if len(dataset_a) == 0 or len(dataset_b) == 0:
            raise ValueError(f"UnpairedDataset: both domains need images (A has {len(dataset_a)}, "
                             f"B has {len(dataset_b)}); check the datalist's devices and the chosen target")
        self.dataset_a = dataset_a
        self.dataset_b = dataset_b
        self.image_key = image_key
        self.set_random_state(seed=seed)

    def __len__(self) -> int:
        return max(len(self.dataset_a), len(self.dataset_b))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> UnpairedDataset:
        """Seed the B draw and (with ``seed``) the random transforms of both domain datasets.

        ``monai.data.DataLoader`` calls this once per worker (``set_rnd``), which stops at the first object
        that has ``set_random_state``; forwarding the seed keeps the domains' augmentations decorrelated
        across workers.
        """
        super().set_random_state(seed=seed, state=state)
        if seed is not None:
            from monai.data.utils import set_rnd

            set_rnd(self.dataset_a, seed + 1)
            set_rnd(self.dataset_b, seed + 1001)
        return self

    def randomize(self, data: Any = None) -> None:
        self._b_index = int(self.R.randint(len(self.dataset_b)))

    def _get(self, ds: Sequence, i: int) -> Mapping:
        item = ds[i]
        if not isinstance(item, Mapping) or self.image_key not in item:
            raise KeyError(f"UnpairedDataset: domain items must be dicts with key {self.image_key!r}")
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        self.randomize()
        a = self._get(self.dataset_a, int(index) % len(self.dataset_a))
        b = self._get(self.dataset_b, self._b_index)
        return {"image_a": a[self.image_key], "image_b": b[self.image_key],
                "device_a": str(a.get("device", "")), "device_b": str(b.get("device", ""))}


def domain_items(datalist: Mapping | str | os.PathLike, splits: Sequence[str] = ("training",)) -> tuple[list[dict], Path]:
    """Items of the chosen splits with absolute ``image``/``mask`` paths, and the datalist's folder."""
    from busgen_monai.data.schema import iter_items, load_datalist

    if not isinstance(datalist, Mapping):
        if datalist is None or str(datalist) == "":
            raise ValueError("no datalist given: set the config key 'datalist' (e.g. --datalist data/phantom/datalist.json)")
        datalist = load_datalist(datalist, check_files=False)
    base = Path(datalist.get("base_dir", "."))
    unknown_splits = [s for s in splits if s not in ("training", "validation", "test")]
    if unknown_splits:
        raise ValueError(f"unknown split(s) {unknown_splits}; use training, validation or test")
    out = []
    for split, _, item in iter_items(datalist):
        if split not in splits:
            continue
        it = dict(item)
        for key in ("image", "mask"):
            if it.get(key) and not os.path.isabs(it[key]):
                it[key] = str((base / it[key]).resolve())
        out.append(it)
    return out, base


def split_domains(
    datalist: Mapping | str | os.PathLike,
    target_device: str,
    source_devices: Sequence[str] | None = None,
    splits: Sequence[str] = ("training",),
    max_items: int | None = None,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Split a datalist into domain A (sources) and domain B (the target device).

    Args:
        datalist: datalist dict (from ``load_datalist``) or path.
        target_device: canonical device name of domain B.
        source_devices: devices of domain A (default: every device except the target).
        splits: splits to draw from (default training only).
        max_items: keep at most this many items per domain (random subset, ``seed``), for quick runs.
        seed: seed of that subset.

    Returns:
        ``(items_a, items_b)`` with absolute image paths.

    Raises:
        ValueError: no target given, or a domain would be empty (the message lists the devices present).
    """
    if not target_device:
        raise ValueError("no target device given: set the config key 'target_device' (e.g. --target_device GE-LOGIQ-7)")
    items, _ = domain_items(datalist, splits)
    present = sorted({str(it.get("device")) for it in items})
    if source_devices is not None and isinstance(source_devices, str):
        source_devices = [source_devices]
    bad = [d for d in (source_devices or []) if d not in present]
    if bad:
        raise ValueError(f"source device(s) {bad} not in the datalist's {list(splits)} split(s); devices present: {present}")
    items_b = [it for it in items if it.get("device") == target_device]
    items_a = [it for it in items if it.get("device") != target_device and str(it.get("device")) not in EXCLUDED_DEVICES
               and (source_devices is None or it.get("device") in source_devices)]
    if not items_b:
        raise ValueError(f"target device {target_device!r} has no images in the {list(splits)} split(s); "
                         f"devices present: {present}")
    if not items_a:
        raise ValueError(f"no source images for target {target_device!r} (source_devices={source_devices}); "
                         f"devices present: {present}")
    if max_items:
        rng = np.random.default_rng(seed)
        items_a = [items_a[i] for i in sorted(rng.permutation(len(items_a))[:max_items])]
        items_b = [items_b[i] for i in sorted(rng.permutation(len(items_b))[:max_items])]
    return items_a, items_b


def is_color_domain(items: Sequence[Mapping], n: int = 16, threshold: float = 4.0, seed: int = 0) -> bool:
    """True when the domain's images are colour (mean |R-G| + |G-B| above ``threshold`` grey levels) on a sample."""
    from busgen_monai.data.io import read_image_rgb

    if not items:
        return False
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(items))[:n]
    score = []
    for i in idx:
        a = read_image_rgb(items[int(i)]["image"]).astype(np.float32)
        score.append(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean())
    return float(np.mean(score)) > threshold
