"""The ingestion run, :func:`ingest`: walk the source, scan every file, resolve devices, decode one file per
SOP instance at a time, drop duplicates, and assemble the outputs (see :mod:`busgen_monai.data.ingest`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from busgen_monai.utils.io import atomic_write_json

from ..devices import UNKNOWN_DEVICE, UnknownDeviceError, default_vocabulary
from ..dicom import uid_hash
from .assemble import IngestResult, _finish
from .labels import _load_labels
from .pool import _Runner
from .records import TRANSIENT_REASONS, IngestError, _reject, file_id_of
from .settings import IngestOptions
from .sources import _is_within, _walk
from .state import _DEVICE_NAMES, _STATE_DIR, _OutputLock, _outputs_present, _State
from .write import _rel_frame_dir, _remove_outputs

__all__ = ["ingest"]


def ingest(src: str | os.PathLike, out: str | os.PathLike, options: IngestOptions | None = None,
           **overrides: Any) -> IngestResult:
    """Ingest every file under ``src`` into ``out`` (see :mod:`busgen_monai.data.ingest` for the pipeline).

    Args:
        src: the PACS export folder (or one file).
        out: output folder (frames, datalist, rejects, report, ``.ingest`` state). May not be inside ``src``
            unless it is skipped automatically (it is).
        options: the run's :class:`~busgen_monai.data.ingest.IngestOptions` (default: every default).
        overrides: options by name, applied over ``options`` (``ingest(src, out, stride=2, workers=4)``):
