"""The sampler factory (:func:`build_scheduler`, used by every bundle and script) and samplers MONAI lacks, with the API of ``monai.networks.schedulers`` (``set_timesteps``, ``step``, ``add_noise``)."""

from __future__ import annotations

from .dpm_solver import FINAL_SIGMAS_TYPES, TIMESTEP_SPACINGS, DPMSolverMultistepScheduler, DPMSolverPredictionType
from .factory import SAMPLERS, build_scheduler

__all__ = ["build_scheduler", "SAMPLERS", "DPMSolverMultistepScheduler", "DPMSolverPredictionType", "TIMESTEP_SPACINGS", "FINAL_SIGMAS_TYPES"]
