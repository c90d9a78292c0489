"""Ignite handlers for diffusion training on :class:`monai.engines.SupervisedTrainer` (MONAI handler style:
``attach(engine)``), plus LR-schedule and checkpoint helpers.

- :class:`GradientClipHandler`: clip the gradient norm after ``backward`` and before ``optimizer.step``
  (``SupervisedTrainer`` has no clipping argument; it fires ``IterationEvents.BACKWARD_COMPLETED`` in between).
- :class:`EMAHandler`: exponential moving average of the weights in a :class:`torch.optim.swa_utils.AveragedModel`;
  has ``state_dict``/``load_state_dict`` so checkpoints save and resume it.
- :class:`DiffusionValidationLossHandler`: epsilon-MSE on a fixed batch with fixed noise and timesteps
  (a comparable validation loss), written to ``engine.state.metrics``.
- :class:`SampleGridHandler`: periodically samples a fixed grid of conditions (pathology x device, fixed boxes, fixed
  seed) with a few-step DDIM/DDPM scheduler and classifier-free guidance, and saves a PNG grid.
- :class:`ProgressBarHandler`: ignite's ``ProgressBar`` with the loss shown, attachable from a bundle config.
- :class:`TrainerCheckpointSaver` / :class:`ResumeCheckpointLoader`: MONAI's ``CheckpointSaver`` /
  ``CheckpointLoader`` that also save/restore the engine they are attached to (iteration and epoch counters), so a
  bundle config lists them in ``train_handlers`` without a trainer <-> handler reference cycle; the loader is a no-op
  when there is nothing to resume.
- :class:`NetworkArgsRecord`: checkpoint entry with the network's constructor arguments (``network_kwargs``);
  :class:`SettingsRecord`: the training settings (``settings``: image size, schedule, guidance).
- :func:`warmup_cosine_schedule`, :func:`latest_checkpoint`, :func:`unwrap_network`, :func:`first_batch`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.inferers import DiffusionInferer
from monai.optimizers import WarmupCosineSchedule
from torch import nn
from torch.optim.swa_utils import AveragedModel

from busgen_monai.data.conditions import ConditionCodec
from busgen_monai.utils.io import atomic_copy

__all__ = [
    "unwrap_network",
    "GradientClipHandler",
    "EMAHandler",
    "DiffusionValidationLossHandler",
    "SampleGridHandler",
    "ProgressBarHandler",
    "NetworkArgsRecord",
    "SettingsRecord",
    "TrainerCheckpointSaver",
    "ResumeCheckpointLoader",
    "warmup_cosine_schedule",
    "latest_checkpoint",
    "first_batch",
]

logger = logging.getLogger(__name__)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` / ``AveragedModel`` wrappers."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel, AveragedModel)):
        network = network.module
    return network


def _event(epoch_level: bool, interval: int):
    return (Events.EPOCH_COMPLETED if epoch_level else Events.ITERATION_COMPLETED)(every=max(int(interval), 1))


# ---------------------------------------------------------------------------------------------- gradient clipping
class GradientClipHandler:
    """Clip the total gradient norm of the trainer's network to ``max_norm`` before each optimizer step.

    With AMP the gradients are unscaled first (``GradScaler.unscale_``). The pre-clip norm is kept in
    ``engine.state.grad_norm``. With ``accumulation_steps > 1`` the partial gradient is clipped at every
    micro-step.

    Args:
        max_norm: maximum norm (BUSGen: 1.0); ``<= 0`` disables clipping (the norm is still recorded).
        norm_type: p of the p-norm.
        network: network whose parameters are clipped (default: ``engine.network``).
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0, network: nn.Module | None = None) -> None:
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        network = self.network if self.network is not None else engine.network  # type: ignore[attr-defined]
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)  # type: ignore[attr-defined]
        params = [p for p in network.parameters() if p.grad is not None]
        if not params:
            return
        max_norm = self.max_norm if self.max_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=self.norm_type)
        engine.state.grad_norm = float(norm)


