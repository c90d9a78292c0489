"""The CPSample *protecting classifier*: random labels, a time-conditioned classifier, training and the protector file.

CPSample (Kazdan et al., ICLR 2025) gives every training image of the generator a fixed random binary label
``y_i`` and trains a small classifier ``f(x_t, t) -> logit`` on noised images

    x_t = sqrt(abar_t) x0_i + sqrt(1 - abar_t) eps,    eps ~ N(0, I),  t ~ U{0 .. T-1}

(the generator's own noise schedule) with binary cross-entropy until it *memorises* the labels. Random labels
carry no information about the image content, so the only way to be confident is to recognise a particular training
image: a confident classifier at sampling time means "this trajectory is heading for a memorised image", which is
when :class:`busgen_cpsample.guard.CPSamplingGuard` acts.

The classifier is MONAI's :class:`~monai.networks.nets.diffusion_model_unet.DiffusionModelEncoder` (the encoder half
of a diffusion U-Net with sinusoidal timestep embedding in every residual block, followed by a flattened
fully-connected head) with one output logit. The flattened head keeps spatial layout, which helps memorisation.

**Protector file** (``torch.save`` dict, written atomically; the default place is next to the generator checkpoint,
``models/protector.pt``)::

    {"format": "busgen-cpsample-protector", "format_version": 1,
     "network": state_dict, "network_kwargs": {...},          # build_protector_network(**network_kwargs)
     "labels": int64 (N,), "label_seed": int, "items": [image ids (datalist-relative paths)],
     "schedule": {"num_train_timesteps": 500, "schedule": "linear_beta", "beta_start": 1e-4, "beta_end": 0.028},
     "image_size": [H, W], "image_channels": 3, "value_range": [-1, 1],
     "input_space": "image" | "latent",                       # what the guard will hand it (see below)
     "generator_sha256": sha256 of the generator checkpoint it protects (or None),
     "metrics": {"accuracy_by_t": {...}, "iterations": ...}}

**Latent generators** (``bundles/busgen_latent``): their sampler, and so the guard, works on diffusion-space latents,
not images. The protector is then trained on the *latents* of the training images (:class:`LatentEncoded`: the
generator's own autoencoder, times its ``scale_factor``), with ``in_channels`` and ``image_size`` the latent shape;
the train_protector config does this by itself when the checkpoint is a latent one (:func:`latent_encoder`), and the
file records ``"input_space": "latent"``. The privacy audit and the cleaning filter look at decoded images either way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from busgen_monai.safe_load import load_weights
from busgen_monai.utils.io import atomic_torch_save

__all__ = [
    "PROTECTOR_FORMAT",
    "DEFAULT_SCHEDULE",
    "DEFAULT_CHECK_TIMESTEPS",
    "build_protector_network",
    "make_schedule",
    "make_scheduler",
    "schedule_alphas_cumprod",
    "random_labels",
    "protector_items",
    "ProtectorPrepareBatch",
    "memorisation_accuracy",
    "MemorisationStopper",
    "fit_protector",
    "Protector",
    "save_protector",
    "load_protector",
    "default_protector_path",
    "LatentEncoded",
    "latent_encoder",
    "protector_input_shape",
]

PROTECTOR_FORMAT = "busgen-cpsample-protector"
DEFAULT_SCHEDULE = {"num_train_timesteps": 500, "schedule": "linear_beta", "beta_start": 1e-4, "beta_end": 0.028}
DEFAULT_CHECK_TIMESTEPS = (0, 25, 50, 100, 150)


# ---------------------------------------------------------------------------------------------- network
def build_protector_network(
    image_size: int | Sequence[int] = 32,
    in_channels: int = 1,
    channels: Sequence[int] = (32, 64, 64),
    num_res_blocks: int | Sequence[int] = 1,
    attention_levels: Sequence[bool] | None = None,
    norm_num_groups: int = 8,
    num_head_channels: int = 32,
) -> nn.Module:
    """The protecting classifier: MONAI ``DiffusionModelEncoder`` with one output logit.

    Args:
        image_size: ``S`` or ``(H, W)`` of the generator's images (the flattened head depends on it).
        in_channels: image channels, the generator's (1: grey B-mode, every preset's default; 3: RGB).
        channels: widths per level (each level halves the resolution).
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention per level (default none).
        norm_num_groups: GroupNorm groups (must divide every width).
        num_head_channels: attention head width (when attention is used).

    Returns:
        a module called ``net(x_t, timesteps)`` with ``x_t`` ``(B, C, H, W)`` in the generator's value range and
        ``timesteps`` ``(B,)``; it returns ``(B, 1)`` logits.
    """
    from monai.networks.nets.diffusion_model_unet import DiffusionModelEncoder

    size = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else tuple(
        int(s) for s in image_size)
    attention_levels = tuple(attention_levels) if attention_levels is not None else (False,) * len(channels)
    return DiffusionModelEncoder(
        spatial_dims=2,
        in_channels=int(in_channels),
        out_channels=1,
        input_shape=size,
        num_res_blocks=num_res_blocks,
        channels=tuple(int(c) for c in channels),
        attention_levels=attention_levels,
        norm_num_groups=int(norm_num_groups),
        num_head_channels=int(num_head_channels),
    )


# ---------------------------------------------------------------------------------------------- schedule
def make_schedule(num_train_timesteps: int = 500, beta_start: float = 1e-4, beta_end: float = 0.028,
                  schedule: str = "linear_beta") -> dict[str, Any]:
    """The generator's training noise schedule as a plain dict (stored in the protector file)."""
    return {"num_train_timesteps": int(num_train_timesteps), "schedule": str(schedule),
            "beta_start": float(beta_start), "beta_end": float(beta_end)}


