"""The one place a noise scheduler / sampler is built from a generator's settings.

Every bundle (pretrain's training and validation-sample schedulers, the sample and adapt inference configs), the
adaptation demo, the CLI and the benchmarks call :func:`build_scheduler`, so the noise schedule (``T``, linear
betas), the prediction type and clipping are written once, and changing the sampler is one edit: the sample
bundle's ``sampler`` key (``--sampler ddim``) or the ``kind`` argument here.

=========  =====================================================  ==========================================
kind       scheduler                                              use
=========  =====================================================  ==========================================
ddpm       ``monai.networks.schedulers.DDPMScheduler``            training (noise schedule), ancestral sampling
ddim       ``monai.networks.schedulers.DDIMScheduler``            fast validation grids during training
dpmpp      :class:`~busgen_monai.schedulers.DPMSolverMultistepScheduler`, order 2, linspace grid  sampling (default)
=========  =====================================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SAMPLERS", "build_scheduler"]

#: the scheduler kinds :func:`build_scheduler` knows
SAMPLERS = ("ddpm", "ddim", "dpmpp")
_ALIASES = {"dpm": "dpmpp", "dpm++": "dpmpp", "dpm-solver++": "dpmpp", "dpm_solver": "dpmpp"}


def build_scheduler(preset: Mapping[str, Any] | str, kind: str = "ddpm", num_inference_steps: int | None = None,
                    **overrides: Any):
    """A scheduler for a generator with the noise schedule of ``preset``.

    Args:
        preset: a preset dict or a checkpoint's trained settings
            (:func:`busgen_monai.inferers.generator_settings`); ``num_train_timesteps``, ``beta_start`` and
            ``beta_end`` are read from it.
        kind: one of :data:`SAMPLERS` (``"ddpm"``, ``"ddim"``, ``"dpmpp"``; ``"dpm++"`` is accepted too).
        num_inference_steps: set the sampling grid now (``set_timesteps``); ``None`` leaves it to the caller.
        overrides: constructor arguments passed on unchanged (e.g. ``solver_order=1``, ``clip_sample=False``).

    Raises:
        ValueError: an unknown ``kind`` or a settings dict without the noise-schedule keys (naming them).
    """
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    from .dpm_solver import DPMSolverMultistepScheduler

    if isinstance(preset, str):
        raise TypeError(f"build_scheduler needs the settings dict; for a preset name use "
                        f"busgen_monai.presets.build_scheduler({preset!r}, ...)")
    key = _ALIASES.get(str(kind).lower(), str(kind).lower())
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {list(SAMPLERS)} (key: sampler, e.g. --sampler dpmpp)")
    missing = [k for k in ("num_train_timesteps", "beta_start", "beta_end") if k not in preset]
    if missing:
        raise ValueError(f"the generator settings lack {missing}; pass a preset or the checkpoint's settings")
    args: dict[str, Any] = {
        "num_train_timesteps": int(preset["num_train_timesteps"]),
        "schedule": "linear_beta",
        "beta_start": float(preset["beta_start"]),
        "beta_end": float(preset["beta_end"]),
        "prediction_type": "epsilon",
        "clip_sample": True,
    }
    if key == "dpmpp":
        args.update(solver_order=2, timestep_spacing="linspace")
    args.update(overrides)
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler}[key]
    sched = cls(**args)
    if num_inference_steps is not None:
        sched.set_timesteps(int(num_inference_steps))
    return sched
