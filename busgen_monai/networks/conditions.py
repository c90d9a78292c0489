"""Moved: the condition encoding is the data contract and lives in :mod:`busgen_monai.data.conditions`.

This module re-exports it (same objects) for one release so that existing imports keep working; import
:mod:`busgen_monai.data.conditions` (or :mod:`busgen_monai.networks`, which re-exports the public names) instead.
"""

from __future__ import annotations

from busgen_monai.data.conditions import (  # noqa: F401 - re-exports
    CONDITION_KEYS,
    NULL_BOX_VALUE,
    NUM_SCALAR_CONDITIONS,
    ConditionCodec,
    Conditions,
    __all__,
    box_pixel_ranges,
    condition_width,
    drop_conditions,
    max_boxes_of,
    null_conditions,
    pack_conditions,
    render_box_mask,
    resolve_conditions,
    unpack_conditions,
    valid_boxes,
)
