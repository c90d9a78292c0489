"""The judge: a small ensemble of MONAI ResNets trained on real labelled images that predicts the label of a
(generated) image.

Input to the networks is, by default, a crop around the conditioning box(es) grown by ``margin`` on each side
(``crop="box"``), resized to ``image_size`` x ``image_size``: the question the cleaning filter asks is whether the
lesion drawn *in the box* matches its label. Items without a box are judged on the whole image
(``crop="image"`` always uses the whole image).

A judge is saved as a folder: ``judge.json`` (classes, label key, input settings, seeds, validation metrics,
OOD threshold, visibility floor), ``model_seed{S}.pt`` (one state dict per ensemble member) and
``ood_stats.npz`` (mean and precision of the real penultimate features).

Example::

    judge = train_judge("real/datalist.json", out_dir="runs/judge", seeds=(0, 1, 2))
    proba = judge.predict_proba(items, base_dir)          # (N, C), ensemble mean of softmax
    judge = Judge.load("runs/judge")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from busgen_monai.data.io import read_image_rgb
from busgen_monai.data.schema import atomic_write_text, iter_items, load_datalist
from busgen_monai.utils.io import atomic_save_npz, atomic_torch_save

from .checks import MahalanobisScorer, box_visibility

__all__ = ["Judge", "train_judge", "build_judge_network", "load_inputs", "crop_window", "resolve_image",
           "read_split_items"]

logger = logging.getLogger(__name__)


def build_judge_network(num_classes: int, width: Sequence[int] = (16, 32, 64, 128)) -> torch.nn.Module:
    """A 2-D MONAI ResNet (one basic block per stage, ~0.3 M parameters at the default width):
    ``(B, 3, H, W) -> (B, num_classes)`` logits; the input of ``net.fc`` is the penultimate feature."""
    from monai.networks.nets import ResNet

    return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=list(width), spatial_dims=2,
                  n_input_channels=3, num_classes=num_classes, conv1_t_size=7, conv1_t_stride=2)


def resolve_image(item: Mapping, base_dir: str | os.PathLike | None, key: str = "image") -> Path:
    p = Path(str(item[key]))
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def crop_window(boxes: Sequence[Sequence[float]] | None, margin: float) -> tuple[float, float, float, float]:
    """Normalised square-ish window around the union of ``boxes`` grown by ``margin`` x its size on each side,
    clipped to the image; the whole image when there is no box."""
    if not boxes:
        return 0.0, 0.0, 1.0, 1.0
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    side = min(max(side, 0.1), 1.0)
    x1, y1 = min(max(cx - side / 2, 0.0), 1.0 - side), min(max(cy - side / 2, 0.0), 1.0 - side)
    return float(x1), float(y1), float(x1 + side), float(y1 + side)


def load_inputs(items: Sequence[Mapping], base_dir: str | os.PathLike | None, image_size: int = 64,
                crop: str = "box", margin: float = 0.5, images: Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """Items -> ``(N, 3, image_size, image_size)`` float tensor in [-1, 1] (crop, then antialiased resize).

    ``images`` (uint8 arrays, one per item) skips reading the files again."""
    out = torch.empty(len(items), 3, image_size, image_size)
    for i, it in enumerate(items):
        arr = images[i] if images is not None else read_image_rgb(resolve_image(it, base_dir))
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        h, w = arr.shape[:2]
        x1, y1, x2, y2 = crop_window(it.get("boxes") if crop == "box" else None, margin)
        c0, c1 = int(np.floor(x1 * w)), max(int(np.ceil(x2 * w)), int(np.floor(x1 * w)) + 2)
        r0, r1 = int(np.floor(y1 * h)), max(int(np.ceil(y2 * h)), int(np.floor(y1 * h)) + 2)
        t = torch.from_numpy(np.ascontiguousarray(arr[r0:r1, c0:c1, :3])).permute(2, 0, 1).float()[None]
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        out[i] = t[0] / 127.5 - 1.0
    return out


def read_split_items(datalist: str | os.PathLike | Mapping, splits: Sequence[str] | None = None
                     ) -> tuple[list[dict], Path | None, dict]:
    """Items of ``splits`` (all when ``None``) of a datalist file or object, with the folder image paths are
    relative to. Returns ``(items, base_dir, datalist)``."""
    if isinstance(datalist, Mapping):
        data, base = dict(datalist), None
    else:
        data, base = load_datalist(datalist, check_files=False), Path(datalist).resolve().parent
    items = [dict(it) for split, _, it in iter_items(data) if splits is None or split in splits]
    return items, base, data


class Judge:
    """An ensemble of trained classifiers plus the real-data statistics the optional checks need.

    Args:
        networks: trained networks (same architecture), one per seed.
        classes: class names, in logit order.
        label_key: the datalist key holding the label (``pathology`` by default; any key, e.g. ``birads``).
        image_size, crop, margin: input settings (see :func:`load_inputs`).
        ood: fitted :class:`~busgen_clean.checks.MahalanobisScorer` of real features (optional).
        ood_threshold: distance above which an image is out of distribution (a percentile of real validation
            distances).
        visibility_floor: box visibility below which a lesion counts as invisible (a low percentile of real
            training images).
        meta: anything else worth saving (seeds, validation metrics, widths).
    """

    def __init__(self, networks: Sequence[torch.nn.Module], classes: Sequence[str], label_key: str = "pathology",
                 image_size: int = 64, crop: str = "box", margin: float = 0.5, ood: MahalanobisScorer | None = None,
                 ood_threshold: float | None = None, visibility_floor: float | None = None,
                 meta: Mapping[str, Any] | None = None, batch_size: int = 64) -> None:
        if not networks:
            raise ValueError("a Judge needs at least one network")
        if crop not in ("box", "image"):
            raise ValueError(f"crop must be 'box' or 'image', got {crop!r}")
        self.networks = [n.eval() for n in networks]
        self.classes = [str(c) for c in classes]
        self.label_key = label_key
        self.image_size = int(image_size)
        self.crop = crop
        self.margin = float(margin)
        self.ood = ood
        self.ood_threshold = None if ood_threshold is None else float(ood_threshold)
        self.visibility_floor = None if visibility_floor is None else float(visibility_floor)
        self.meta = dict(meta or {})
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------------------------------ inference
    def inputs(self, items: Sequence[Mapping], base_dir: str | os.PathLike | None,
               images: Sequence[np.ndarray] | None = None) -> torch.Tensor:
        return load_inputs(items, base_dir, self.image_size, self.crop, self.margin, images=images)

    @torch.no_grad()
    def _run(self, x: torch.Tensor, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        probs, feats = [], []
        for k, net in enumerate(self.networks):
            captured: list[torch.Tensor] = []
            hook = net.fc.register_forward_hook(lambda m, i, o: captured.append(i[0].detach())) \
                if (features and k == 0) else None
            try:
                p = [torch.softmax(net(x[s:s + self.batch_size]), dim=1) for s in range(0, len(x), self.batch_size)]
            finally:
                if hook is not None:
                    hook.remove()
            probs.append(torch.cat(p))
            if captured:
                feats = [torch.cat(captured)]
        prob = torch.stack(probs).mean(0).numpy().astype(np.float64)
        return prob, (feats[0].numpy().astype(np.float64) if feats else None)

    def predict_proba(self, items: Sequence[Mapping], base_dir: str | os.PathLike | None = None,
                      images: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """``(N, C)`` class probabilities (mean of the ensemble's softmax outputs)."""
        if not len(items):
            return np.zeros((0, len(self.classes)))
        return self._run(self.inputs(items, base_dir, images), features=False)[0]

    def predict(self, items: Sequence[Mapping], base_dir: str | os.PathLike | None = None,
                images: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, C), penultimate features (N, D) of the first member)``."""
        if not len(items):
            return np.zeros((0, len(self.classes))), np.zeros((0, 0))
        return self._run(self.inputs(items, base_dir, images), features=True)

    def label_scores(self, items: Sequence[Mapping], proba: np.ndarray) -> np.ndarray:
        """Probability the judge gives to each item's own label (``nan`` where the label is unknown to it)."""
        idx = {c: i for i, c in enumerate(self.classes)}
        out = np.full(len(items), np.nan)
        for n, it in enumerate(items):
            j = idx.get(str(it.get(self.label_key)))
            if j is not None:
                out[n] = proba[n, j]
        return out

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        seeds = self.meta.get("seeds") or list(range(len(self.networks)))
        files = []
        for s, net in zip(seeds, self.networks):
            name = f"model_seed{s}.pt"
            atomic_torch_save(net.state_dict(), out / name)
            files.append(name)
        if self.ood is not None:
            atomic_save_npz(out / "ood_stats.npz", **self.ood.state())
        cfg = {"classes": self.classes, "label_key": self.label_key, "image_size": self.image_size,
               "crop": self.crop, "margin": self.margin, "models": files, "ood_threshold": self.ood_threshold,
               "visibility_floor": self.visibility_floor, **{k: v for k, v in self.meta.items() if k != "models"}}
        atomic_write_text(out / "judge.json", json.dumps(cfg, indent=1, default=float))
        return out

    @classmethod
    def load(cls, judge_dir: str | os.PathLike) -> Judge:
        d = Path(judge_dir)
        cfg_path = d / "judge.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{d} is not a judge folder (no judge.json); train one with "
                                    "`busgen clean-train-judge REAL_DATALIST --out JUDGE_DIR`")
        cfg = json.loads(cfg_path.read_text())
        nets = []
        for name in cfg["models"]:
            net = build_judge_network(len(cfg["classes"]), cfg.get("width", (16, 32, 64, 128)))
            net.load_state_dict(torch.load(d / name, map_location="cpu", weights_only=True))
            nets.append(net)
        ood = MahalanobisScorer.from_state(np.load(d / "ood_stats.npz")) if (d / "ood_stats.npz").is_file() else None
        meta = {k: v for k, v in cfg.items() if k not in ("classes", "label_key", "image_size", "crop", "margin",
                                                          "ood_threshold", "visibility_floor")}
        return cls(nets, cfg["classes"], cfg["label_key"], cfg["image_size"], cfg["crop"], cfg["margin"], ood,
                   cfg.get("ood_threshold"), cfg.get("visibility_floor"), meta)

    def __repr__(self) -> str:
        return (f"Judge(classes={self.classes}, label_key={self.label_key!r}, members={len(self.networks)}, "
                f"image_size={self.image_size}, crop={self.crop!r})")


