"""Ingest a PACS export of breast-ultrasound DICOM (cines and stills) into frames + a datalist.

``ingest(src, out)`` (and the ``busgen ingest SRC OUT`` command, :func:`ingest_main`):

1. **walks** ``src`` (sorted, every regular file, whatever its name) and recognises DICOM by content
   (:func:`~busgen_monai.data.dicom.sniff_dicom`); DICOMDIRs are read to report files they reference that
   are missing;
2. **scans** each header (no pixels) and rejects what must not train a model, with a reason code:
   non-image objects (SR, PR, KO, encapsulated PDF, waveforms...), report screenshots and secondary
   captures, non-US modalities, biopsy procedures (descriptions naming biopsy/FNA/core needle...),
   missing pixel data, transfer syntaxes without an installed decoder (the message names the package),
   absurd sizes, wrong ``NumberOfFrames`` and truncated pixel data;
3. **groups** files by patient/study/series (salted pseudonyms), drops repeated SOP instances, resolves
   the device through the :class:`~busgen_monai.data.devices.DeviceVocabulary`;
4. **decodes** each file frame by frame (:class:`~busgen_monai.data.dicom.UltrasoundDicom`), crops it to
   the ultrasound region (burned-in text removed), keeps every ``stride``-th frame, drops frames that
   are more than ``max_zero_fraction`` black and near-duplicate consecutive frames (mean absolute
   difference of a downsampled grey frame to the last kept frame ``<= dedupe_threshold`` grey levels),
   and writes frames as PNG or NIfTI (spacing in the affine) under
   ``out/images/<patient>/<study>/<series>/<image>_f<frame>.<ext>`` via temporary file + rename;
5. drops files whose kept frames are pixel-identical to an earlier file (``duplicate_content``);
6. **writes** ``out/datalist.json`` (``docs/datalist.md``), ``out/rejects.csv`` (file, file_id, reason,
   detail) and ``out/ingest_report.json`` (settings, counts, reasons, unknown devices, per-file summary).

Every input file ends up either in the datalist (through its frames) or in the rejects with a reason.

Datalist items (``docs/datalist.md``) carry, besides the required keys (``boxes`` is empty: DICOM has no
lesion boxes), ``series_id`` (pseudonym), ``width``/``height``, ``laterality`` (``L``/``R`` when known),
``view`` and ``probe`` (when present and free of identifiers), ``spacing`` (``[dx, dy]`` in mm from the
ultrasound region; absent when unknown) and ``provenance``: ``{"source": "dicom", "sop_instance_uid_hash",
"frame" (0-based index in the cine), "n_frames", "file_id", "crop" ([x0, y0, x1, y1] in source pixels,
x1/y1 exclusive), "crop_source" ("regions" / "detected" / "none")}``. Frames dropped by stride,
de-duplication or the black-pixel rule are counted per file in ``ingest_report.json``.

De-identification: names, ids, UIDs and accession numbers only appear as salted hashes; descriptions are
never copied; view/probe strings that contain an identifier are dropped; error messages are scrubbed of
every identifying value of their file; burned-in text outside the imaging region is cropped away; PNGs
carry no metadata and NIfTI headers no description. The salt is ``salt=`` / ``--salt``, or a random salt
kept in ``out/.ingest/salt`` so that a resumed run reuses it: keep ``out/.ingest`` private (it lets
anyone who holds it test guesses of identifiers against the hashes); share the datalist and images.
Source paths never enter an output by default (exports name folders after patients and files after
UIDs): rejects, report and provenance name a file by its ``file_id`` (salted hash of its path relative to
``src``); :func:`locate` (``busgen ingest SRC OUT --locate FILE-...``) maps ids back to paths, and
``show_paths=True`` (``--show-paths``) writes relative paths when the names are known to be harmless.

Pathology: DICOM does not say it. Every item gets ``pathology`` (default the placeholder
``"unlabelled"``, declared in the datalist's ``pathologies`` so the datalist stays valid and nobody
mistakes unlabelled frames for normal ones) unless a labels CSV (``labels=`` / ``--labels``) gives one:
columns ``pathology`` plus at least one of ``patient_id``, ``study_id``, ``accession_number`` (either the
raw value -- PatientID, StudyInstanceUID, AccessionNumber -- or the datalist's pseudonym), optional
``laterality`` (L/R: the row applies to that breast only) and ``birads``.

Resumable and atomic: ``out/.ingest/manifest.jsonl`` holds one record per finished input file (keyed by
``file_id``, size and mtime); a re-run skips files that are done and whose frames exist, and only
rebuilds the datalist/rejects/report. Settings that change the frames are fingerprinted; a re-run with
other settings stops with a message (``restart=True`` / ``--restart`` starts over).

Modules (one concept each): :mod:`.settings` (:class:`IngestOptions`, the one declaration of the options, and
the per-file :class:`IngestSettings`), :mod:`.records` (reason codes, manifest records, :class:`IngestError`),
:mod:`.classify` (phase 1: scan a header, reject what must not train), :mod:`.decode` (phase 2: frames) and
:mod:`.write` (frame files), :mod:`.pool` (worker processes, timeouts, crashes), :mod:`.state` (resume state,
salt, output lock), :mod:`.sources` (the source's files, :func:`locate`), :mod:`.labels` (labels CSV),
:mod:`.assemble` (datalist, rejects, report), :mod:`.run` (:func:`ingest`) and :mod:`.cli` (:func:`ingest_main`).
"""

from __future__ import annotations

from .assemble import IngestResult
from .classify import scan_file
from .cli import ingest_main
from .decode import decode_file
from .records import REJECT_REASONS, TRANSIENT_REASONS, IngestError, file_id_of
from .run import ingest
from .settings import DEFAULT_BIOPSY_PATTERN, PLACEHOLDER_PATHOLOGY, IngestOptions, IngestSettings
from .sources import locate

__all__ = [
    "REJECT_REASONS",
    "TRANSIENT_REASONS",
    "DEFAULT_BIOPSY_PATTERN",
    "PLACEHOLDER_PATHOLOGY",
    "IngestOptions",
    "IngestSettings",
    "IngestResult",
    "IngestError",
    "ingest",
    "ingest_main",
    "scan_file",
    "decode_file",
    "file_id_of",
    "locate",
]

# names the single-module ``ingest.py`` happened to import (not part of its ``__all__``), kept importable from here
_MOVED = {
    "DicomRejectError": "..dicom", "NON_IMAGE_SOP_PREFIXES": "..dicom", "SECONDARY_CAPTURE_SOP_CLASSES": "..dicom",
    "US_VOLUME_SOP_CLASSES": "..dicom", "UltrasoundDicom": "..dicom", "check_geometry": "..dicom",
    "corrupt_header_message": "..dicom", "decoder_problem": "..dicom", "describe": "..dicom",
    "dicomdir_missing_files": "..dicom", "phi_strings": "..dicom", "read_header": "..dicom", "scrub": "..dicom",
    "short_message": "..dicom", "sniff_dicom": "..dicom", "uid_hash": "..dicom", "identifier_values": "..dicom.phi",
    "safe_exception": "..dicom.phi", "scrub_record": "..dicom.phi", "DeviceVocabulary": "..devices",
    "UNKNOWN_DEVICE": "..devices", "UnknownDeviceError": "..devices", "default_vocabulary": "..devices",
    "patient_split": "..loaders", "make_datalist": "..schema", "save_datalist": "..schema",
    "atomic_write_text": "busgen_monai.utils.io",
    # a run started before the split pickles its worker target under the old single-module name
    "_worker_main": ".pool",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
