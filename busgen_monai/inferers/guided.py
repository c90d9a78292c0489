"""Guided sampling for the conditional BUSGen network: classifier-free guidance, guard hooks, filters.

:class:`GuidedDiffusionInferer` is a :class:`monai.inferers.DiffusionInferer` (its ``__call__`` computes the
training loss unchanged) whose :meth:`~GuidedDiffusionInferer.sample` adds what BUSGen-style generation needs:

- **Classifier-free guidance** over the condition set, BUSGen's form

      eps~ = (1 + w) * eps(x_t, t, c) - w * eps(x_t, t, c_null)

  where ``w`` is ``guidance_scale`` (BUSGen: w = 1.8; MONAI's ``cfg`` argument is ``1 + w``). ``c_null`` drops
  all conditions together (default, as BUSGen trains) or only some of them (``guidance_drop=("pathology",)``
  guides on pathology while keeping device and boxes in both passes). With ``batched_cfg=True`` (default) the
  conditional and unconditional passes are one forward of a ``2B`` batch; ``False`` runs two passes (as the
  public BUSGen code does) and gives the same result.
- **Per-step guards** (:class:`busgen_monai.plugins.SamplingGuard`, e.g. CPSampling): after guidance, each guard is
  called as ``guard(x_t, t, eps, alphas_cumprod_t=..., conditions=..., step=i, num_steps=n)`` and returns the
  (possibly modified) noise prediction handed to the scheduler. Guards must not modify ``x_t`` in place.
- **Schedulers**: any MONAI scheduler with ``set_timesteps``/``step`` (DDPM, DDIM,
  :class:`busgen_monai.schedulers.DPMSolverMultistepScheduler`). ``generator`` is passed to stochastic steps.

Post-hoc filters (:class:`busgen_monai.plugins.DatalistFilter`) act on generated items, not on the sampling loop;
they are applied by :mod:`busgen_monai.inferers.generate`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler

from ..data.conditions import drop_conditions

__all__ = ["GuidedDiffusionInferer", "classifier_free_guidance", "null_like"]

_ALL = ("pathology", "device", "birads", "boxes")


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """BUSGen's guidance ``(1 + w) * eps_cond - w * eps_uncond``."""
    return (1.0 + guidance_scale) * eps_cond - guidance_scale * eps_uncond


def null_like(conditions: torch.Tensor, drop: Sequence[str] = _ALL) -> torch.Tensor:
    """The unconditional counterpart of a packed condition tensor: the conditions in ``drop`` set to null."""
    unknown = set(drop) - set(_ALL)
    if unknown:
        raise ValueError(f"guidance_drop: unknown conditions {sorted(unknown)}; choose from {list(_ALL)}")
    if set(drop) == set(_ALL):
        return torch.full_like(conditions, -1.0)
    flags = {name: torch.ones(conditions.shape[0], dtype=torch.bool, device=conditions.device) for name in drop}
    return drop_conditions(conditions, flags)


def _accepts_generator(scheduler: Scheduler) -> bool:
    try:
        return "generator" in inspect.signature(scheduler.step).parameters
    except (TypeError, ValueError):
        return False


