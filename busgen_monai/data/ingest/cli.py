"""``busgen ingest SRC OUT [options]`` (:func:`ingest_main`): the command-line options are written from the fields
of :class:`~busgen_monai.data.ingest.IngestOptions` (help text, spelling, parsing), so an option is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence

from .records import REJECT_REASONS, IngestError
from .run import ingest
from .settings import IngestOptions
from .sources import locate

__all__ = ["ingest_main", "options_from_args"]


def _plain(doc: str) -> str:
    """A docstring fragment as ``--help`` text: no reST markup, ``%`` escaped for argparse."""
    doc = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return doc.replace("``", "").replace("%", "%%")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="busgen ingest",
        description=(
            "Ingest a PACS export of ultrasound DICOM (cines and stills) into cropped, de-identified frames and a "
            "datalist. Every input file ends up in OUT/datalist.json (through its frames) or in OUT/rejects.csv "
            "with a reason. Re-running the same command resumes an interrupted run."),
        epilog=(
            "outputs: OUT/images/<patient>/<study>/<series>/<image>_f<frame>.png|.nii.gz, OUT/datalist.json, "
            "OUT/rejects.csv, OUT/ingest_report.json, OUT/.ingest/ (resume state and salt: keep it private). "
            "Reject reasons: " + ", ".join(REJECT_REASONS) + ". "
            "Example: busgen ingest /mnt/pacs_export data/ingested --workers 4 --stride 2 --labels labels.csv"),
    )
    p.add_argument("src", help="folder of the PACS export (files with or without extension, DICOMDIR or not)")
    p.add_argument("out", help="output folder")
    for f in dataclasses.fields(IngestOptions):
        spec = f.metadata["cli"]
        if spec is None:
            continue
        text = _plain(f.metadata["doc"])
        if spec["show_default"]:
            text += f" (default: {spec['default']})"
        p.add_argument(spec["flag"] or "--" + f.name.replace("_", "-"), dest=f.name, default=spec["default"],
                       help=text, **spec["kw"])
    p.add_argument("--locate", nargs="+", metavar="FILE_ID",
                   help="print the source paths of these file ids (from rejects.csv or provenance) and exit")
    return p


def options_from_args(args: argparse.Namespace) -> IngestOptions:
    """The :class:`IngestOptions` of parsed ``busgen ingest`` arguments (``ValueError`` / ``FileNotFoundError`` with
    the message for a value that does not parse, e.g. ``--split 0.7,x``)."""
    values = {}
    for f in dataclasses.fields(IngestOptions):
        spec = f.metadata["cli"]
        if spec is None:
            continue
        value = getattr(args, f.name)
        values[f.name] = spec["parse"](value) if spec["parse"] is not None else value
    return IngestOptions(**values)


def ingest_main(argv: Sequence[str] | None = None) -> int:
    """``busgen ingest SRC OUT [options]``; returns the exit status (0 ok, 1 error, 3 files rejected for an
    unknown device with ``--on-unknown-device error``). A DICOMweb URL as SRC (``http(s)://.../dicom-web``) goes to
    the PACS ingestion of the ``busgen-deploy`` plugin (query, retrieve by study, then this same ingestion)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith(("http://", "https://")):
        from ...plugins import discover_plugins

        commands = discover_plugins().commands()
        if "pacs-ingest" not in commands:
            print("error: a DICOMweb source needs the busgen-deploy plugin (pip install plugins/busgen-deploy); "
                  "or export the studies to a folder and ingest that", file=sys.stderr)
            return 1
        from ...plugins import locate as locate_object

        return int(locate_object(commands["pacs-ingest"][1])(argv) or 0)
    args = _parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except (IngestError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.locate:
        try:
            found = locate(args.src, args.locate, out=args.out, salt=options.salt)
        except IngestError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for fid in args.locate:
            print(f"{fid}\t{found.get(fid, '<not found>')}")
        return 0 if len(found) == len(set(args.locate)) else 1
    try:
        result = ingest(args.src, args.out, options)
    except (IngestError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    if options.on_unknown_device == "error" and result.reasons.get("unknown_device"):
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(ingest_main())
