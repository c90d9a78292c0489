"""Ignite handlers for the training step of diffusion training on :class:`monai.engines.SupervisedTrainer` (MONAI
handler style: ``attach(engine)``), and the LR schedule.

- :class:`GradientClipHandler`: clip the gradient norm after ``backward`` and before ``optimizer.step``
  (``SupervisedTrainer`` has no clipping argument; it fires ``IterationEvents.BACKWARD_COMPLETED`` in between).
- :class:`EMAHandler`: exponential moving average of the weights in a :class:`torch.optim.swa_utils.AveragedModel`;
  has ``state_dict``/``load_state_dict`` so checkpoints save and resume it.
- :class:`ProgressBarHandler`: ignite's ``ProgressBar`` with the loss shown, attachable from a bundle config.
- :func:`warmup_cosine_schedule`, :func:`unwrap_network`.

Validation loss and sample grids are in :mod:`.monitoring`, checkpoints in :mod:`.checkpoints`; their names are
re-exported here for code that imported them from this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.optimizers import WarmupCosineSchedule
from torch import nn
from torch.optim.swa_utils import AveragedModel


from ._common import unwrap_network
from .checkpoints import (
    NetworkArgsRecord,
    ResumeCheckpointLoader,
    SettingsRecord,
    TrainerCheckpointSaver,
    latest_checkpoint,
)
from .monitoring import DiffusionValidationLossHandler, SampleGridHandler, first_batch

__all__ = [
    "unwrap_network",
    "GradientClipHandler",
    "EMAHandler",
    "ProgressBarHandler",
    "warmup_cosine_schedule",
    # re-exported from .monitoring and .checkpoints
    "DiffusionValidationLossHandler",
    "SampleGridHandler",
    "first_batch",
    "NetworkArgsRecord",
    "SettingsRecord",
    "TrainerCheckpointSaver",
    "ResumeCheckpointLoader",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)


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