class GuidedDiffusionInferer(DiffusionInferer):
    """DiffusionInferer with BUSGen's classifier-free guidance, guard hooks and batched CFG.

    Args:
        scheduler: the sampling scheduler (its ``set_timesteps`` is called by :meth:`sample` when
            ``num_inference_steps`` is given).
        guidance_scale: ``w`` (0 disables guidance: one conditional pass).
        guidance_drop: conditions dropped in the unconditional pass.
        batched_cfg: one ``2B`` forward instead of two ``B`` forwards.
        guards: sampling guards called at every step, in order.
        num_inference_steps: solver steps (``None``: use the scheduler's current timesteps).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        guidance_scale: float = 1.8,
        guidance_drop: Sequence[str] = _ALL,
        batched_cfg: bool = True,
        guards: Sequence[Any] = (),
        num_inference_steps: int | None = None,
    ) -> None:
        super().__init__(scheduler)
        self.guidance_scale = float(guidance_scale)
        self.guidance_drop = tuple(guidance_drop)
        null_like(torch.zeros(1, 1, 7), self.guidance_drop)  # validate names early
        self.batched_cfg = bool(batched_cfg)
        self.guards = list(guards)
        self.num_inference_steps = num_inference_steps
        self.forward_passes = 0

    def guided_prediction(self, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                          conditions: torch.Tensor | None) -> torch.Tensor:
        """Noise prediction at ``(x, t)`` with classifier-free guidance (one or two forwards)."""
        b = x.shape[0]
        tt = t.expand(b) if t.ndim else t.repeat(b)
        if conditions is None or self.guidance_scale == 0.0:
            self.forward_passes += 1
            return model(x, timesteps=tt, context=conditions)
        uncond = null_like(conditions, self.guidance_drop)
        if self.batched_cfg:
            self.forward_passes += 1
            out = model(torch.cat([x, x]), timesteps=torch.cat([tt, tt]), context=torch.cat([conditions, uncond]))
            eps_c, eps_u = out.chunk(2)
        else:
            self.forward_passes += 2
            eps_c = model(x, timesteps=tt, context=conditions)
            eps_u = model(x, timesteps=tt, context=uncond)
        return classifier_free_guidance(eps_c, eps_u, self.guidance_scale)

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        input_noise: torch.Tensor,
        diffusion_model: torch.nn.Module,
        scheduler: Scheduler | None = None,
        save_intermediates: bool | None = False,
        intermediate_steps: int | None = 100,
        conditioning: torch.Tensor | None = None,
        mode: str = "crossattn",
        verbose: bool = True,
        seg: torch.Tensor | None = None,
        cfg: float | None = None,
        cfg_fill_value: float = -1.0,
        generator: torch.Generator | None = None,
        guards: Sequence[Any] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Sample images from noise.

        Args:
            input_noise: ``(B, C, H, W)`` start noise.
            diffusion_model: the conditional network (called ``model(x, timesteps=..., context=conditions)``).
            scheduler: overrides the inferer's scheduler.
            save_intermediates, intermediate_steps: return every ``intermediate_steps``-th step too.
            conditioning: packed conditions ``(B, 1, K)`` (see :mod:`busgen_monai.data.conditions`).
            mode: only ``"crossattn"`` (conditions go to the network's ``context``).
            verbose: progress bar.
            seg: unused (MONAI signature).
            cfg: MONAI-style scale ``1 + w``; when given it overrides ``guidance_scale``.
            cfg_fill_value: unused (the null conditions come from ``guidance_drop``).
            generator: random generator for stochastic schedulers.
            guards: overrides the inferer's guards for this call.
        """
        if mode != "crossattn":
            raise ValueError(f"GuidedDiffusionInferer.sample supports mode='crossattn' only, got {mode!r}")
        scheduler = scheduler or self.scheduler
        if self.num_inference_steps is not None:
            scheduler.set_timesteps(self.num_inference_steps, device=input_noise.device)
        saved_scale = self.guidance_scale
        if cfg is not None:
            self.guidance_scale = float(cfg) - 1.0
        guards = self.guards if guards is None else list(guards)
        for g in guards:
            if hasattr(g, "reset"):
                g.reset()
        pass_generator = generator is not None and _accepts_generator(scheduler)
        alphas_cumprod = scheduler.alphas_cumprod.to(input_noise.device)
        timesteps = scheduler.timesteps
        iterator = enumerate(timesteps)
        if verbose:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(timesteps), desc="sampling", leave=False)
        image = input_noise
        intermediates = []
        try:
            for i, t in iterator:
                t_dev = t.to(input_noise.device)
                eps = self.guided_prediction(diffusion_model, image, t_dev, conditioning)
                for g in guards:
                    eps = g(image, t_dev, eps, alphas_cumprod_t=alphas_cumprod[int(t)], conditions=conditioning,
                            step=i, num_steps=len(timesteps), model=diffusion_model)
                if pass_generator:
                    image, _ = scheduler.step(eps, t, image, generator=generator)
                else:
                    image, _ = scheduler.step(eps, t, image)
                if save_intermediates and intermediate_steps and int(t) % intermediate_steps == 0:
                    intermediates.append(image)
        finally:
            self.guidance_scale = saved_scale
        if save_intermediates:
            return image, intermediates
        return image

    def guard_stats(self) -> dict[str, Mapping[str, Any]]:
        """Each guard's ``stats()`` (e.g. how often CPSampling fired)."""
        return {type(g).__name__: g.stats() for g in self.guards if hasattr(g, "stats")}
