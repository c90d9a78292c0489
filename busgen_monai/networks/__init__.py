"""Conditional diffusion network(s) built on :mod:`monai.networks.nets`.

The condition encoding the network reads (:class:`ConditionCodec`, the packed condition tensor) is the data contract
and lives in :mod:`busgen_monai.data.conditions`; it is re-exported here (and from ``busgen_monai.networks.conditions``)
for one release.
"""

from __future__ import annotations

from .conditional_unet import (
    BOX_CONDITION_MODES,
    CONDITION_INJECTION_MODES,
    ConditionalDiffusionUNet,
    ConditionEmbedding,
    FourierBoxEmbedding,
    count_parameters,
)
from busgen_monai.data.conditions import (
    CONDITION_KEYS,
    ConditionCodec,
    Conditions,
    condition_width,
    drop_conditions,
    null_conditions,
    pack_conditions,
    render_box_mask,
    unpack_conditions,
)

__all__ = [
    "BOX_CONDITION_MODES",
    "CONDITION_INJECTION_MODES",
    "CONDITION_KEYS",
    "ConditionCodec",
    "ConditionEmbedding",
    "ConditionalDiffusionUNet",
    "Conditions",
    "FourierBoxEmbedding",
    "condition_width",
    "count_parameters",
    "drop_conditions",
    "null_conditions",
    "pack_conditions",
    "render_box_mask",
    "unpack_conditions",
]

# Latent diffusion (issue #20): the DiT denoiser, the first-stage autoencoder, and the allow-list of generator
# classes a checkpoint may name (``network_class``); loading never imports a dotted path read from a file.
from .autoencoder import AutoencoderLoss, LatentAutoencoderKL, kl_divergence  # noqa: E402
from .dit import DIT_SIZES, ConditionalDiT, DiTBlock, DiTFinalLayer  # noqa: E402

GENERATOR_NETWORKS = {"ConditionalDiffusionUNet": ConditionalDiffusionUNet, "ConditionalDiT": ConditionalDiT}
AUTOENCODER_NETWORKS = {"LatentAutoencoderKL": LatentAutoencoderKL}

__all__ += [
    "AUTOENCODER_NETWORKS", "AutoencoderLoss", "ConditionalDiT", "DIT_SIZES", "DiTBlock", "DiTFinalLayer",
    "GENERATOR_NETWORKS", "LatentAutoencoderKL", "kl_divergence",
]
