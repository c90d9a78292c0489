"""Read ultrasound DICOM: recognise files, extract PHI-free metadata, decode frames, crop to the image.

This package knows what a DICOM file *says*; :mod:`busgen_monai.data.ingest` decides what to keep. One concept per
module:

- :mod:`.header`: recognise DICOM, read the header without pixels, locate the pixel data; SOP-class tables, the
  reject error, salted pseudonyms.
- :mod:`.phi`: identifying values of a file (however damaged its header), scrubbing, safe tokens.
- :mod:`.metadata`: the PHI-free :class:`DicomInfo` of a header and the checks made before decoding.
- :mod:`.region`: the ultrasound imaging region (metadata or detection).
- :mod:`.reader`: frame-by-frame decoding to 8-bit grey/RGB, cropped (:class:`UltrasoundDicom`).

Every public name is importable from ``busgen_monai.data.dicom`` as before the split.

- :func:`sniff_dicom` recognises DICOM by content (128-byte preamble + ``DICM``; or no preamble but a
  plausible first data element that pydicom can read with ``force=True`` and that carries image/SOP tags).
- :func:`read_header` reads the header (no pixel data) and locates the pixel data element without
  loading it (:class:`PixelDataInfo`), so absurd sizes and truncation are caught before decoding.
- :func:`describe` turns a header into a :class:`DicomInfo`: geometry, photometric, transfer syntax,
  canonical-device inputs, laterality, view, probe, ultrasound regions and salted pseudonyms of every
  identifier. Raw identifiers never leave this module except as salted hashes.
- :class:`UltrasoundDicom` decodes frame by frame (``pydicom.pixels.iter_pixels`` on the file, so a cine
  never sits in memory at once), converts every photometric interpretation to 8-bit grey or RGB, crops
  to the imaging region and yields ``(frame_index, uint8 array)``.

8-bit output (documented contract):

- ``MONOCHROME2`` 8-bit: unchanged. ``MONOCHROME1``: inverted (``255 - v``) so that high = bright.
- More than 8 bits stored (grey): the modality LUT (rescale slope/intercept) is applied, then the first
  ``WindowCenter``/``WindowWidth`` (linear DICOM window) if present, else a VOI LUT sequence, else a robust
  window from the 0.5 and 99.5 percentiles of the first decoded frame. The window is fixed for the whole
  file so a cine does not flicker. The result is scaled to 0..255.
- Colour with more than 8 bits per sample: shifted right by ``BitsStored - 8``.
- ``RGB`` and every ``YBR_*``: pydicom converts YCbCr to RGB while decoding; output is RGB.
- ``PALETTE COLOR``: the palette LUT is applied (16-bit LUT entries are scaled to 8 bits); output RGB.

Cropping (:func:`select_region` / :func:`detect_imaging_region`):

- With a ``SequenceOfUltrasoundRegions``: the 2-D region (``RegionSpatialFormat`` 1) is used, preferring
  ``RegionDataType`` 1 (tissue) and then the largest; the pixel spacing comes from ``PhysicalDeltaX/Y``
  in cm (converted to mm). A region that lies outside the image (a resized export whose header was not
  updated) is ignored with a warning and the fallback is used.
- Fallback (no usable region, :func:`detect_imaging_region`): the imaging region is the largest solid
  region of textured, non-dark pixels. Flat panels (local standard deviation below ``flat_std``: UI bars,
  solid text backgrounds, grey/colour scales) are discarded; connected components without a thick
  interior (text glyphs, words, stacked text lines, callipers, scale bars, markers: strokes a few pixels
  wide) and small specks are discarded; a small closing joins speckle, an opening cuts thin bridges; the
  largest component left is the image; its convex hull gives the crop box, and pixels of the box outside
  the hull are set to 0 so text in the corners of a sector image does not survive. The mask is computed
  once per file on the pixel-wise maximum of the first, middle and last frames, so every frame of a cine
  gets the same crop. Frames under 64 px (thumbnails) are ``too_small`` rejects, and no region of at
  least ``min_area_fraction`` of the frame is a ``no_imaging_region`` reject: a frame whose burned-in
  text cannot be cropped away is never returned (unless ``region="none"`` or ``"metadata"`` asks so).
  Limits: text that touches the image with no dark gap is removed only when its band is thinner than
  about 1/20 of the frame (the opening); overlays *inside* the image (callipers, body marks, a name typed
  on the image) are not removed by any crop. The acute corners of a fan can lose a few pixels.
"""

from __future__ import annotations

from .header import (
    DICOMDIR_SOP_CLASS,
    NON_IMAGE_SOP_PREFIXES,
    SECONDARY_CAPTURE_SOP_CLASSES,
    US_IMAGE_SOP_CLASSES,
    US_VOLUME_SOP_CLASSES,
    DicomRejectError,
    PixelDataInfo,
    codestream_size,
    read_header,
    short_message,
    sniff_dicom,
    uid_hash,
)
from .metadata import (
    DESCRIPTION_KEYWORDS,
    DicomInfo,
    UltrasoundRegion,
    check_geometry,
    corrupt_header_message,
    decoder_problem,
    describe,
    dicomdir_missing_files,
    laterality_from_text,
)
from .phi import (
    PERSON_NAME_KEYWORDS,
    PHI_KEYWORDS,
    contains_phi,
    identifier_values,
    phi_strings,
    safe_exception,
    safe_token,
    safe_uid,
    scrub,
)
from .reader import FrameConverter, UltrasoundDicom, read_ultrasound
from .region import CropSpec, detect_imaging_region, select_region

__all__ = [
    "DicomRejectError",
    "PixelDataInfo",
    "UltrasoundRegion",
    "DicomInfo",
    "CropSpec",
    "US_IMAGE_SOP_CLASSES",
    "SECONDARY_CAPTURE_SOP_CLASSES",
    "DICOMDIR_SOP_CLASS",
    "sniff_dicom",
    "read_header",
    "describe",
    "dicomdir_missing_files",
    "decoder_problem",
    "check_geometry",
    "corrupt_header_message",
    "codestream_size",
    "phi_strings",
    "scrub",
    "contains_phi",
    "laterality_from_text",
    "select_region",
    "detect_imaging_region",
    "FrameConverter",
    "UltrasoundDicom",
    "read_ultrasound",
    "uid_hash",
    "short_message",
    # also public, re-exported from the modules that own them
    "US_VOLUME_SOP_CLASSES",
    "NON_IMAGE_SOP_PREFIXES",
    "DESCRIPTION_KEYWORDS",
    "PHI_KEYWORDS",
    "PERSON_NAME_KEYWORDS",
    "identifier_values",
    "safe_exception",
    "safe_token",
    "safe_uid",
]
