"""Shared fixtures for tests/ and the plugins' own tests (plugins/*/tests): where the real data lives, and skips with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("BUSGEN_SHARED_DATA", ROOT.parent / "shared" / "data"))
BUS_BRA = SHARED_DATA / "bus_bra"
DICOM_DIR = SHARED_DATA / "dicom"


@pytest.fixture(scope="session")
def bus_bra_root() -> Path:
    if not (BUS_BRA / "bus_data.csv").is_file():
        pytest.skip(f"BUS-BRA not found at {BUS_BRA} (real data lives in ../shared/data; set BUSGEN_SHARED_DATA)")
    return BUS_BRA


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    if not DICOM_DIR.is_dir():
        pytest.skip(f"real DICOM folder not found at {DICOM_DIR} (set BUSGEN_SHARED_DATA)")
    return DICOM_DIR
