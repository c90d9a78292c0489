"""Diffusion training loss with per-timestep weighting (plain epsilon-MSE or min-SNR-gamma).

:class:`monai.engines.SupervisedTrainer` calls ``loss_function(prediction, target)`` with no timesteps, so
:class:`DiffusionLoss` reads the timesteps of the current batch from the prepare-batch object
(:class:`~busgen_monai.engines.ConditionalDiffusionPrepareBatch` keeps them in ``last_timesteps``; the trainer calls
prepare-batch and then the loss on the same batch within one iteration).

Weightings (epsilon prediction; ``snr_t = abar_t / (1 - abar_t)``):

- ``"none"``: ``mean((eps_hat - eps)^2)`` (DDPM's simple loss, BUSGen).
- ``"min_snr"``: per item ``w_t = min(snr_t, gamma) / snr_t`` times the item's MSE, averaged over the batch
  (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023: the epsilon form of the
  clamped-SNR loss; ``gamma = 5`` in the paper). It down-weights the many low-noise steps whose epsilon target is
  almost unlearnable and converges faster per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LOSS_WEIGHTINGS", "DiffusionLoss", "min_snr_weights"]

LOSS_WEIGHTINGS = ("none", "min_snr")


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """``min(snr_t, gamma) / snr_t`` for epsilon prediction, one weight per timestep ``(B,)``."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps.long()].double()
    snr = abar / (1.0 - abar)
    return (snr.clamp(max=float(gamma)) / snr).float()


class DiffusionLoss(nn.Module):
    """Epsilon-MSE with optional min-SNR-gamma weighting.

    Args:
        scheduler: the training noise scheduler (its ``alphas_cumprod`` defines the SNR).
        prepare_batch: the prepare-batch object of the same trainer (for ``last_timesteps``); needed for ``min_snr``.
        weighting: ``"none"`` or ``"min_snr"``.
        gamma: the clamp of ``min_snr``.

    Shapes: ``prediction`` and ``target`` ``(B, C, H, W)``; returns a scalar.
    """

    def __init__(self, scheduler: Any, prepare_batch: Any = None, weighting: str = "none", gamma: float = 5.0) -> None:
        super().__init__()
        if weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r} (key: loss_weighting)")
        if weighting == "min_snr" and prepare_batch is None:
            raise ValueError("min_snr weighting needs the trainer's prepare_batch (it holds the batch's timesteps)")
        if float(gamma) <= 0:
            raise ValueError(f"min-SNR gamma must be > 0, got {gamma} (key: min_snr_gamma)")
        self.weighting = weighting
        self.gamma = float(gamma)
        self.prepare_batch = prepare_batch
        self.register_buffer("alphas_cumprod", torch.as_tensor(scheduler.alphas_cumprod).detach().clone().float(),
                             persistent=False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        err = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
        if self.weighting == "none":
            return err.mean()
        t = getattr(self.prepare_batch, "last_timesteps", None)
        if t is None or t.numel() != err.numel():
            raise RuntimeError("DiffusionLoss(min_snr): the prepare-batch holds no timesteps for this batch")
        return (min_snr_weights(self.alphas_cumprod, t, self.gamma).to(err.device) * err).mean()
