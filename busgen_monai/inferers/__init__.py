"""Guided sampling (classifier-free guidance, guard hooks), box priors, sharded data-set generation, and the latent
(autoencoder + DiT) generator family."""

from .box_prior import BoxPrior, box_features, features_to_boxes
from .generate import GenerationResult, file_sha256, generate_dataset, item_seed, plan_conditions, run_generation
from .guided import GuidedDiffusionInferer, classifier_free_guidance, null_like
from .latent import (
    AutoencoderRecord,
    LatentDiffusionModel,
    LatentDiffusionPrepareBatch,
    LatentTrainingInferer,
    NetworkClassRecord,
    is_latent,
    latent_scale_factor,
    load_autoencoder,
    network_class_of,
)
from .loading import (
    default_generator,
    export_generator,
    generator_settings,
    generator_state,
    load_generator,
    network_kwargs_of,
    read_checkpoint,
    resolve_checkpoint,
)

__all__ = [
    "AutoencoderRecord",
    "LatentDiffusionModel",
    "LatentDiffusionPrepareBatch",
    "LatentTrainingInferer",
    "NetworkClassRecord",
    "is_latent",
    "latent_scale_factor",
    "load_autoencoder",
    "network_class_of",
    "BoxPrior",
    "GenerationResult",
    "GuidedDiffusionInferer",
    "box_features",
    "classifier_free_guidance",
    "default_generator",
    "export_generator",
    "features_to_boxes",
    "file_sha256",
    "generate_dataset",
    "generator_settings",
    "generator_state",
    "item_seed",
    "load_generator",
    "network_kwargs_of",
    "null_like",
    "plan_conditions",
    "read_checkpoint",
    "resolve_checkpoint",
    "run_generation",
]
