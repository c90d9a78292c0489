"""Prepare-batch for conditional diffusion training with classifier-free-guidance condition dropout.

:class:`ConditionalDiffusionPrepareBatch` extends :class:`monai.engines.DiffusionPrepareBatch` (noise and timesteps
drawn as MONAI does) with condition dropout. It returns ``(images, noise, (), {"noise", "timesteps", "condition",
"mode"})`` so :class:`monai.engines.SupervisedTrainer` calls the stock :class:`monai.inferers.DiffusionInferer` as
``inferer(images, network, noise=..., timesteps=..., condition=packed, mode="crossattn")``, which runs
``network(x=noisy, timesteps=t, context=packed)``; :class:`~busgen_monai.networks.ConditionalDiffusionUNet` reads the
packed conditions from ``context``. The loss is then ``MSELoss(prediction, noise)`` (epsilon prediction).

Dropout modes (``drop_mode``):

- ``"joint"`` (BUSGen): with probability ``drop_prob`` *all* conditions of an item are dropped together
  (null pathology, null device, null BI-RADS, no boxes = empty box mask).
- ``"independent"``: each condition is dropped on its own with ``drop_probs[name]`` (default ``drop_prob``).

The drawn masks are counted (``num_items``, ``num_dropped``, :attr:`drop_rates`) and the last one is kept in
``last_drop_mask`` so the realised rate can be checked against the configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import DiffusionPrepareBatch

from busgen_monai.data.conditions import CONDITION_KEYS, drop_conditions

__all__ = ["DROP_MODES", "ConditionalDiffusionPrepareBatch"]

DROP_MODES = ("joint", "independent")


class ConditionalDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Draw noise and timesteps, drop conditions for CFG training, and hand MONAI's DiffusionInferer what it needs.

    Args:
        num_train_timesteps: ``T``; timesteps are drawn uniformly from ``0 .. T-1``.
        condition_name: batch key of the packed conditions ``(B, 1, K)`` (see :mod:`busgen_monai.data.conditions`).
        image_key: batch key of the images ``(B, C, H, W)`` in ``[-1, 1]``.
        drop_prob: probability of dropping the conditions (``joint`` mode) / default per condition (``independent``).
        drop_mode: ``joint`` or ``independent``.
        drop_probs: per-condition probabilities for ``independent`` mode, e.g. ``{"boxes": 0.2}``; others default to
            ``drop_prob``.
        seed: seed of a private generator for the dropout draws (``None``: the global torch RNG).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        condition_name: str = "cond",
        image_key: str = "image",
        drop_prob: float = 0.1,
        drop_mode: str = "joint",
        drop_probs: Mapping[str, float] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        if drop_mode not in DROP_MODES:
            raise ValueError(f"drop_mode must be one of {DROP_MODES}, got {drop_mode!r}")
        probs = dict(drop_probs or {})
        unknown = set(probs) - set(CONDITION_KEYS)
        if unknown:
            raise ValueError(
                f"drop_probs has unknown conditions {sorted(unknown)}; conditions are {list(CONDITION_KEYS)}"
            )
        if drop_mode == "joint" and probs:
            raise ValueError("drop_probs is only used with drop_mode='independent'")
        for name, p in {"drop_prob": drop_prob, **probs}.items():
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name}: dropout probability must be in [0, 1], got {p}")
        self.image_key = image_key
        self.drop_prob = float(drop_prob)
        self.drop_mode = drop_mode
        self.drop_probs = {k: float(probs.get(k, drop_prob)) for k in CONDITION_KEYS}
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        self.last_timesteps: torch.Tensor | None = None  # read by busgen_monai.engines.DiffusionLoss (SNR weighting)
        self.reset_counters()

    # ------------------------------------------------------------------ dropout bookkeeping
    def reset_counters(self) -> None:
        self.num_items = 0
        self.num_dropped = {k: 0 for k in CONDITION_KEYS}
        self.num_dropped_all = 0
        self.last_drop_mask: dict[str, torch.Tensor] = {}

    @property
    def drop_rates(self) -> dict[str, float]:
        """Realised dropout rate per condition (and ``all``: every condition dropped) since the last reset."""
        n = max(self.num_items, 1)
        rates = {k: v / n for k, v in self.num_dropped.items()}
        rates["all"] = self.num_dropped_all / n
        return rates

    def expected_drop_rates(self) -> dict[str, float]:
        """Configured dropout rate per condition."""
        if self.drop_mode == "joint":
            return {**{k: self.drop_prob for k in CONDITION_KEYS}, "all": self.drop_prob}
        prod = 1.0
        for k in CONDITION_KEYS:
            prod *= self.drop_probs[k]
        return {**self.drop_probs, "all": prod}

    def draw_drop_mask(self, batch_size: int) -> dict[str, torch.Tensor]:
        """``{condition: (B,) bool}`` dropout masks for one batch (and update the counters)."""
        if self.drop_mode == "joint":
            joint = torch.rand(batch_size, generator=self.generator) < self.drop_prob
            mask = {k: joint for k in CONDITION_KEYS}
        else:
            mask = {k: torch.rand(batch_size, generator=self.generator) < self.drop_probs[k] for k in CONDITION_KEYS}
        self.num_items += batch_size
        for k in CONDITION_KEYS:
            self.num_dropped[k] += int(mask[k].sum())
        self.num_dropped_all += int(torch.stack([mask[k] for k in CONDITION_KEYS]).all(0).sum())
        self.last_drop_mask = mask
        return mask

    # ------------------------------------------------------------------ MONAI API
    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        keys = (self.image_key, self.condition_name)
        if not isinstance(batchdata, Mapping) or any(k not in batchdata for k in keys):
            raise KeyError(
                f"ConditionalDiffusionPrepareBatch needs a dict batch with {self.image_key!r} and "
                f"{self.condition_name!r} (packed conditions from busgen_monai.data.transforms.EncodeConditionsd); "
                f"got keys {sorted(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__}"
            )
        images = batchdata[self.image_key]
        images = images.as_tensor() if isinstance(images, MetaTensor) else torch.as_tensor(images)
        images = images.to(device, non_blocking=non_blocking, **kwargs)
        noise = self.get_noise(images).to(device, non_blocking=non_blocking, **kwargs)
        timesteps = self.get_timesteps(images).to(device, non_blocking=non_blocking, **kwargs)
        target = self.get_target(images, noise, timesteps).to(device, non_blocking=non_blocking, **kwargs)
        cond = batchdata[self.condition_name]
        cond = (cond.as_tensor() if isinstance(cond, MetaTensor) else torch.as_tensor(cond)).float()
        if cond.dim() == 2:
            cond = cond[:, None]
        cond = drop_conditions(cond, self.draw_drop_mask(images.shape[0]))
        cond = cond.to(device, non_blocking=non_blocking, **kwargs)
        self.last_timesteps = timesteps
        infer_kwargs = {"noise": noise, "timesteps": timesteps, "condition": cond, "mode": "crossattn"}
        return images, target, (), infer_kwargs
