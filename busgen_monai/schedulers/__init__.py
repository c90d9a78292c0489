"""Samplers MONAI lacks, with the API of ``monai.networks.schedulers`` (``set_timesteps``, ``step``, ``add_noise``)."""

from __future__ import annotations

from .dpm_solver import FINAL_SIGMAS_TYPES, TIMESTEP_SPACINGS, DPMSolverMultistepScheduler, DPMSolverPredictionType

__all__ = ["DPMSolverMultistepScheduler", "DPMSolverPredictionType", "TIMESTEP_SPACINGS", "FINAL_SIGMAS_TYPES"]
