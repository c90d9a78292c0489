"""Prepare-batch and ignite handlers for training the conditional diffusion model on MONAI engines."""

from __future__ import annotations

from .checkpoints import attach_handlers
from .distributed import end_process_group
from .handlers import (
    DiffusionValidationLossHandler,
    EMAHandler,
    GradientClipHandler,
    NetworkArgsRecord,
    ProgressBarHandler,
    SettingsRecord,
    ResumeCheckpointLoader,
    SampleGridHandler,
    TrainerCheckpointSaver,
    first_batch,
    latest_checkpoint,
    unwrap_network,
    warmup_cosine_schedule,
)
from .prepare_batch import DROP_MODES, ConditionalDiffusionPrepareBatch
from .losses import LOSS_WEIGHTINGS, DiffusionLoss

__all__ = [
    "attach_handlers",
    "end_process_group",
    "DROP_MODES",
    "ConditionalDiffusionPrepareBatch",
    "DiffusionLoss",
    "LOSS_WEIGHTINGS",
    "DiffusionValidationLossHandler",
    "EMAHandler",
    "GradientClipHandler",
    "NetworkArgsRecord",
    "ProgressBarHandler",
    "SettingsRecord",
    "ResumeCheckpointLoader",
    "SampleGridHandler",
    "TrainerCheckpointSaver",
    "first_batch",
    "latest_checkpoint",
    "unwrap_network",
    "warmup_cosine_schedule",
]
