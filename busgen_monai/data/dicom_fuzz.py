"""Moved to :mod:`busgen_monai.synthetic.dicom_fuzz` (fixture generators live apart from the real loaders); this
module re-exports it for one release."""

from busgen_monai.synthetic.dicom_fuzz import *  # noqa: F401,F403
from busgen_monai.synthetic.dicom_fuzz import __all__  # noqa: F401