# ---------------------------------------------------------------------------------------------- EMA
class EMAHandler:
    """Exponential moving average of a network's weights, updated after every ``update_every`` iterations.

    ``ema = decay_t * ema + (1 - decay_t) * weights`` with ``decay_t = min(decay, (1 + n) / (10 + n))`` when
    ``warmup`` (n = number of updates so far), else ``decay``. Buffers (e.g. norms' running stats) are averaged too.
    The averaged copy lives in :attr:`averaged` (a :class:`torch.optim.swa_utils.AveragedModel`) and the plain module
    in :attr:`module`; ``state_dict``/``load_state_dict`` make it a checkpoint entry (``save_dict={"ema": handler}``).
    ``decay=0`` (BUSGen trains without EMA): the "average" is the network itself; no copy is kept, nothing is
    updated, and :attr:`module` is the trained network, so configs need no special case.

    Args:
        network: the trained network (DDP-wrapped is fine).
        decay: EMA decay in ``[0, 1)``; 0 disables the copy.
        update_every: update every N iterations.
        warmup: use the ``(1 + n) / (10 + n)`` warm-up of the decay.
    """

    def __init__(self, network: nn.Module, decay: float = 0.9999, update_every: int = 1, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.network = network
        self.decay = float(decay)
        self.update_every = int(update_every)
        self.warmup = bool(warmup)
        self.averaged: AveragedModel | None = None
        if self.decay > 0:
            self.averaged = AveragedModel(unwrap_network(network), multi_avg_fn=self._multi_avg, use_buffers=True)
            self.averaged.eval()
            for p in self.averaged.parameters():
                p.requires_grad_(False)

    @property
    def enabled(self) -> bool:
        return self.averaged is not None

    def _multi_avg(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay
        averaged_f = [a for a in averaged if a.is_floating_point()]
        current_f = [c for a, c in zip(averaged, current) if a.is_floating_point()]
        if averaged_f:
            torch._foreach_lerp_(averaged_f, current_f, 1.0 - decay)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)

    @property
    def module(self) -> nn.Module:
        """The averaged network (same class as the trained one; the trained network itself when disabled)."""
        return self.averaged.module if self.averaged is not None else unwrap_network(self.network)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=max(self.update_every, 1)), self)

    @torch.no_grad()
    def __call__(self, engine: Engine | None = None) -> None:
        if self.averaged is not None:
            self.averaged.update_parameters(unwrap_network(self.network))

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict() if self.averaged is not None else {}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        if self.averaged is None:
            return None
        if not state_dict:
            logger.warning("checkpoint has no EMA weights; the EMA starts from the current network")
            return None
        return self.averaged.load_state_dict(state_dict, strict=strict)


# ---------------------------------------------------------------------------------------------- validation loss
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
        ema: EMAHandler | None = None,
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
        ema: EMAHandler | None = None,
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
class ProgressBarHandler:
    """ignite's :class:`~ignite.handlers.ProgressBar` showing the loss, usable in ``train_handlers`` of a config.

    Args:
        output_transform: maps ``engine.state.output`` to a number/dict shown on the bar (default: the loss).
        disable: hide the bar (e.g. in logs of batch jobs).
        kwargs: passed to ``ProgressBar`` (tqdm options).
    """

    def __init__(self, output_transform: Callable | None = None, disable: bool = False, **kwargs: Any) -> None:
        self.output_transform = output_transform or _loss_of
        self.disable = bool(disable)
        self.kwargs = kwargs

    def attach(self, engine: Engine) -> None:
        if self.disable:
            return
        from ignite.handlers import ProgressBar

        ProgressBar(**self.kwargs).attach(engine, output_transform=self.output_transform)


def _loss_of(output: Any) -> dict[str, float]:
    if isinstance(output, list):
        output = output[0] if output else {}
    loss = output.get("loss") if isinstance(output, Mapping) else output
    return {"loss": float(loss)} if loss is not None else {}


# ---------------------------------------------------------------------------------------------- LR schedule
class _ConfiguredWarmupCosineSchedule(WarmupCosineSchedule):
    """WarmupCosineSchedule whose shape (warm-up length, total length, end lr, multiplier) comes from the
    configuration even when a checkpoint is loaded: the checkpoint restores only the position (step counter), so a
    resumed run with more epochs stretches the cosine instead of replaying the old one."""

    _SHAPE_KEYS = ("warmup_steps", "t_total", "end_lr", "cycles", "warmup_multiplier", "base_lrs")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        keep = {k: getattr(self, k) for k in self._SHAPE_KEYS if hasattr(self, k)}
        super().load_state_dict(state_dict)
        self.__dict__.update(keep)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.1,
    warmup_multiplier: float = 0.0,
    end_lr: float = 0.0,
) -> WarmupCosineSchedule:
    """Linear warm-up then cosine decay (``monai.optimizers.WarmupCosineSchedule``), in iterations.

    The optimizer's ``lr`` is the peak; warm-up starts at ``warmup_multiplier * lr`` (BUSGen: base 6.25e-6 warmed up
    x2.5 -> ``lr=1.5625e-5, warmup_multiplier=0.4``). Step it every iteration
    (``LrScheduleHandler(epoch_level=False)``).

    On ``load_state_dict`` (resume) only the step counter is restored; the schedule's shape stays the configured one.

    Args:
        total_steps: iterations of the whole run.
        warmup_steps: warm-up iterations (default: ``warmup_fraction * total_steps``, at least 1).
    """
    total_steps = max(int(total_steps), 1)
    if warmup_steps is None:
        warmup_steps = int(math.ceil(warmup_fraction * total_steps))
    warmup_steps = min(max(int(warmup_steps), 1), total_steps)
    return _ConfiguredWarmupCosineSchedule(
        optimizer, warmup_steps=warmup_steps, t_total=total_steps, end_lr=end_lr, warmup_multiplier=warmup_multiplier
    )


