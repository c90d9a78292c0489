"""Checks that a translation keeps the content and changes the style.

- **Content**: :func:`lesion_ssim` -- SSIM (``monai.metrics.SSIMMetric``) between the greyscale lesion region of
  the original and of the translated image (structure around the lesion must survive the restyling).
- **Style**: :class:`DeviceClassifier` -- a small MONAI CNN (``monai.networks.nets.Classifier``) trained on real
  images with device labels (``monai.engines.SupervisedTrainer``); translated images should be assigned to the
  target device, not to their source device (:meth:`DeviceClassifier.agreement`).

Image convention here: float tensors ``(N, C, H, W)`` (or one ``(C, H, W)``) in [-1, 1], C = 1 or 3.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["to_gray", "lesion_region", "lesion_ssim", "batch_lesion_ssim", "DeviceClassifier"]


def to_gray(img: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W)`` -> ``(..., 1, H, W)`` with ITU-R 601 luma weights (C = 3) or unchanged (C = 1)."""
    img = torch.as_tensor(img).float()
    if img.shape[-3] == 1:
        return img
    w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img[..., :3, :, :] * w).sum(dim=-3, keepdim=True)


def lesion_region(shape: Sequence[int], boxes: Sequence[Sequence[float]] | None = None, mask: Any = None,
                  margin: float = 0.15, min_size: int = 24) -> tuple[int, int, int, int]:
    """Pixel region ``(y0, y1, x0, x1)`` around the lesion(s): the union of ``boxes`` (normalised x1, y1, x2, y2)
    or the bounding box of ``mask`` (non-zero), grown by ``margin`` of its size on each side and to at least
    ``min_size`` pixels (clipped to the image). Whole image when there is neither."""
    h, w = int(shape[-2]), int(shape[-1])
    if mask is not None and np.asarray(mask).any():
        m = np.asarray(mask)
        m = m.reshape(m.shape[-2:]) if m.ndim > 2 else m
        ys, xs = np.nonzero(m)
        if m.shape != (h, w):  # mask at another resolution: scale its box
            sy, sx = h / m.shape[0], w / m.shape[1]
            y0, y1, x0, x1 = ys.min() * sy, (ys.max() + 1) * sy, xs.min() * sx, (xs.max() + 1) * sx
        else:
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    elif boxes:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x0, y0 = b[:, 0].min() * w, b[:, 1].min() * h
        x1, y1 = b[:, 2].max() * w, b[:, 3].max() * h
    else:
        return 0, h, 0, w
    gy, gx = (y1 - y0) * margin, (x1 - x0) * margin
    y0, y1, x0, x1 = y0 - gy, y1 + gy, x0 - gx, x1 + gx
    need_h, need_w = min(min_size, h), min(min_size, w)
    if y1 - y0 < need_h:
        c = (y0 + y1) / 2
        y0, y1 = c - need_h / 2, c + need_h / 2
    if x1 - x0 < need_w:
        c = (x0 + x1) / 2
        x0, x1 = c - need_w / 2, c + need_w / 2
    # shift a grown region back inside the image (then clip what is still outside)
    dy = -y0 if y0 < 0 else (h - y1 if y1 > h else 0.0)
    dx = -x0 if x0 < 0 else (w - x1 if x1 > w else 0.0)
    y0, y1, x0, x1 = y0 + dy, y1 + dy, x0 + dx, x1 + dx
    y0, x0 = max(0, int(np.floor(y0))), max(0, int(np.floor(x0)))
    y1, x1 = min(h, int(np.ceil(y1))), min(w, int(np.ceil(x1)))
    return y0, y1, x0, x1


def lesion_ssim(original: Any, translated: Any, boxes: Sequence[Sequence[float]] | None = None, mask: Any = None,
                value_range: Sequence[float] = (-1.0, 1.0), margin: float = 0.15, min_size: int = 24,
                win_size: int = 7) -> float:
    """SSIM between the greyscale lesion regions of two ``(C, H, W)`` images of the same size.

    Args:
        original, translated: images in ``value_range``.
        boxes: normalised lesion boxes; or ``mask``: lesion mask (non-zero = lesion). Neither: whole image.
        value_range: intensity range (SSIM's data range is ``high - low``).
        margin, min_size: see :func:`lesion_region`.
        win_size: SSIM window (reduced to fit small regions; always odd).
    """
    from monai.metrics import SSIMMetric

    a = to_gray(torch.as_tensor(original))
    b = to_gray(torch.as_tensor(translated))
    if a.shape != b.shape:
        raise ValueError(f"lesion_ssim: images differ in shape {tuple(a.shape)} vs {tuple(b.shape)}")
    y0, y1, x0, x1 = lesion_region(a.shape, boxes, mask, margin, min_size)
    lo, hi = (float(v) for v in value_range)
    ca = ((a[..., y0:y1, x0:x1] - lo) / (hi - lo)).clamp(0, 1)
    cb = ((b[..., y0:y1, x0:x1] - lo) / (hi - lo)).clamp(0, 1)
    k = min(win_size, ca.shape[-1], ca.shape[-2])
    k = k if k % 2 == 1 else k - 1
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=max(3, k))
    return float(metric(ca[None], cb[None]).mean())


