"""Prepare-batch and ignite handlers for training the conditional diffusion model on MONAI engines."""

from __future__ import annotations

from .handlers import (
    DiffusionValidationLossHandler,
    EMAHandler,
    GradientClipHandler,
    ProgressBarHandler,
    ResumeCheckpointLoader,
    SampleGridHandler,
    TrainerCheckpointSaver,
    first_batch,
    latest_checkpoint,
    unwrap_network,
    warmup_cosine_schedule,
)
from .prepare_batch import DROP_MODES, ConditionalDiffusionPrepareBatch

__all__ = [
    "DROP_MODES",
    "ConditionalDiffusionPrepareBatch",
    "DiffusionValidationLossHandler",
    "EMAHandler",
    "GradientClipHandler",
    "ProgressBarHandler",
    "ResumeCheckpointLoader",
    "SampleGridHandler",
    "TrainerCheckpointSaver",
    "first_batch",
    "latest_checkpoint",
    "unwrap_network",
    "warmup_cosine_schedule",
]