def make_scheduler(schedule: Mapping[str, Any] | None = None):
    """The generator's training ``DDPMScheduler`` (used for ``add_noise`` and ``alphas_cumprod``), from the project's
    one sampler factory."""
    from busgen_monai.schedulers import build_scheduler

    s = dict(DEFAULT_SCHEDULE if schedule is None else schedule)
    return build_scheduler(s, "ddpm", schedule=s.get("schedule", "linear_beta"))


def schedule_alphas_cumprod(schedule: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``abar_t`` for ``t = 0 .. T-1`` (float32)."""
    return make_scheduler(schedule).alphas_cumprod.float()


# ---------------------------------------------------------------------------------------------- labels / data
def random_labels(n: int, seed: int = 0) -> torch.Tensor:
    """Fixed random binary labels ``(n,)`` int64, balanced (``n // 2`` ones, in a seeded random order).

    Balanced rather than i.i.d. Bernoulli(0.5) so a classifier that ignores the image cannot do better than chance.
    """
    if n < 2:
        raise ValueError(f"random_labels needs at least 2 images, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.zeros(n, dtype=torch.int64)
    labels[torch.randperm(n, generator=g)[: n // 2]] = 1
    return labels


def protector_items(
    datalist: Mapping | str | os.PathLike,
    label_seed: int = 0,
    splits: str | Sequence[str] = "training",
    label_key: str = "label",
    group_key: str | None = None,
) -> list[dict]:
    """The generator's training items (absolute paths) each with its fixed random label under ``label_key``.

    The order is the datalist order, so ``(datalist, label_seed, group_key)`` always gives the same labels; the
    item's own ``label`` (if any, e.g. a downstream label) is replaced in the returned copies only.

    Args:
        group_key: give every item of a group the same label (e.g. ``"patient_id"`` or ``"study_id"``: frames of
            one cine are near-duplicates, and near-duplicates with opposite labels cannot be told apart, so the
            classifier could never be confident about them). ``None``: one label per image (CPSample).
    """
    from busgen_monai.data.dataset import datalist_items

    items = datalist_items(datalist, splits)
    if len(items) < 2:
        raise ValueError(f"the protecting classifier needs at least 2 training images; the datalist has {len(items)} "
                         f"in split(s) {splits!r}")
    if group_key is None:
        labels = random_labels(len(items), label_seed).tolist()
    else:
        missing = [i for i, it in enumerate(items) if it.get(group_key) in (None, "")]
        if missing:
            raise KeyError(f"label group key {group_key!r} is missing in {len(missing)} items (first: item "
                           f"{missing[0]}, {items[missing[0]].get('image')})")
        groups = list(dict.fromkeys(str(it[group_key]) for it in items))
        if len(groups) < 2:
            raise ValueError(f"group_key {group_key!r} puts every item in one group; random labels need >= 2 groups")
        of = dict(zip(groups, random_labels(len(groups), label_seed).tolist()))
        labels = [of[str(it[group_key])] for it in items]
    return [dict(it, **{label_key: float(y)}) for it, y in zip(items, labels)]


def _item_ids(items: Sequence[Mapping], base_dir: str | os.PathLike | None = None) -> list[str]:
    out = []
    for it in items:
        path = str(it.get("image_path", it.get("image", "")))
        if base_dir is not None and os.path.isabs(path):
            try:
                path = os.path.relpath(path, base_dir)
            except ValueError:
                pass
        out.append(path)
    return out


# ---------------------------------------------------------------------------------------------- training pieces
class ProtectorPrepareBatch:
    """Prepare-batch for :class:`monai.engines.SupervisedTrainer`: noise the images at random timesteps.

    Returns ``(x_t, labels (B, 1) float, (), {"timesteps": t})`` so the trainer's ``SimpleInferer`` calls
    ``network(x_t, timesteps=t)`` and the loss is ``BCEWithLogitsLoss(logits, labels)``.

    Args:
        scheduler: a MONAI scheduler with the generator's schedule (``add_noise``, ``num_train_timesteps``).
        image_key, label_key: batch keys.
        max_timestep: draw ``t`` from ``0 .. max_timestep - 1`` (default: all ``T`` steps, as CPSample).
        seed: seed of a private generator for ``t`` and the noise (``None``: the global RNG).
    """

    def __init__(self, scheduler: Any, image_key: str = "image", label_key: str = "label",
                 max_timestep: int | None = None, seed: int | None = None) -> None:
        self.scheduler = scheduler
        self.image_key = image_key
        self.label_key = label_key
        self.max_timestep = int(max_timestep or scheduler.num_train_timesteps)
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    def __call__(self, batchdata: Mapping[str, torch.Tensor], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any):
        images = torch.as_tensor(batchdata[self.image_key]).float()
        labels = torch.as_tensor(batchdata[self.label_key]).float().reshape(-1, 1)
        b = images.shape[0]
        t = torch.randint(0, self.max_timestep, (b,), generator=self.generator)
        noise = torch.randn(images.shape, generator=self.generator)
        x_t = self.scheduler.add_noise(original_samples=images, noise=noise, timesteps=t)
        x_t = torch.as_tensor(x_t).to(device=device, non_blocking=non_blocking)
        return x_t, labels.to(device=device), (), {"timesteps": t.to(device)}


@torch.no_grad()
def memorisation_accuracy(
    network: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    scheduler: Any,
    timesteps: Sequence[int] = DEFAULT_CHECK_TIMESTEPS,
    n_noise: int = 1,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy and mean confidence ``max(p, 1 - p)`` of the classifier on its own training images, per timestep.

    Noise is fixed by ``seed`` (the same draws every call), so successive checks are comparable.

    Returns:
        ``{"accuracy_by_t": {t: acc}, "confidence_by_t": {t: mean conf}, "min_accuracy": ..., "mean_accuracy": ...}``
    """
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    labels = torch.as_tensor(labels).reshape(-1).float()
    g = torch.Generator().manual_seed(int(seed))
    acc: dict[int, float] = {}
    conf: dict[int, float] = {}
    for t in timesteps:
        correct = 0.0
        csum = 0.0
        for _ in range(int(n_noise)):
            noise = torch.randn(images.shape, generator=g)
            for i in range(0, images.shape[0], batch_size):
                x0 = images[i:i + batch_size].float()
                tt = torch.full((x0.shape[0],), int(t), dtype=torch.long)
                x_t = scheduler.add_noise(original_samples=x0, noise=noise[i:i + batch_size], timesteps=tt)
                p = torch.sigmoid(network(torch.as_tensor(x_t).to(device), timesteps=tt.to(device)).reshape(-1)).cpu()
                y = labels[i:i + batch_size]
                correct += float(((p > 0.5).float() == y).sum())
                csum += float(torch.maximum(p, 1 - p).sum())
        n = images.shape[0] * int(n_noise)
        acc[int(t)] = correct / n
        conf[int(t)] = csum / n
    if was_training:
        network.train()
    return {"accuracy_by_t": acc, "confidence_by_t": conf, "min_accuracy": min(acc.values()),
            "mean_accuracy": float(np.mean(list(acc.values())))}


class MemorisationStopper:
    """Ignite handler: every ``interval`` iterations, measure :func:`memorisation_accuracy` on the clean training
    images noised at ``timesteps`` (fixed noise) and stop training once the accuracy is at least ``target`` at every
    one of them ("trained until it memorises the labels").

    The latest result is in ``engine.state.metrics["memorisation_accuracy"]`` (the minimum over ``timesteps``) and in
    :attr:`history`.

    Args:
        images: ``(N, C, H, W)`` clean training images in the generator's value range, or a dataset of dicts with
            ``image_key`` (e.g. the bundle's CacheDataset).
        labels: ``(N,)`` their random labels (or ``None`` with a dataset: read from ``label_key``).
        scheduler: the generator's schedule (MONAI scheduler).
        timesteps: where to check.
        target: accuracy to reach at every checked timestep.
        interval: iterations between checks.
        n_noise: noise draws per image and timestep.
        max_items: check on a seeded subset of at most this many images (``None``: all), so large training sets
            do not make every check (and the stacked image tensor) huge.
    """

    def __init__(self, images: Any, labels: Any = None, scheduler: Any = None,
                 timesteps: Sequence[int] = DEFAULT_CHECK_TIMESTEPS, target: float = 0.99, interval: int = 50,
                 n_noise: int = 2, image_key: str = "image", label_key: str = "label", seed: int = 0,
                 max_items: int | None = 512) -> None:
        n_all = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
        keep = list(range(n_all))
        if max_items is not None and n_all > int(max_items):
            keep = sorted(np.random.default_rng(seed).choice(n_all, int(max_items), replace=False).tolist())
        if not isinstance(images, torch.Tensor):
            rows = [images[i] for i in keep]
            images = torch.stack([torch.as_tensor(r[image_key]).float().as_subclass(torch.Tensor) for r in rows])
            if labels is None:
                labels = torch.tensor([float(r[label_key]) for r in rows])
            else:
                labels = torch.as_tensor(labels).reshape(-1)[keep]
        elif len(keep) != n_all:
            images = images[keep]
            labels = None if labels is None else torch.as_tensor(labels).reshape(-1)[keep]
        if labels is None:
            raise ValueError("MemorisationStopper needs labels (or a dataset whose items carry them)")
        self.images = torch.as_tensor(images).float().as_subclass(torch.Tensor)
        self.labels = torch.as_tensor(labels).float().reshape(-1)
        self.scheduler = scheduler if scheduler is not None else make_scheduler()
        self.timesteps = [int(t) for t in timesteps]
        self.target = float(target)
        self.interval = max(1, int(interval))
        self.n_noise = int(n_noise)
        self.seed = int(seed)
        self.history: list[dict[str, Any]] = []
        self.reached: bool = False

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def check(self, network: nn.Module) -> dict[str, Any]:
        return memorisation_accuracy(network, self.images, self.labels, self.scheduler, self.timesteps,
                                     n_noise=self.n_noise, seed=self.seed)

    def __call__(self, engine: Any) -> None:
        res = self.check(engine.network)
        res["iteration"] = int(engine.state.iteration)
        self.history.append(res)
        engine.state.metrics["memorisation_accuracy"] = res["min_accuracy"]
        engine.logger.info(f"protector memorisation accuracy at t={self.timesteps}: "
                           f"{[round(res['accuracy_by_t'][t], 3) for t in self.timesteps]}")
        if res["min_accuracy"] >= self.target:
            self.reached = True
            engine.terminate()

    def _final(self, engine: Any) -> None:
        if not self.history or self.history[-1]["iteration"] != engine.state.iteration:
            self(engine)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def fit_protector(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    schedule: Mapping[str, Any] | None = None,
    network: nn.Module | None = None,
    network_kwargs: Mapping[str, Any] | None = None,
    max_iterations: int = 3000,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    target_accuracy: float = 0.99,
    check_timesteps: Sequence[int] = DEFAULT_CHECK_TIMESTEPS,
    check_interval: int = 100,
    max_timestep: int | None = None,
    label_seed: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """Train the protecting classifier on in-memory images with MONAI's ``SupervisedTrainer`` (the same pieces the
    bundle's ``train_protector.json`` wires from a datalist).

    Args:
        images: ``(N, C, H, W)`` the generator's training images in its value range (``[-1, 1]``).
        labels: ``(N,)`` binary labels (default :func:`random_labels` with ``label_seed``).
        schedule: the generator's noise schedule (default BUSGen's: T=500, linear 1e-4..0.028).
        network: a classifier to train (default :func:`build_protector_network` with ``network_kwargs``).
        max_iterations: upper bound on optimiser steps; training stops earlier once memorised.
        target_accuracy, check_timesteps, check_interval: see :class:`MemorisationStopper`.
        max_timestep: train on ``t < max_timestep`` only (default: all timesteps).

    Returns:
        ``(network, labels, metrics)``; ``metrics`` holds the last memorisation check, ``iterations`` and
        ``memorised`` (whether the target was reached).
    """
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism

    images = torch.as_tensor(images).float()
    n = images.shape[0]
    labels = random_labels(n, label_seed) if labels is None else torch.as_tensor(labels).long().reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"{labels.shape[0]} labels for {n} images")
    kwargs = dict(network_kwargs or {})
    kwargs.setdefault("image_size", tuple(images.shape[2:]))
    kwargs.setdefault("in_channels", images.shape[1])
    set_determinism(seed=seed)
    net = (network if network is not None else build_protector_network(**kwargs)).to(device)
    scheduler = make_scheduler(schedule)
    data = [{"image": images[i], "label": float(labels[i])} for i in range(n)]
    loader = torch.utils.data.DataLoader(data, batch_size=min(batch_size, n), shuffle=True, drop_last=False,
                                         generator=torch.Generator().manual_seed(seed))
    epoch_length = max(1, math.ceil(n / min(batch_size, n)))
    # a long "epoch" made of repeated passes keeps the trainer simple: max_epochs * epoch_length = max_iterations
    repeat = max(1, max_iterations // epoch_length)
    stopper = MemorisationStopper(images, labels, scheduler, check_timesteps, target_accuracy, check_interval,
                                  seed=seed)
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=repeat,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay),
        loss_function=nn.BCEWithLogitsLoss(),
        prepare_batch=ProtectorPrepareBatch(scheduler, max_timestep=max_timestep, seed=seed),
        train_handlers=[stopper],
    )
    trainer.run()
    set_determinism(seed=None)
    metrics = dict(stopper.last)
    metrics.update({"iterations": int(trainer.state.iteration), "memorised": stopper.reached,
                    "target_accuracy": float(target_accuracy)})
    net.eval()
    return net, labels, metrics


# ---------------------------------------------------------------------------------------------- latent generators
class LatentEncoded:
    """Dictionary transform: replace ``image`` (``(C, H, W)`` in ``[-1, 1]``) by the latent generator's
    diffusion-space latent ``scale_factor * E(image)`` (the posterior mean, so every pass gives the same latent to
    memorise), the space its sampler and guards work in.

    Args:
        generator_checkpoint: a latent generator (file or ``models/`` folder, as ``load_generator`` reads it).
        key: the image key.
        device: where the autoencoder runs.
    """

    def __init__(self, generator_checkpoint: str | os.PathLike, key: str = "image",
                 device: str | torch.device = "cpu") -> None:
        from busgen_monai.inferers import load_generator

        if not _is_latent_checkpoint(generator_checkpoint):
            raise ValueError(f"{generator_checkpoint} is a pixel-space generator; LatentEncoded is for latent ones "
                             "(bundles/busgen_latent)")
        model, _ = load_generator(generator_checkpoint, device=device)
        self.model = model.eval()
        self.key = key
        self.device = torch.device(device)

    def latent_shape(self, image_size: int | Sequence[int]) -> tuple[int, ...]:
        return tuple(self.model.latent_shape(image_size))

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        image = torch.as_tensor(d[self.key]).float()
        if hasattr(image, "as_tensor"):
            image = image.as_tensor()
        if image.dim() != 3:
            raise ValueError(f"LatentEncoded: expected one (C, H, W) image under {self.key!r}, got {tuple(image.shape)}")
        with torch.no_grad():
            d[self.key] = self.model.encode(image[None].to(self.device), sample=False)[0].cpu()
        return d


def latent_encoder(generator_checkpoint: str | os.PathLike | None, device: str | torch.device = "cpu"):
    """:class:`LatentEncoded` for a latent generator checkpoint, ``None`` for a pixel one (or no checkpoint)."""
    if generator_checkpoint is None or not _is_latent_checkpoint(generator_checkpoint):
        return None
    return LatentEncoded(generator_checkpoint, device=device)


def _is_latent_checkpoint(generator_checkpoint: str | os.PathLike) -> bool:
    from busgen_monai.inferers import network_class_of, read_checkpoint

    return network_class_of(read_checkpoint(generator_checkpoint)) != "ConditionalDiffusionUNet"


def protector_input_shape(encoder: LatentEncoded | None, image_size: int | Sequence[int],
                          image_channels: int = 1) -> list[int]:
    """``[C, H, W]`` the protector sees: the image for pixel generators, the latent for latent ones."""
    if encoder is not None:
        return [int(v) for v in encoder.latent_shape(image_size)]
    size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(v) for v in image_size)
    return [int(image_channels), *size]