@OPTIONS@

    Raises:
        IngestError: bad options, another run holds the output folder, settings differ from the run that
            made ``out``.
        TypeError: an unknown option name.

    Returns:
        :class:`IngestResult` with counts and the paths of the datalist, rejects and report.
    """
    t0 = time.perf_counter()
    opts = IngestOptions.replace_or_raise(options, overrides)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise IngestError(f"source {src} does not exist")
    opts.check()
    out.mkdir(parents=True, exist_ok=True)
    with _OutputLock(out):  # a second run into the same folder fails fast instead of losing files
        base = opts.file_settings()
        state = _State(out, base.fingerprint(), opts.restart, opts.salt)
        settings = opts.file_settings(state.salt)
        state.check_settings(settings.fingerprint())
        state.load()
        label_rows = _load_labels(Path(opts.labels), settings.salt) if opts.labels is not None else []
        vocab = (opts.vocabulary or default_vocabulary()).copy()

        files = _walk(src, out if _is_within(out, src) else None)
        rel_of = {file_id_of(rel, settings.salt): rel for _, rel, _ in files}
        abs_of = {file_id_of(rel, settings.salt): path for path, rel, _ in files}
        fp_of = {file_id_of(rel, settings.salt): list(fp) for _, rel, fp in files}
        order = {fid: i for i, fid in enumerate(rel_of)}  # files are sorted by relative path
        resumed = 0
        to_scan = []
        for fid, rel in rel_of.items():
            rec = state.records.get(fid)
            if rec is not None and rec.get("fingerprint") == fp_of[fid] and _outputs_present(out, rec):
                retry = rec.get("reason") in TRANSIENT_REASONS and rec.get("attempts", 1) < opts.max_attempts
                if not retry:
                    resumed += rec["status"] in ("done", "rejected")
                    continue
            to_scan.append(("scan", (abs_of[fid], rel, fp_of[fid], settings)))
        transient: dict[str, dict] = {}  # rejects decided this run from other files (recomputed every run)
        device_of: dict[str, str] = {}
        unknown: Counter = Counter()
        runner = _Runner(settings, opts.workers, opts.file_timeout, opts.progress, opts.isolate)
        try:
            for _, rec in runner.run(to_scan, "scanning"):
                state.append(rec)

            # --- resolve devices (deterministic order; may reject before decoding with on_unknown_device="error")
            candidates = sorted((state.records[fid] for fid in rel_of
                                 if state.records.get(fid, {}).get("status") in ("scanned", "done")),
                                key=lambda r: order[r["file_id"]])
            # an unknown device is named by a salted hash of its Manufacturer / Model in every output (sites type
            # names into those fields); what each hash stands for is kept in the private state folder
            raw_device: dict[str, str] = {}
            device_names: dict[str, str] = {}
            for rec in candidates:
                info = rec["info"]
                raw = f"{info['manufacturer'] or '?'} / {info['model'] or '?'}"
                found = vocab.find_dicom(info["manufacturer"], info["model"])
                if found is None:
                    label = uid_hash(raw, "DEV", settings.salt)
                    device_names[label] = raw
                    raw_device[rec["file_id"]] = label
                    if opts.on_unknown_device == "add" and (info["manufacturer"] or info["model"]):
                        try:
                            found = vocab.find(label) or vocab.add(label).name
                        except ValueError:  # clashes with an existing alias: keep it unknown, still reported
                            found = None
                    elif opts.on_unknown_device == "error":
                        err = UnknownDeviceError(label, "DICOM Manufacturer / ManufacturerModelName (hashed; "
                                                        f"see {_STATE_DIR}/{_DEVICE_NAMES})")
                        transient[rec["file_id"]] = _reject(rec["file_id"], rec["fingerprint"], "unknown_device",
                                                            str(err), info=info)
                        continue
                device_of[rec["file_id"]] = found or UNKNOWN_DEVICE

            # --- group by SOP instance; decode one member of each group at a time: the first that decodes wins
            #     (a file done in an earlier run first), members after it are duplicates of it
            groups: dict[str, list[str]] = defaultdict(list)
            for rec in sorted(candidates, key=lambda r: (r["status"] != "done", order[r["file_id"]])):
                if rec["file_id"] not in transient:
                    groups[rec["info"]["sop_hash"]].append(rec["file_id"])
            pos = dict.fromkeys(groups, 0)
            while True:
                batch = []
                for sop, members in groups.items():
                    i = pos[sop]
                    while i < len(members) and state.records[members[i]]["status"] == "rejected":
                        i += 1
                    pos[sop] = i
                    if i < len(members) and state.records[members[i]]["status"] == "scanned":
                        batch.append(members[i])
                if not batch:
                    break
                batch.sort(key=lambda fid: order[fid])
                jobs = [("decode", (abs_of[fid], state.records[fid], str(out), settings)) for fid in batch]
                for _, rec in runner.run(jobs, "decoding"):
                    state.append(rec)
            for sop, members in groups.items():
                i = pos[sop]
                for fid in members[i + 1:]:
                    rec = state.records[fid]
                    transient[fid] = _reject(fid, rec["fingerprint"], "duplicate", "the same SOP instance as {other}",
                                             other=members[i], info=rec["info"])

            # --- files whose kept frames are pixel-identical to an earlier file
            done = sorted((state.records[r["file_id"]] for r in candidates if r["file_id"] not in transient
                           and state.records[r["file_id"]]["status"] == "done"), key=lambda r: order[r["file_id"]])
            first_of_content: dict[str, str] = {}
            for rec in done:
                h = rec["content_hash"]
                if h in first_of_content:
                    _remove_outputs(out, _rel_frame_dir(rec["info"]), rec["info"]["sop_hash"])
                    state.append(_reject(rec["file_id"], rec["fingerprint"], "duplicate_content",
                                         "pixel-identical frames to {other}", other=first_of_content[h],
                                         info=rec["info"]))
                else:
                    first_of_content[h] = rec["file_id"]
            if device_names:
                names_file = state.dir / _DEVICE_NAMES
                old = {}
                if names_file.is_file():
                    try:
                        old = json.loads(names_file.read_text())
                    except (json.JSONDecodeError, OSError):
                        old = {}
                atomic_write_json(names_file, {**old, **device_names}, indent=1, sort_keys=True)
            for fid, raw in raw_device.items():  # unknown devices of the files that made it (or were rejected for it)
                status = transient.get(fid, state.records[fid])
                if status["status"] == "done" or status.get("reason") == "unknown_device":
                    unknown[raw] += 1
        finally:
            runner.close()
            state.close()

        final = {fid: transient.get(fid, state.records.get(fid)) for fid in rel_of}
        return _finish(out, src, rel_of, final, device_of, vocab, unknown, label_rows, opts.pathology,
                       opts.split_fractions, opts.seed, opts.name, settings, not opts.show_paths,
                       opts.on_unknown_device, resumed, t0)


# the options are declared once (IngestOptions); the docstring and the signature are written from them
ingest.__doc__ = ingest.__doc__.replace("@OPTIONS@", IngestOptions.docs(indent=12))
ingest.__signature__ = inspect.signature(ingest).replace(parameters=[
    *list(inspect.signature(ingest).parameters.values())[:3],
    *(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
      for f in dataclasses.fields(IngestOptions)),
])
