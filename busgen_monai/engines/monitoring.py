"""What training shows while it runs: :class:`DiffusionValidationLossHandler` (epsilon-MSE on a fixed batch with
fixed noise and timesteps, a comparable validation loss in ``engine.state.metrics``) and :class:`SampleGridHandler`
(a fixed grid of conditions sampled with a few-step scheduler and classifier-free guidance, saved as PNG), and
:func:`first_batch`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.inferers import DiffusionInferer
from torch import nn

from busgen_monai.data.conditions import ConditionCodec
from busgen_monai.utils.io import atomic_copy

from ._common import _event, unwrap_network

__all__ = ["first_batch", "DiffusionValidationLossHandler", "SampleGridHandler"]

logger = logging.getLogger(__name__)


def first_batch(dataset: Sequence, num_items: int = 4) -> dict[str, torch.Tensor]:
    """Collate the first ``num_items`` items of ``dataset`` into a batch (for a fixed validation batch)."""
    from monai.data import list_data_collate

    if len(dataset) == 0:
        raise ValueError("first_batch: the dataset is empty (no validation items in the datalist?)")
    return list_data_collate([dataset[i] for i in range(min(num_items, len(dataset)))])


class DiffusionValidationLossHandler:
    """Epsilon-prediction MSE of the network on a fixed batch with fixed noise and evenly spread timesteps.

    Every call uses the same noisy inputs, so the value is comparable across iterations and runs (unlike the
    training loss, whose noise and timesteps are random). The loss is averaged over ``repeats`` timestep sets.

    Args:
        network: the network (or pass ``ema`` to evaluate the EMA weights).
        scheduler: the training noise scheduler (its ``add_noise``).
        batch: a batch dict with ``image_key`` and ``condition_key``, or a callable returning one (evaluated lazily).
        interval: run every N epochs (``epoch_level``) or iterations.
        metric_name: key in ``engine.state.metrics``.
        seed: seed of the fixed noise/timesteps.
        repeats: number of timestep sets per item.
        ema: an :class:`EMAHandler` whose averaged weights are evaluated instead of ``network``.
    """

    def __init__(
        self,
        network: nn.Module,
        scheduler: Any,
        batch: Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]],
        interval: int = 1,
        epoch_level: bool = True,
        metric_name: str = "val_loss",
        seed: int = 0,
        repeats: int = 4,
        image_key: str = "image",
        condition_key: str = "cond",
        ema: Any = None,  # an engines.EMAHandler
    ) -> None:
        self.network = network
        self.scheduler = scheduler
        self._batch = batch
        self.interval = int(interval)
        self.epoch_level = bool(epoch_level)
        self.metric_name = metric_name
        self.seed = int(seed)
        self.repeats = max(int(repeats), 1)
        self.image_key = image_key
        self.condition_key = condition_key
        self.ema = ema
        self._fixed: tuple[torch.Tensor, ...] | None = None
        self.history: list[tuple[int, float]] = []

    def _prepare(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if self._fixed is None:
            batch = self._batch() if callable(self._batch) else self._batch
            images = torch.as_tensor(batch[self.image_key]).float()
            cond = torch.as_tensor(batch[self.condition_key]).float()
            if cond.dim() == 2:
                cond = cond[:, None]
            images = images.repeat(self.repeats, 1, 1, 1)
            cond = cond.repeat(self.repeats, 1, 1)
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(images.shape, generator=gen)
            t_max = int(self.scheduler.num_train_timesteps)
            n = images.shape[0]
            timesteps = ((torch.arange(n) + 0.5) * t_max / n).long().clamp(max=t_max - 1)
            self._fixed = (images, cond, noise, timesteps)
        return tuple(t.to(device) for t in self._fixed)

    @torch.no_grad()
    def compute(self, device: torch.device | str | None = None) -> float:
        """The fixed-batch validation loss of the current weights."""
        net = self.ema.module if self.ema is not None else unwrap_network(self.network)
        device = torch.device(device) if device is not None else next(net.parameters()).device
        images, cond, noise, timesteps = self._prepare(device)
        was_training = net.training
        net.eval()
        try:
            pred = DiffusionInferer(self.scheduler)(images, net, noise=noise, timesteps=timesteps, condition=cond)
            loss = float(torch.nn.functional.mse_loss(pred.float(), noise.float()))
        finally:
            net.train(was_training)
        return loss

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(_event(self.epoch_level, self.interval), self)

    def __call__(self, engine: Engine) -> None:
        loss = self.compute(getattr(engine.state, "device", None))
        engine.state.metrics[self.metric_name] = loss
        self.history.append((int(engine.state.iteration), loss))
        logger.info("iteration %d: %s = %.5f", engine.state.iteration, self.metric_name, loss)


# ---------------------------------------------------------------------------------------------- sample grid
class SampleGridHandler:
    """Sample a fixed grid of conditions and save it as a PNG (rows: pathologies, columns: devices).

    Sampling uses :meth:`monai.inferers.DiffusionInferer.sample` with classifier-free guidance
    (``cfg = 1 + w``, the unconditional half filled with ``-1`` = every condition null), a fixed noise seed and the
    same boxes for every cell, so grids of successive validations are directly comparable.

    Args:
        network: the network (DDP-wrapped is fine).
        codec: the :class:`~busgen_monai.networks.ConditionCodec` used for training.
        scheduler: a sampling scheduler, e.g. ``DDIMScheduler`` (its ``set_timesteps(num_inference_steps)`` is called).
        output_dir: folder of the PNG files (``grid_iteration=<N>.png``, and ``grid_latest.png``).
        image_size: sample height/width.
        pathologies: pathology names for the rows (default: all of the codec's).
        devices: device names for the columns (default: up to 4 from ``datalist_devices`` or the codec).
        boxes: boxes drawn into every cell (normalised ``x1, y1, x2, y2``).
        guidance_w: BUSGen's ``w``; ``cfg = 1 + w`` (``None``: no guidance).
        num_inference_steps: scheduler steps.
        interval, epoch_level: when to sample (also once at the end of training).
        seed: noise seed.
        ema: an :class:`EMAHandler`; its averaged weights are sampled when given.
        summary_writer: optional TensorBoard ``SummaryWriter`` to also log the grid.
    """

    def __init__(
        self,
        network: nn.Module,
        codec: ConditionCodec,
        scheduler: Any,
        output_dir: str | os.PathLike,
        image_size: int | Sequence[int] = 64,
        pathologies: Sequence[str] | None = None,
        devices: Sequence[str] | None = None,
        datalist_devices: Sequence[str] | None = None,
        boxes: Sequence[Sequence[float]] = ((0.35, 0.35, 0.65, 0.6),),
        guidance_w: float | None = 1.8,
        num_inference_steps: int = 20,
        interval: int = 1,
        epoch_level: bool = True,
        seed: int = 0,
        ema: Any = None,  # an engines.EMAHandler
        summary_writer: Any = None,
        image_channels: int | None = None,
    ) -> None:
        self.network = network
        self.codec = codec
        self.scheduler = scheduler
        self.output_dir = Path(output_dir)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.pathologies = list(pathologies) if pathologies is not None else list(codec.pathologies)
        if devices is None:
            pool = [d for d in (datalist_devices or []) if codec.vocabulary.find(d) is not None]
            devices = pool[:4] if pool else codec.vocabulary.names[:2]
        self.devices = list(devices)
        self.boxes = [list(map(float, b)) for b in boxes]
        self.guidance_w = guidance_w
        self.num_inference_steps = int(num_inference_steps)
        self.interval = int(interval)
        self.epoch_level = bool(epoch_level)
        self.seed = int(seed)
        self.ema = ema
        self.summary_writer = summary_writer
        # default: the network's (1 for every grey B-mode preset)
        self.image_channels = int(image_channels if image_channels is not None
                                  else getattr(unwrap_network(network), "image_channels", 1))
        self.last_path: Path | None = None

    def conditions(self) -> tuple[torch.Tensor, list[str]]:
        """Packed conditions ``(R * C, 1, K)`` of the grid (row-major) and their captions."""
        paths, devs, labels = [], [], []
        for p in self.pathologies:
            for d in self.devices:
                paths.append(p)
                devs.append(d)
                labels.append(f"{p} / {d}")
        cond = self.codec.pack_names(paths, devs, boxes=[self.boxes] * len(paths))
        return cond, labels

    @torch.no_grad()
    def sample(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Sample the grid; returns images ``(R * C, channels, H, W)`` in ``[-1, 1]``."""
        net = self.ema.module if self.ema is not None else unwrap_network(self.network)
        device = torch.device(device) if device is not None else next(net.parameters()).device
        cond, _ = self.conditions()
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((cond.shape[0], self.image_channels, *self.image_size), generator=gen).to(device)
        self.scheduler.set_timesteps(self.num_inference_steps)
        was_training = net.training
        net.eval()
        try:
            images = DiffusionInferer(self.scheduler).sample(
                input_noise=noise,
                diffusion_model=net,
                scheduler=self.scheduler,
                conditioning=cond.to(device),
                mode="crossattn",
                verbose=False,
                cfg=None if self.guidance_w is None else 1.0 + float(self.guidance_w),
                cfg_fill_value=-1.0,
            )
        finally:
            net.train(was_training)
        return images.clamp(-1, 1)

    def save(self, images: torch.Tensor, tag: str) -> Path:
        from busgen_monai.visualize import save_image_grid

        _, labels = self.conditions()
        path = save_image_grid(
            [im.cpu() for im in images],
            self.output_dir / f"grid_{tag}.png",
            labels=labels,
            boxes=[self.boxes] * len(labels),
            ncols=len(self.devices),
            title=f"samples {tag} (w={self.guidance_w}, {self.num_inference_steps} steps, seed {self.seed})",
        )
        atomic_copy(path, self.output_dir / "grid_latest.png")
        return path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(_event(self.epoch_level, self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        it = int(engine.state.iteration)
        if self.last_path is not None and self.last_path.name == f"grid_iteration={it:07d}.png":
            return  # already sampled at this iteration (interval and COMPLETED coincide)
        images = self.sample(getattr(engine.state, "device", None))
        self.last_path = self.save(images, f"iteration={it:07d}")
        if self.summary_writer is not None:
            grid = (images.cpu() + 1) / 2
            self.summary_writer.add_images("samples", grid, it)
        logger.info("iteration %d: sample grid saved to %s", it, self.last_path)


# ---------------------------------------------------------------------------------------------- progress bar