def _labels(items: Sequence[Mapping], classes: Sequence[str], key: str) -> np.ndarray:
    idx = {c: i for i, c in enumerate(classes)}
    return np.array([idx.get(str(it.get(key)), -1) for it in items])


def _train_one(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, epochs: int, batch_size: int,
               lr: float, width: Sequence[int], progress: bool) -> torch.nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build_judge_network(num_classes, width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * max(1, -(-len(x) // batch_size)))
    counts = torch.bincount(y, minlength=num_classes).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (num_classes * counts))
    it = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"judge seed {seed}", unit="epoch")
    for _ in it:
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            b = perm[s:s + batch_size]
            xb = x[b]
            flip = torch.rand(len(b), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            # brightness/contrast jitter: the judge must not key on a device's grey levels
            gain = 1 + 0.2 * (torch.rand(len(b), 1, 1, 1, generator=gen) - 0.5)
            bias = 0.2 * (torch.rand(len(b), 1, 1, 1, generator=gen) - 0.5)
            xb = (xb * gain + bias).clamp(-1, 1)
            opt.zero_grad()
            loss = loss_fn(net(xb), y[b])
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def train_judge(
    datalist: str | os.PathLike | Mapping,
    out_dir: str | os.PathLike | None = None,
    *,
    label_key: str = "pathology",
    classes: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    image_size: int = 64,
    crop: str = "box",
    margin: float = 0.5,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    width: Sequence[int] = (16, 32, 64, 128),
    train_splits: Sequence[str] = ("training",),
    val_splits: Sequence[str] = ("validation",),
    ood_percentile: float = 99.0,
    visibility_percentile: float = 2.0,
    progress: bool = False,
) -> Judge:
    """Train a judge on the real labelled images of ``datalist`` (``train_splits``) and calibrate its
    optional checks on ``val_splits`` (falls back to the training items when there is no validation split).

    Args:
        datalist: real datalist (file or object; for an object, image paths must be absolute).
        out_dir: where to save the judge (not saved when ``None``).
        label_key: datalist key of the label to judge (``pathology``; any key, e.g. ``birads``).
        classes: class names in logit order (default: the datalist's ``pathologies`` order for ``pathology``,
            otherwise the sorted label values found in the training items).
        seeds: one network per seed (an ensemble: probabilities are averaged).
        image_size, crop, margin: network input (see :func:`load_inputs`).
        epochs, batch_size, lr, width: training of each member (AdamW, one-cycle LR, class-balanced loss,
            horizontal flips and brightness/contrast jitter).
        ood_percentile: the OOD threshold is this percentile of real validation Mahalanobis distances.
        visibility_percentile: the visibility floor is this percentile of real training box visibilities.
        progress: progress bars.

    Returns:
        the trained :class:`Judge` (saved to ``out_dir`` when given); ``judge.meta["validation"]`` holds the
        validation accuracy and AUROC (binary) of the ensemble.
    """
    items, base, data = read_split_items(datalist, train_splits)
    if classes is None:
        found = {str(it.get(label_key)) for it in items if it.get(label_key) is not None}
        order = list(data.get("pathologies") or []) if label_key == "pathology" else []
        classes = [c for c in order if c in found] + sorted(found - set(order))
    classes = list(classes)
    if len(classes) < 2:
        raise ValueError(f"the judge needs >= 2 classes of {label_key!r} in the training items, found {classes}")
    items = [it for it in items if str(it.get(label_key)) in classes]
    y = torch.as_tensor(_labels(items, classes, label_key))
    images = [read_image_rgb(resolve_image(it, base)) for it in items]
    x = load_inputs(items, base, image_size, crop, margin, images=images)
    nets = [_train_one(x, y, len(classes), s, epochs, batch_size, lr, width, progress) for s in seeds]
    judge = Judge(nets, classes, label_key, image_size, crop, margin,
                  meta={"seeds": list(seeds), "width": list(width), "epochs": epochs, "n_train": len(items),
                        "source": None if isinstance(datalist, Mapping) else str(datalist)})
    # calibration of the optional checks on real data
    vis = np.array([box_visibility(im, it.get("boxes") or []) for im, it in zip(images, items)])
    vis = vis[np.isfinite(vis)]
    judge.visibility_floor = float(np.percentile(vis, visibility_percentile)) if len(vis) else None
    _, train_feats = judge.predict(items, base, images=images)
    judge.ood = MahalanobisScorer().fit(train_feats)
    val_items = [it for it in read_split_items(datalist, val_splits)[0] if str(it.get(label_key)) in classes]
    if val_items:
        proba, val_feats = judge.predict(val_items, base)
        yv = _labels(val_items, classes, label_key)
        report = {"n": len(val_items), "accuracy": float(np.mean(proba.argmax(1) == yv))}
        if len(classes) == 2 and len(set(yv.tolist())) == 2:
            from busgen_monai.evaluation import auroc

            report["auroc"] = float(auroc(yv == 1, proba[:, 1]))
        judge.meta["validation"] = report
        ref = judge.ood.score(val_feats)
    else:
        ref = judge.ood.score(train_feats)
    judge.ood_threshold = float(np.percentile(ref, ood_percentile))
    judge.meta["ood_percentile"] = ood_percentile
    logger.info("judge trained: %s, validation %s", judge, judge.meta.get("validation"))
    if out_dir is not None:
        judge.save(out_dir)
    return judge
