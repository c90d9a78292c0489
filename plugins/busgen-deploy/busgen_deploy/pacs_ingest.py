"""Ingest from a PACS: query (DICOMweb QIDO-RS), retrieve study by study (WADO-RS), then the folder ingestion.

``pacs_ingest(url, out, ...)`` / ``busgen pacs-ingest URL OUT``:

1. **queries** the PACS for studies by ``ModalitiesInStudy`` (default US), a ``StudyDate`` range and/or
   explicit study UIDs;
2. **retrieves** each study into ``OUT/.pacs/retrieved/<ST-label>/`` (as stored, every transfer syntax;
   a study folder appears complete or not at all) and records it in ``OUT/.pacs/studies.jsonl``; a re-run
   skips studies already retrieved (resumable by study) and retries those that failed;
3. runs the **same ingestion** as for a folder export
   (:func:`busgen_monai.data.ingest.ingest` on ``OUT/.pacs/retrieved``): crop, de-identification,
   rejects with reasons, datalist, report, its own per-file resume state.

``OUT/.pacs`` holds identifiable DICOM as the PACS sent it and is the ingestion's source: keep it private
like ``OUT/.ingest`` (the folder is created mode 0700). It is kept so that a re-run (new studies, other
labels) rebuilds the same datalist; delete ``OUT/.pacs/retrieved`` only when the data set is final.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from busgen_monai.data.ingest import IngestError, ingest
from busgen_monai.utils.io import atomic_write_text

from .pacs import DicomWebClient, DicomWebError
from .study import study_label

__all__ = ["pacs_ingest", "main"]


def _load_state(path: Path) -> dict[str, dict]:
    state: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                state[rec["study"]] = rec
    return state


def _save_state(path: Path, state: dict[str, dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in state.values()))


def pacs_ingest(url: str, out: str | os.PathLike, *, modality: str | None = "US", study_date: str | None = None,
                study_uids: Sequence[str] | None = None, limit: int | None = None,
                client: DicomWebClient | None = None, progress: bool = False, **ingest_kwargs) -> dict:
    """Query, retrieve (resumable by study) and ingest; see the module docstring.

    Args:
        url: DICOMweb root of the PACS.
        out: output folder of the ingestion (datalist, frames, rejects, report; ``.pacs`` state).
        modality, study_date, study_uids, limit: the QIDO-RS query.
        client: a configured :class:`DicomWebClient` (authentication...); default one for ``url``.
        ingest_kwargs: passed to :func:`busgen_monai.data.ingest.ingest` (``salt``, ``stride``, ``labels``...).

    Returns:
        ``{"studies_found", "retrieved", "resumed", "failed", "ingest": IngestResult}``.
    """
    client = client or DicomWebClient(url)
    out = Path(out)
    state_dir = out / ".pacs"
    retrieved_dir = state_dir / "retrieved"
    retrieved_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    state_path = state_dir / "studies.jsonl"
    state = _load_state(state_path)
    uids = list(study_uids or [])
    if not uids or modality or study_date:
        found = client.study_uids(modality=modality, study_date=study_date, study_uids=uids or None, limit=limit)
        uids = found if not uids else [u for u in uids if u in set(found)]
    counts = {"studies_found": len(uids), "retrieved": 0, "resumed": 0, "failed": 0, "failures": []}
    for uid in uids:
        label = study_label(uid)
        rec = state.get(label)
        if rec and rec.get("status") in ("retrieved", "ingested") and (retrieved_dir / label).is_dir():
            counts["resumed"] += 1
            continue
        t0 = time.perf_counter()
        try:
            files = client.retrieve_study(uid, retrieved_dir / label)
        except (DicomWebError, OSError) as err:
            counts["failed"] += 1
            counts["failures"].append({"study": label, "error": str(err)[:300]})
            state[label] = {"study": label, "status": "failed", "error": str(err)[:300]}
            _save_state(state_path, state)
            continue
        state[label] = {"study": label, "status": "retrieved", "files": len(files),
                        "seconds": round(time.perf_counter() - t0, 3)}
        _save_state(state_path, state)
        counts["retrieved"] += 1
    result = ingest(retrieved_dir, out, progress=progress, **ingest_kwargs)
    for rec in state.values():
        if rec.get("status") == "retrieved":
            rec["status"] = "ingested"
    _save_state(state_path, state)
    counts["ingest"] = result
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """``busgen pacs-ingest URL OUT``: query a PACS over DICOMweb, retrieve and ingest (resumable by study)."""
    p = argparse.ArgumentParser(
        prog="busgen pacs-ingest",
        description="Query a PACS over DICOMweb (QIDO-RS), retrieve the matching studies (WADO-RS; resumable by "
                    "study) and ingest them exactly like a folder export (busgen ingest): cropped, de-identified "
                    "frames, datalist, rejects and report in OUT.",
        epilog="Example: busgen pacs-ingest http://pacs:8042/dicom-web data/pacs_us --date 20240101-20240630 "
               "--stride 2. OUT/.pacs holds the retrieved (identifiable) DICOM: keep it private.")
    p.add_argument("url", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("out", help="output folder (as busgen ingest)")
    p.add_argument("--modality", default="US", help="ModalitiesInStudy (default US; 'any' for no filter)")
    p.add_argument("--date", help="StudyDate or range, e.g. 20240101-20240630")
    p.add_argument("--study", action="append", default=[], metavar="UID", help="only these studies (repeatable)")
    p.add_argument("--limit", type=int, help="at most this many studies")
    p.add_argument("--user", help="HTTP basic user (password from $BUSGEN_PACS_PASSWORD)")
    p.add_argument("--salt", help="pseudonym salt (default: kept in OUT/.ingest/salt)")
    p.add_argument("--stride", type=int, default=1, help="keep every N-th frame of a cine")
    p.add_argument("--labels", help="labels CSV (as busgen ingest)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(list(argv) if argv is not None else None)
    modality = None if args.modality.lower() in ("any", "", "*") else args.modality
    auth = (args.user, os.environ.get("BUSGEN_PACS_PASSWORD", "")) if args.user else None
    try:
        res = pacs_ingest(args.url, args.out, modality=modality, study_date=args.date, study_uids=args.study or None,
                          limit=args.limit, client=DicomWebClient(args.url, auth=auth),
                          salt=args.salt or os.environ.get("BUSGEN_INGEST_SALT"), stride=args.stride,
                          labels=args.labels, workers=args.workers, progress=True)
    except (DicomWebError, IngestError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{res['studies_found']} studies found: {res['retrieved']} retrieved, {res['resumed']} already retrieved, "
          f"{res['failed']} failed")
    for f in res["failures"]:
        print(f"  {f['study']}: {f['error']}", file=sys.stderr)
    print(res["ingest"].summary())
    return 1 if res["failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
