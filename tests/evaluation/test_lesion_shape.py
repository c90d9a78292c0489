"""Tests for busgen_monai.evaluation.lesion_shape on reference shapes (the phantom's lesions are measured in
tests/synthetic/test_phantom.py)."""

from __future__ import annotations

import numpy as np

from busgen_monai.evaluation.lesion_shape import shape_statistics


def test_shape_statistics_reference_shapes():
    yy, xx = np.mgrid[0:101, 0:101]
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= 30**2
    s = shape_statistics(disc)
    assert s["aspect_ratio"] == 1.0
    assert s["solidity"] > 0.96 and 0.9 < s["circularity"] < 1.1
    star = disc & ((np.abs(yy - 50) < 4) | (np.abs(xx - 50) < 4) | ((yy - 50) ** 2 + (xx - 50) ** 2 <= 12**2))
    t = shape_statistics(star)
    assert t["solidity"] < 0.6 and t["circularity"] < 0.5
