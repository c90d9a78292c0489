"""Moved to :mod:`busgen_monai.data.dicom.phi` (one concept per module in the :mod:`busgen_monai.data.dicom` package).

This module re-exports its names (the same objects) so that existing imports keep working.
"""

from __future__ import annotations

from .dicom.phi import (  # noqa: F401 - re-exports
    PERSON_NAME_KEYWORDS,
    PHI_KEYWORDS,
    SCAN_BYTES,
    IdentifierValues,
    __all__,
    contains_phi,
    identifier_values,
    phi_strings,
    raw_identifier_values,
    safe_exception,
    safe_token,
    safe_uid,
    scrub,
    scrub_record,
)
