"""Moved to :mod:`busgen_monai.synthetic` (fixture generators live apart from the real loaders): the phantom is
:mod:`busgen_monai.synthetic.phantom` (with :mod:`~busgen_monai.synthetic.dataset` for data sets on disk) and its
shape measurements are :mod:`busgen_monai.evaluation.lesion_shape`.

This module re-exports the names it had (the same objects) so that existing imports keep working.
"""

from __future__ import annotations

from busgen_monai.evaluation.lesion_shape import posterior_contrast, shape_statistics, speckle_correlation_length
from busgen_monai.synthetic.dataset import sample_grid, write_dataset
from busgen_monai.synthetic.device_styles import PHANTOM_DEVICES, DeviceStyle, get_device_style
from busgen_monai.synthetic.phantom import (
    BIRADS_CATEGORIES,
    PHANTOM_PATHOLOGIES,
    PhantomCase,
    generate_case,
    generate_cine,
    mask_to_box,
)

__all__ = [
    "DeviceStyle",
    "PHANTOM_DEVICES",
    "PHANTOM_PATHOLOGIES",
    "BIRADS_CATEGORIES",
    "PhantomCase",
    "get_device_style",
    "generate_case",
    "generate_cine",
    "write_dataset",
    "sample_grid",
    "mask_to_box",
    "shape_statistics",
    "posterior_contrast",
    "speckle_correlation_length",
]