# ---------------------------------------------------------------------------------------------- checkpoints
class _EngineRef:
    """Checkpoint entry standing for the engine a handler gets attached to (``state_dict`` = its counters)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def state_dict(self) -> dict[str, Any]:
        if self.engine is None:
            raise RuntimeError("checkpoint handler is not attached to an engine")
        return dict(self.engine.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if self.engine is None:
            raise RuntimeError("checkpoint handler is not attached to an engine")
        self.engine.load_state_dict(state_dict)


class NetworkArgsRecord:
    """Checkpoint entry holding the network's full constructor arguments (``network.init_args``: preset plus every
    override), saved as ``network_kwargs`` so whatever loads the checkpoint rebuilds exactly the trained network.

    On resume, ``load_state_dict`` refuses a checkpoint trained with different network arguments (naming the keys
    that differ) instead of failing later with a tensor size mismatch.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, Any]:
        net = unwrap_network(self.network)
        args = getattr(net, "init_args", None)
        if args is None:
            raise TypeError(f"{type(net).__name__} has no init_args; only busgen networks record their arguments")
        return copy.deepcopy(dict(args))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        current = self.state_dict()
        differ = sorted(k for k in set(current) | set(state_dict) if current.get(k) != state_dict.get(k))
        if differ:
            detail = ", ".join(f"{k}: checkpoint {state_dict.get(k)!r} vs config {current.get(k)!r}" for k in differ)
            raise ValueError(f"the checkpoint to resume from was trained with other network arguments ({detail}); "
                             "use the same settings, or a new output_dir / --resume false to start over")


class SettingsRecord:
    """Checkpoint entry holding the training settings (the preset as actually trained, see
    :func:`busgen_monai.presets.trained_settings`), saved as ``settings``: image size, channels, noise schedule,
    guidance weight, so a sampler rebuilds the whole generator from the checkpoint alone.

    On resume, a checkpoint trained at another image size, channel count or noise schedule is refused.
    """

    _MUST_MATCH = ("image_size", "image_channels", "num_train_timesteps", "beta_start", "beta_end")

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = copy.deepcopy(dict(settings))

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.settings)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        differ = [k for k in self._MUST_MATCH if k in state_dict and state_dict[k] != self.settings.get(k)]
        if differ:
            detail = ", ".join(f"{k}: checkpoint {state_dict[k]!r} vs config {self.settings.get(k)!r}" for k in differ)
            raise ValueError(f"the checkpoint to resume from was trained with other settings ({detail}); "
                             "use the same settings, or a new output_dir / --resume false to start over")


class TrainerCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` that also saves the engine it is attached to under ``engine_key``.

    All other arguments are ``CheckpointSaver``'s; ``save_dict`` holds the network, optimizer, LR scheduler, EMA,
    condition codec... (anything with ``state_dict``).
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        if engine_key in save_dict:
            raise ValueError(f"save_dict already has {engine_key!r}; the saver adds the engine under that key itself")
        self._engine_ref = _EngineRef()
        super().__init__(save_dir, {**save_dict, engine_key: self._engine_ref}, **kwargs)

    def attach(self, engine: Engine) -> None:
        self._engine_ref.engine = engine
        super().attach(engine)


class ResumeCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` that also restores the engine it is attached to (``engine_key``), so
    training continues at the saved iteration with the saved optimizer/scheduler/EMA state.

    ``load_path=None`` (no checkpoint yet, e.g. ``latest_checkpoint(ckpt_dir)`` of a fresh run) makes it a no-op.
    Attach it before handlers that act on ``Events.STARTED`` so they see the restored state.
    """

    def __init__(self, load_path: str | None, load_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        if engine_key in load_dict:
            raise ValueError(f"load_dict already has {engine_key!r}; the loader adds the engine under that key itself")
        self._engine_ref = _EngineRef()
        self.enabled = load_path is not None
        path = str(load_path) if load_path is not None else "<none>"
        super().__init__(path, {**load_dict, engine_key: self._engine_ref}, **kwargs)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            logger.info("no checkpoint to resume from: training starts at iteration 0")
            return
        self._engine_ref.engine = engine
        super().attach(engine)


_CKPT = re.compile(r"(?:iteration|epoch)=(\d+)")


def latest_checkpoint(ckpt_dir: str | os.PathLike | None, pattern: str = "*.pt") -> str | None:
    """Newest checkpoint in ``ckpt_dir`` matching ``pattern`` (``None`` if there is none): the highest
    ``iteration=N`` or ``epoch=N`` in the file names written by ``CheckpointSaver`` (interval and final
    checkpoints), the newest file on ties; files without a number count lowest. The one checkpoint finder of the
    project: plugins call it with their own pattern (e.g. ``"checkpoint_*.pt"``)."""
    if not ckpt_dir or not Path(ckpt_dir).is_dir():
        return None
    files = [p for p in Path(ckpt_dir).glob(pattern) if p.is_file()]
    if not files:
        return None

    def key(p: Path) -> tuple[int, float]:
        m = _CKPT.search(p.name)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)

    return str(max(files, key=key))
