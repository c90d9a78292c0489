"""The modules split into packages (data.dicom, data.ingest) or moved (data.phantom, data.pacs_export, data.dicom_phi
-> synthetic/, evaluation.lesion_shape, data.dicom.phi) keep their old import paths: every name they listed is
importable there and is the very object of its new home, so code and configs written against the old paths still work.
"""

from __future__ import annotations

import importlib

import pytest

import busgen_monai.data.dicom.phi as phi
import busgen_monai.synthetic.dicom_fuzz as dicom_fuzz
import busgen_monai.evaluation.lesion_shape as lesion_shape
import busgen_monai.synthetic as synthetic

OLD_PATHS = {
    "busgen_monai.data.phantom": [synthetic, lesion_shape],
    "busgen_monai.data.pacs_export": [synthetic],
    "busgen_monai.data.dicom_phi": [phi],
    "busgen_monai.data.dicom_fuzz": [dicom_fuzz],
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_module_paths_re_export_the_moved_objects(old):
    module = importlib.import_module(old)
    assert module.__all__
    for name in module.__all__:
        homes = [home for home in OLD_PATHS[old] if hasattr(home, name)]
        assert homes, f"{old}.{name} has no new home"
        assert getattr(module, name) is getattr(homes[0], name), f"{old}.{name}"


def test_split_packages_keep_their_public_names():
    ingest = importlib.import_module("busgen_monai.data.ingest")
    dicom = importlib.import_module("busgen_monai.data.dicom")
    for name in ("REJECT_REASONS", "TRANSIENT_REASONS", "DEFAULT_BIOPSY_PATTERN", "IngestSettings", "IngestResult",
                 "IngestError", "ingest", "ingest_main", "scan_file", "decode_file", "file_id_of", "locate"):
        assert name in ingest.__all__ and hasattr(ingest, name)
    for name in ("sniff_dicom", "read_header", "describe", "UltrasoundDicom", "read_ultrasound", "select_region",
                 "detect_imaging_region", "scrub", "phi_strings", "uid_hash", "DicomRejectError", "check_geometry"):
        assert name in dicom.__all__ and callable(getattr(dicom, name))
    # names the single-module ingest.py happened to import stay reachable (new plugins were written against them)
    from busgen_monai.data.ingest import DicomRejectError, UltrasoundDicom, uid_hash

    assert DicomRejectError is dicom.DicomRejectError and UltrasoundDicom is dicom.UltrasoundDicom
    assert uid_hash("x", "PAT", "s") == dicom.uid_hash("x", "PAT", "s")
    with pytest.raises(ImportError):
        from busgen_monai.data.ingest import no_such_name  # noqa: F401