# ---------------------------------------------------------------------------------------------- protector file
@dataclass
class Protector:
    """A loaded protector: the classifier (eval mode) plus everything needed to use and audit it."""

    network: nn.Module
    labels: torch.Tensor
    schedule: dict[str, Any]
    network_kwargs: dict[str, Any]
    image_size: tuple[int, int]
    image_channels: int = 3
    generator_sha256: str | None = None
    items: list[str] = field(default_factory=list)
    label_seed: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    input_space: str = "image"

    def alphas_cumprod(self) -> torch.Tensor:
        return schedule_alphas_cumprod(self.schedule)

    def to(self, device: str | torch.device) -> Protector:
        self.network.to(device)
        return self


def default_protector_path(generator_checkpoint: str | os.PathLike) -> Path:
    """``protector.pt`` next to the generator checkpoint (in its folder; a folder argument is used as is)."""
    p = Path(generator_checkpoint)
    return (p if p.is_dir() else p.parent) / "protector.pt"


def save_protector(
    path: str | os.PathLike,
    network: nn.Module,
    labels: torch.Tensor | Sequence[int],
    *,
    network_kwargs: Mapping[str, Any],
    schedule: Mapping[str, Any] | None = None,
    generator_checkpoint: str | os.PathLike | None = None,
    generator_sha256: str | None = None,
    items: Sequence[Mapping] | Sequence[str] | None = None,
    items_base_dir: str | os.PathLike | None = None,
    label_seed: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    input_space: str = "image",
) -> Path:
    """Write the protector file atomically (see the module docstring). ``generator_checkpoint`` (a file or a
    ``models/`` folder) is hashed to bind the protector to the generator it protects. ``input_space``: ``"image"``
    or ``"latent"`` (trained on a latent generator's latents)."""
    if input_space not in ("image", "latent"):
        raise ValueError(f"input_space must be 'image' or 'latent', got {input_space!r}")
    if generator_sha256 is None and generator_checkpoint is not None:
        from busgen_monai.inferers import file_sha256, resolve_checkpoint

        generator_sha256 = file_sha256(resolve_checkpoint(generator_checkpoint))
    kwargs = dict(network_kwargs)
    if "in_channels" not in kwargs and getattr(network, "in_channels", None) is not None:
        kwargs["in_channels"] = int(network.in_channels)  # the images it was trained on (1 = grey B-mode)
    size = kwargs.get("image_size", 32)
    size = [int(size), int(size)] if isinstance(size, (int, np.integer)) else [int(s) for s in size]
    kwargs["image_size"] = size
    if items is not None and len(items) and isinstance(items[0], Mapping):
        items = _item_ids(items, items_base_dir)  # type: ignore[arg-type]
    payload = {
        "format": PROTECTOR_FORMAT,
        "format_version": 1,
        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "network_kwargs": kwargs,
        "labels": torch.as_tensor(labels).long().reshape(-1).cpu(),
        "label_seed": label_seed,
        "items": list(items or []),
        "schedule": dict(schedule or DEFAULT_SCHEDULE),
        "image_size": size,
        "image_channels": int(kwargs.get("in_channels", 3)),
        "value_range": [-1.0, 1.0],
        "input_space": input_space,
        "generator_sha256": generator_sha256,
        "metrics": _jsonable(metrics or {}),
    }
    return atomic_torch_save(payload, path)


def load_protector(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Protector:
    """Read a protector file and rebuild its classifier (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"protector {path} does not exist; train one with `busgen train-protector` "
                                "(bundle cpsample, config train_protector)")
    state = load_weights(path, "protector", map_location=map_location)
    if not isinstance(state, Mapping) or state.get("format") != PROTECTOR_FORMAT:
        raise ValueError(f"{path} is not a busgen-cpsample protector file (expected format {PROTECTOR_FORMAT!r})")
    net = build_protector_network(**state["network_kwargs"])
    net.load_state_dict(state["network"])
    net.to(map_location).eval()
    return Protector(
        network=net,
        labels=torch.as_tensor(state["labels"]).long(),
        schedule=dict(state["schedule"]),
        network_kwargs=dict(state["network_kwargs"]),
        image_size=tuple(state["image_size"]),
        image_channels=int(state.get("image_channels", 3)),
        generator_sha256=state.get("generator_sha256"),
        items=list(state.get("items") or []),
        label_seed=state.get("label_seed"),
        metrics=dict(state.get("metrics") or {}),
        path=path,
        input_space=str(state.get("input_space", "image")),
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