def batch_lesion_ssim(originals: Any, translated: Any, boxes: Sequence | None = None, masks: Sequence | None = None,
                      **kwargs: Any) -> np.ndarray:
    """:func:`lesion_ssim` for each pair of two ``(N, C, H, W)`` batches; returns ``(N,)``."""
    n = len(originals)
    return np.array([
        lesion_ssim(originals[i], translated[i], boxes[i] if boxes is not None else None,
                    masks[i] if masks is not None else None, **kwargs)
        for i in range(n)
    ])


class DeviceClassifier:
    """Small CNN that tells ultrasound devices apart, used to check that translated images carry the target style.

    The network is ``monai.networks.nets.Classifier`` with batch norm (instance norm would normalise away
    exactly the global gain/tint/contrast cues that distinguish devices), trained with
    ``monai.engines.SupervisedTrainer`` on real images.

    Args:
        devices: class names (device names), in class-index order.
        spatial_size: ``(H, W)`` the network works at; other sizes are resized (area interpolation).
        in_channels: image channels (3).
        channels, strides: ``Classifier`` encoder.
        seed: seed of weight initialisation and training shuffles.
    """

    def __init__(self, devices: Sequence[str], spatial_size: Sequence[int] = (64, 64), in_channels: int = 3,
                 channels: Sequence[int] = (16, 32, 64), strides: Sequence[int] = (2, 2, 2), seed: int = 0) -> None:
        from monai.networks.nets import Classifier

        if len(devices) < 2:
            raise ValueError(f"DeviceClassifier needs at least two devices, got {list(devices)}")
        self.devices = list(devices)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.in_channels = in_channels
        self.arch = {"channels": list(channels), "strides": list(strides)}
        self.seed = seed
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
            torch.manual_seed(seed)
            self.net = Classifier(in_shape=(in_channels, *self.spatial_size), classes=len(self.devices),
                                  channels=channels, strides=strides, num_res_units=1, norm="BATCH", dropout=0.1)

    def _prep(self, images: Any) -> torch.Tensor:
        x = torch.as_tensor(images).float()
        if x.ndim == 3:
            x = x[None]
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != self.spatial_size:
            x = F.interpolate(x, size=self.spatial_size, mode="area")
        return x

    def fit(self, images: Any, labels: Sequence[str], epochs: int = 10, batch_size: int = 16, lr: float = 1e-3,
            device: str | torch.device = "cpu") -> DeviceClassifier:
        """Train on ``(N, C, H, W)`` images in [-1, 1] with device-name labels (horizontal flips as augmentation)."""
        from monai.data import DataLoader
        from monai.engines import SupervisedTrainer
        from monai.transforms import Compose, RandFlipd

        unknown = sorted(set(labels) - set(self.devices))
        if unknown:
            raise ValueError(f"DeviceClassifier.fit: labels {unknown} are not among the classes {self.devices}")
        x = self._prep(images)
        y = torch.tensor([self.devices.index(lbl) for lbl in labels])
        flip = Compose([RandFlipd(keys="image", prob=0.5, spatial_axis=1)])
        flip.set_random_state(seed=self.seed)
        data = [{"image": x[i], "label": y[i]} for i in range(len(x))]

        from monai.data import Dataset

        g = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(Dataset(data, transform=flip), batch_size=batch_size, shuffle=True, generator=g)
        self.net.to(device)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        trainer = SupervisedTrainer(device=torch.device(device), max_epochs=epochs, train_data_loader=loader,
                                    network=self.net, optimizer=opt, loss_function=torch.nn.CrossEntropyLoss(),
                                    decollate=False)
        with torch.random.fork_rng(devices=[]):  # reproducible dropout/shuffles, global RNG left alone
            torch.manual_seed(self.seed)
            trainer.run()
        self.net.eval()
        return self

    @torch.no_grad()
    def predict_proba(self, images: Any, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
        """Class probabilities ``(N, n_devices)``."""
        self.net.to(device).eval()
        x = self._prep(images)
        out = [torch.softmax(self.net(x[i:i + batch_size].to(device)), dim=1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()

    def predict(self, images: Any, **kwargs: Any) -> list[str]:
        """Most likely device per image."""
        return [self.devices[i] for i in self.predict_proba(images, **kwargs).argmax(axis=1)]

    def accuracy(self, images: Any, labels: Sequence[str]) -> float:
        pred = self.predict(images)
        return float(np.mean([p == t for p, t in zip(pred, labels)]))

    def agreement(self, images: Any, target: str, source: str | None = None) -> dict[str, Any]:
        """How translated images are classified.

        Returns:
            ``{"n", "target_rate", "source_rate", "other_rate", "counts"}`` where ``target_rate`` is the fraction
            assigned to ``target`` and ``source_rate`` to ``source``.
        """
        pred = self.predict(images)
        n = len(pred)
        counts = {d: pred.count(d) for d in self.devices if pred.count(d)}
        t = pred.count(target) / n if n else float("nan")
        s = pred.count(source) / n if (n and source is not None) else float("nan")
        return {"n": n, "target_rate": t, "source_rate": s,
                "other_rate": (1.0 - t - (s if source is not None else 0.0)) if n else float("nan"),
                "counts": counts}

    def save(self, path: str | os.PathLike) -> None:
        torch.save({"devices": self.devices, "spatial_size": list(self.spatial_size), "in_channels": self.in_channels,
                    "arch": self.arch, "state_dict": self.net.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceClassifier:
        ck: Mapping[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        obj = cls(ck["devices"], ck["spatial_size"], ck["in_channels"], **ck["arch"])
        obj.net.load_state_dict(ck["state_dict"])
        obj.net.eval()
        return obj
