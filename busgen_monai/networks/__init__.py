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
