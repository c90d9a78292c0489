"""Synthetic data with known ground truth, for demos and tests (fixture generators, apart from the real loaders).

- :mod:`.phantom`: a deterministic, physics-inspired breast-ultrasound phantom (cases and cines with lesion masks,
  boxes, pathology, BI-RADS and device style); :mod:`.device_styles`, :mod:`.anatomy` and :mod:`.render` are its
  parts; :mod:`.dataset` writes a phantom data set with its datalist.
- :mod:`.pacs_export`: a fake PACS export (DICOM cines and stills, DICOMDIR, burned-in PHI, objects an ingester
  must reject) with a ground-truth file; :mod:`.pacs_dicom` encodes its DICOM.
- :mod:`.dicom_fuzz`: seeded malformed mutants of real DICOM files and audits of an ingestion's outputs (the
  ingester's hardening tests and ``benchmarks/bench_fuzz.py``).

The lesion shape measurements (:func:`~busgen_monai.evaluation.lesion_shape.shape_statistics`, posterior contrast,
speckle size) live in :mod:`busgen_monai.evaluation.lesion_shape`. ``busgen_monai.data.phantom`` and
``busgen_monai.data.pacs_export`` re-export these names.
"""

from __future__ import annotations

from .dataset import sample_grid, write_dataset
from .device_styles import PHANTOM_DEVICES, DeviceStyle, get_device_style
from .pacs_export import (
    ENHANCED_SR_STORAGE,
    EXPORT_KINDS,
    SECONDARY_CAPTURE_IMAGE_STORAGE,
    US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE,
    write_pacs_export,
)
from .phantom import BIRADS_CATEGORIES, PHANTOM_PATHOLOGIES, PhantomCase, generate_case, generate_cine, mask_to_box

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
    "US_MULTIFRAME_IMAGE_STORAGE",
    "US_IMAGE_STORAGE",
    "SECONDARY_CAPTURE_IMAGE_STORAGE",
    "ENHANCED_SR_STORAGE",
    "EXPORT_KINDS",
    "write_pacs_export",
]
