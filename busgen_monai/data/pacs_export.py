"""Moved to :mod:`busgen_monai.synthetic.pacs_export` (fixture generators live apart from the real loaders).

This module re-exports the names it had (the same objects) so that existing imports keep working.
"""

from __future__ import annotations

from busgen_monai.synthetic.pacs_export import (
    ENHANCED_SR_STORAGE,
    EXPORT_KINDS,
    SECONDARY_CAPTURE_IMAGE_STORAGE,
    US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE,
    write_pacs_export,
)

__all__ = [
    "US_MULTIFRAME_IMAGE_STORAGE",
    "US_IMAGE_STORAGE",
    "SECONDARY_CAPTURE_IMAGE_STORAGE",
    "ENHANCED_SR_STORAGE",
    "EXPORT_KINDS",
    "write_pacs_export",
]
