"""Labels for ingested images from a CSV: ``pathology`` plus at least one of ``patient_id``, ``study_id``,
``accession_number`` (raw value or the datalist's pseudonym), optional ``laterality`` (L/R) and ``birads``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..dicom import uid_hash
from .records import IngestError


__all__: list[str] = []  # the package's own plumbing; nothing public


@dataclass
class _LabelRow:
    keys: dict[str, set[str]]
    laterality: str
    pathology: str
    birads: str | None
    line: int


def _load_labels(path: Path, salt: str) -> list[_LabelRow]:
    if not path.is_file():
        raise IngestError(f"labels CSV {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise IngestError(f"labels CSV {path} has no rows")
    cols = {c.strip().lower() for c in rows[0]}
    key_cols = {"patient_id": "PAT", "study_id": "STU", "accession_number": "ACC"}
    if "pathology" not in cols or not cols & set(key_cols):
        raise IngestError(f"labels CSV {path}: needs a 'pathology' column and at least one of "
                          f"{sorted(key_cols)}; it has {sorted(cols)}")
    out = []
    for i, r in enumerate(rows, start=2):
        r = {str(k).strip().lower(): (v or "").strip() for k, v in r.items() if k is not None}
        keys = {}
        for col, prefix in key_cols.items():
            value = r.get(col, "")
            if value:
                # the raw value hashes to the pseudonym; a pseudonym matches as it is
                keys[col] = {value, uid_hash(value, prefix, salt)}
        if not keys or not r.get("pathology"):
            raise IngestError(f"labels CSV {path} line {i}: needs a pathology and an id")
        lat = r.get("laterality", "").upper()[:1]
        if lat and lat not in "LR":
            raise IngestError(f"labels CSV {path} line {i}: laterality must be L or R, got {r.get('laterality')!r}")
        out.append(_LabelRow(keys, lat, r["pathology"].lower(), (r.get("birads") or "").lower() or None, i))
    return out


def _match_label(rows: Sequence[_LabelRow], info: Mapping) -> _LabelRow | None:
    have = {"patient_id": info.get("patient_hash"), "study_id": info.get("study_hash"),
            "accession_number": info.get("accession_hash")}
    best, best_score = None, -1
    for row in rows:
        if row.laterality and row.laterality != info.get("laterality"):
            continue
        if all(have.get(col) and have[col] in vals for col, vals in row.keys.items()):
            score = 4 * ("accession_number" in row.keys or "study_id" in row.keys) + 2 * bool(row.laterality)
            if score > best_score:
                best, best_score = row, score
    return best
