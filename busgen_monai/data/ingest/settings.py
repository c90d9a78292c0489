"""Options of an ingestion run, declared once: :class:`IngestOptions` is what :func:`~busgen_monai.data.ingest.ingest`
takes, what its docstring lists and what ``busgen ingest`` turns into command-line options (each field carries its
help text and, where the command line spells it differently, how to parse it). :class:`IngestSettings` is the
per-file part, shipped to worker processes and fingerprinted so a resumed run cannot mix settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..devices import DeviceVocabulary
from .records import IngestError

__all__ = ["DEFAULT_BIOPSY_PATTERN", "PLACEHOLDER_PATHOLOGY", "IngestOptions", "IngestSettings"]

#: Words that mark a biopsy/needle procedure in descriptions (case-insensitive, whole words).
DEFAULT_BIOPSY_PATTERN = (
    r"\b(biops\w*|bx|fna|fnab|fnac|fine[\s_-]*needle|core[\s_-]*needle|cnb|vab|vacuum[\s_-]*assisted|mammotome|"
    r"needle[\s_-]*locali[sz]ation|wire[\s_-]*locali[sz]ation|aspiration|clip[\s_-]*placement)\b"
)
#: Pathology of items no label names (declared in the datalist, so nobody mistakes them for normal ones).
PLACEHOLDER_PATHOLOGY = "unlabelled"

_SAME = object()  # the command line's default is the field's default


def _option(default: Any, doc: str, *, cli: bool = True, flag: str | None = None,
            parse: Callable[[Any], Any] | None = None, cli_default: Any = _SAME, show_default: bool = True,
            **argparse_kw: Any) -> Any:
    """A field of :class:`IngestOptions` with its help text and command-line spelling.

    Args:
        default: the Python default.
        doc: the help text (docstring and ``--help``).
        cli: whether ``busgen ingest`` has an option for it.
        flag: the option's name (default ``--field-name``).
        parse: turns the command-line value into the field's value (raises ``ValueError`` with the message).
        cli_default: the command line's default, when it differs from ``default``.
        show_default: append ``(default: ...)`` to the ``--help`` text.
        argparse_kw: more :meth:`argparse.ArgumentParser.add_argument` arguments (``type``, ``choices``, ``action``).
    """
    spec = None
    if cli:
        spec = {"flag": flag, "parse": parse, "default": default if cli_default is _SAME else cli_default,
                "show_default": show_default, "kw": argparse_kw}
    return field(default=default, metadata={"doc": doc, "cli": spec})


def _parse_dedupe(value: str) -> float | None:
    if str(value).lower() in ("off", "none", "-1"):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--dedupe-threshold must be a number or 'off', got {value!r}") from None


def _parse_split(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"--split must be three numbers like 0.7,0.15,0.15, got {value!r}") from None


def _parse_modalities(value: str) -> list[str] | None:
    if value.strip().lower() in ("any", "all", "*", ""):
        return None
    return [m.strip().upper() for m in value.split(",") if m.strip()]


def _load_vocabulary(path: str | None) -> DeviceVocabulary | None:
    return DeviceVocabulary.from_file(path) if path else None


@dataclass(frozen=True)
class IngestOptions:
    """Options of :func:`~busgen_monai.data.ingest.ingest` and ``busgen ingest`` (one declaration for both).

    ``ingest(src, out, IngestOptions(stride=2))`` and ``ingest(src, out, stride=2)`` are the same call.
    """

    image_format: str = _option(
        "png", '``"png"`` (8-bit grey or RGB, no metadata) or ``"nifti"`` (``.nii.gz``, spacing in mm in the affine; '
               "RGB as a 5-D vector image).", flag="--format", choices=("png", "nifti"))
    dedupe_threshold: float | None = _option(
        1.0, "drop a frame whose downsampled grey version differs from the last kept frame by at most this mean "
             "absolute difference (grey levels, 0..255); ``0`` drops exact repeats only, ``None`` (command line: "
             "``off``) keeps every frame.", parse=_parse_dedupe, cli_default="1.0")
    stride: int = _option(1, "keep frames 0, stride, 2*stride... of each cine (before de-duplication).", type=int)
    workers: int = _option(1, "processes decoding files in parallel (output is identical for any number).", type=int)
    vocabulary: DeviceVocabulary | None = _option(
        None, "device vocabulary (default: built-in); devices are resolved from Manufacturer + ManufacturerModelName. "
              "On the command line, a vocabulary file (JSON/YAML) added to the built-in devices.",
        flag="--device-vocab", parse=_load_vocabulary, metavar="FILE", show_default=False)
    on_unknown_device: str = _option(
        "null", '``"null"`` (item device ``"unknown"``, listed in the report), ``"add"`` (register the device under a '
                'salted hash ``DEV-...`` and write ``out/device_vocabulary.json``) or ``"error"`` (reject the files; '
                "the command then exits with status 3). Unknown devices appear in shared outputs only as that hash "
                "(sites type names into Manufacturer/Model); ``out/.ingest/unknown_devices.json`` (private) maps "
                "hashes to names.", choices=("null", "add", "error"))
    pathology: str = _option(
        PLACEHOLDER_PATHOLOGY, "label of items no labels-CSV row matches (default: the placeholder "
                               '``"unlabelled"``).', show_default=False)
    labels: str | os.PathLike | None = _option(
        None, "CSV of labels: ``pathology`` plus at least one of ``patient_id``, ``study_id``, ``accession_number`` "
              "(raw or pseudonymous), optional ``laterality`` (L/R) and ``birads`` (see "
              ":mod:`busgen_monai.data.ingest`).", show_default=False)
    salt: str | None = _option(
        None, "salt of every pseudonym and hash; default: a random salt kept in ``out/.ingest/salt`` (the command "
              "line also reads ``$BUSGEN_INGEST_SALT``).",
        parse=lambda v: v or os.environ.get("BUSGEN_INGEST_SALT"), show_default=False)
    modalities: Sequence[str] | None = _option(
        ("US",), "accepted Modality values; ``None`` (command line: ``any``) accepts every modality (command line: "
                 "comma-separated).", parse=_parse_modalities, cli_default="US")
    keep_secondary_capture: bool = _option(
        False, "keep Secondary Capture objects (screen captures) that pass the other filters (default: reject them).",
        action="store_true")
    biopsy_pattern: str = _option(
        DEFAULT_BIOPSY_PATTERN, "regular expression (case-insensitive) of words marking a biopsy procedure in "
                                "study/series/procedure descriptions.", show_default=False)
    max_zero_fraction: float = _option(
        0.8, "drop frames with more than this fraction of black pixels (``<= zero_level``) after cropping; a file left "
             "without frames is rejected ``mostly_zero``.", type=float)
    zero_level: int = _option(2, "grey level at or below which a pixel counts as black.", cli=False)
    min_size: int = _option(
        32, "reject files whose cropped image is smaller than this (pixels) in width or height.", type=int)
    color: str = _option("keep", '``"keep"``, ``"gray"`` or ``"rgb"`` output frames.',
                         choices=("keep", "gray", "rgb"))
    region: str = _option(
        "auto", 'crop: ``"auto"`` (ultrasound-region metadata, else detection), ``"metadata"``, ``"detect"`` or '
                '``"none"`` (see :class:`~busgen_monai.data.dicom.UltrasoundDicom`).',
        choices=("auto", "metadata", "detect", "none"))
    require_laterality: bool = _option(
        False, "reject images whose laterality is unknown (NYU rule).", action="store_true")
    split_fractions: Sequence[float] = _option(
        (0.7, 0.15, 0.15), "training, validation, test fractions of the patient-wise split (stratified by label; "
                           "command line: ``0.7,0.15,0.15``).", flag="--split", parse=_parse_split, metavar="FRACTIONS",
        cli_default="0.7,0.15,0.15")
    seed: int = _option(0, "seed of the split.", type=int)
    file_timeout: float | None = _option(
        None, "seconds per file before its worker is killed and the file rejected ``timeout`` (runs files in worker "
              "processes even when ``workers=1``); ``None`` (command line: ``0``) means no limit. The command line's "
              "default is 600.", type=float, parse=lambda v: v or None, cli_default=600.0)
    png_compress_level: int = _option(
        1, "zlib level of PNG frames (1 fast .. 9 small).", type=int, choices=range(0, 10), metavar="0-9")
    show_paths: bool = _option(
        False, "write source paths (relative to ``src``) instead of pseudonymous file ids in the rejects and report. "
               "Off by default: PACS exports name folders after patients and files after UIDs; "
               ":func:`~busgen_monai.data.ingest.locate` (``--locate``) maps ids back to paths.", action="store_true")
    restart: bool = _option(
        False, "forget previous runs in ``out`` (removes ``out/images`` and ``out/.ingest``) and start over.",
        action="store_true")
    name: str = _option("dicom_ingest", "datalist name.")
    progress: bool = _option(
        True, "show tqdm progress bars (command line: ``--no-progress`` hides them).", flag="--no-progress",
        action="store_true", parse=lambda v: not v, cli_default=False, show_default=False)
    isolate: bool = _option(
        True, "decode in worker processes even with ``workers=1`` and no timeout (default), so that a decoder that "
              "crashes the process (a native panic on a corrupt file) costs one ``worker_crash`` reject instead of "
              "the run. ``False`` runs in this process (faster to start; for debugging).", cli=False)
    max_attempts: int = _option(
        3, "transient failures (``internal_error``, ``timeout``, ``worker_crash``) are retried by later runs until a "
           "file has failed this many times.", cli=False)

    def check(self) -> None:
        """Raise :class:`~busgen_monai.data.ingest.IngestError` naming the first bad option and its valid values."""
        if self.image_format not in ("png", "nifti"):
            raise IngestError(f"image_format must be 'png' or 'nifti', got {self.image_format!r}")
        if self.on_unknown_device not in ("null", "add", "error"):
            raise IngestError(f"on_unknown_device must be 'null', 'add' or 'error', got {self.on_unknown_device!r}")
        if self.stride < 1:
            raise IngestError(f"stride must be >= 1, got {self.stride}")
        if self.color not in ("keep", "gray", "rgb"):
            raise IngestError(f"color must be 'keep', 'gray' or 'rgb', got {self.color!r}")
        if self.region not in ("auto", "metadata", "detect", "none"):
            raise IngestError(f"region must be 'auto', 'metadata', 'detect' or 'none', got {self.region!r}")
        try:
            re.compile(self.biopsy_pattern)
        except re.error as err:
            raise IngestError(f"biopsy_pattern is not a valid regular expression: {err}") from err
        if not self.pathology or not str(self.pathology).strip():
            raise IngestError("pathology must be a non-empty label (default 'unlabelled')")
        if int(self.max_attempts) < 1:
            raise IngestError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def file_settings(self, salt: str = "busgen") -> IngestSettings:
        """The per-file part of these options, normalised (what workers get and the fingerprint covers)."""
        return IngestSettings(
            image_format=self.image_format,
            dedupe_threshold=None if self.dedupe_threshold is None else float(self.dedupe_threshold),
            stride=int(self.stride), color=self.color, region=self.region,
            modalities=tuple(m.upper() for m in self.modalities) if self.modalities is not None else None,
            keep_secondary_capture=bool(self.keep_secondary_capture), biopsy_pattern=self.biopsy_pattern,
            max_zero_fraction=float(self.max_zero_fraction), zero_level=int(self.zero_level),
            min_size=int(self.min_size), require_laterality=bool(self.require_laterality),
            png_compress_level=int(self.png_compress_level), salt=salt,
        )

    @classmethod
    def replace_or_raise(cls, options: IngestOptions | None, overrides: dict[str, Any]) -> IngestOptions:
        """``options`` (default: all defaults) with ``overrides`` applied; an unknown name raises ``TypeError``
        listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown ingest option(s) {unknown}; the options are the fields of IngestOptions: "
                            f"{sorted(names)}")
        return dataclasses.replace(options if options is not None else cls(), **overrides)

    @classmethod
    def docs(cls, indent: int = 8) -> str:
        """The options as a Google-style ``Args`` list (``name: help``), for docstrings."""
        pad = " " * indent
        return "\n".join(f"{pad}{f.name}: {f.metadata['doc']}" for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class IngestSettings:
    """Per-file processing settings (picklable; shipped to worker processes). See :class:`IngestOptions`."""

    image_format: str = "png"
    dedupe_threshold: float | None = 1.0
    stride: int = 1
    color: str = "keep"
    region: str = "auto"
    modalities: tuple[str, ...] | None = ("US",)
    keep_secondary_capture: bool = False
    biopsy_pattern: str = DEFAULT_BIOPSY_PATTERN
    max_zero_fraction: float = 0.8
    zero_level: int = 2
    min_size: int = 32
    max_dim: int = 8192
    max_frames: int = 100_000
    require_laterality: bool = False
    png_compress_level: int = 1
    salt: str = "busgen"

    def fingerprint(self) -> dict:
        """Everything that changes the frames or the per-file decisions (the salt only as a hash)."""
        d = asdict(self)
        d["salt"] = hashlib.sha256(self.salt.encode()).hexdigest()[:16]
        d["modalities"] = list(self.modalities) if self.modalities is not None else None
        return d

    @property
    def extension(self) -> str:
        return ".png" if self.image_format == "png" else ".nii.gz"


IngestOptions.__doc__ += "\n    Attributes:\n" + IngestOptions.docs(8) + "\n"
