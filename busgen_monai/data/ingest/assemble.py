"""The outputs of a run, assembled from the manifest: ``datalist.json`` (patient-wise split), ``rejects.csv``,
``ingest_report.json`` and :class:`IngestResult`.
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from busgen_monai.utils.io import atomic_write_json, atomic_write_text

from ..devices import UNKNOWN_DEVICE, DeviceVocabulary
from ..loaders import patient_split
from ..schema import make_datalist, save_datalist
from .labels import _match_label
from .records import REJECT_REASONS, TRANSIENT_REASONS, _reject
from .settings import IngestSettings
from .sources import _dicomdir_missing_paths


__all__ = ["IngestResult"]


@dataclass
class IngestResult:
    """What a run produced. ``reasons``: reject reason -> number of files."""

    out_dir: Path
    datalist_path: Path
    rejects_path: Path
    report_path: Path
    files_total: int = 0
    files_ingested: int = 0
    files_rejected: int = 0
    files_resumed: int = 0
    frames_written: int = 0
    items: int = 0
    frames_dropped: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    unknown_devices: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())) or "none"
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.frames_dropped.items())) or "none"
        lines = [
            f"{self.files_total} files: {self.files_ingested} ingested, {self.files_rejected} rejected "
            f"({self.files_resumed} already done) in {self.elapsed_s:.1f} s",
            f"{self.items} frames in {self.datalist_path}; dropped frames: {dropped}",
            f"rejects ({self.rejects_path}): {reasons}",
        ]
        transient = sum(self.reasons.get(k, 0) for k in TRANSIENT_REASONS)
        if transient:
            lines.append(f"{transient} of the rejects are transient failures ({', '.join(sorted(TRANSIENT_REASONS))}): "
                         "re-running the same command retries them")
        if self.unknown_devices:
            lines.append("unknown devices (hashed; OUT/.ingest/unknown_devices.json, kept private, names them; add "
                         "them with --device-vocab): "
                         + ", ".join(f"{k} ({v} files)" for k, v in sorted(self.unknown_devices.items())))
        return "\n".join(lines)


def _finish(out: Path, src: Path, rel_of: Mapping[str, str], final: Mapping[str, dict], device_of: Mapping[str, str],
            vocab: DeviceVocabulary, unknown: Counter, label_rows, default_pathology: str,
            split_fractions, seed: int, name: str, settings: IngestSettings, redact: bool,
            on_unknown_device: str, resumed: int, t0: float) -> IngestResult:
    def shown(fid: str) -> str:
        return fid if redact or fid not in rel_of else rel_of[fid]

    rejects = []
    items = []
    dropped: Counter = Counter()
    per_file = []
    ingested = 0
    unmatched_labels = set(range(len(label_rows)))
    for fid in rel_of:
        rec = final.get(fid)
        if rec is None or rec["status"] == "scanned":  # cannot happen; never lose a file silently
            rec = _reject(fid, [], "internal_error", "the file was not processed (please report this)")
        if rec["status"] != "done":
            detail = rec["detail"].replace("{other}", shown(rec.get("other", ""))) if rec.get("other") \
                else rec["detail"]
            rejects.append({"file": shown(fid), "file_id": fid, "reason": rec["reason"], "detail": detail})
            missing_paths = _dicomdir_missing_paths(src, rel_of[fid], settings.salt) \
                if rec.get("missing") and not redact else {}
            for mid in rec.get("missing", []):
                rejects.append({"file": missing_paths.get(mid, mid), "file_id": mid, "reason": "missing_file",
                                "detail": f"referenced by the DICOMDIR {shown(fid)} but not found"})
            per_file.append({"file": shown(fid), "file_id": fid, "status": "rejected", "reason": rec["reason"]})
            continue
        ingested += 1
        info = rec["info"]
        dropped.update(rec.get("dropped", {}))
        row = _match_label(label_rows, info) if label_rows else None
        if row is not None:
            unmatched_labels.discard(label_rows.index(row))
        for fr in rec["frames"]:
            item = {
                "image": fr["image"],
                "pathology": row.pathology if row else default_pathology,
                "device": device_of.get(fid, UNKNOWN_DEVICE),
                "boxes": [],
                "patient_id": info["patient_hash"],
                "study_id": info["study_hash"],
                "series_id": info["series_hash"],
                "split": "training",
                "width": fr["width"],
                "height": fr["height"],
            }
            if row is not None and row.birads:
                item["birads"] = row.birads
            for key in ("laterality", "view", "probe"):
                if info.get(key):
                    item[key] = info[key]
            if rec.get("spacing"):
                item["spacing"] = rec["spacing"]
            item["provenance"] = {
                "source": "dicom",
                "sop_instance_uid_hash": info["sop_hash"],
                "frame": fr["frame"],
                "n_frames": rec["n_frames"],
                "file_id": fid,
                "crop": rec["crop"]["box"],
                "crop_source": rec["crop"]["source"],
            }
            items.append(item)
        per_file.append({"file": shown(fid), "file_id": fid, "status": "ingested", "n_frames": rec["n_frames"],
                         "frames_kept": len(rec["frames"]), "dropped": rec.get("dropped", {}),
                         "crop": rec["crop"], "spacing": rec.get("spacing"),
                         "device": device_of.get(fid, UNKNOWN_DEVICE), "laterality": info.get("laterality", ""),
                         "warnings": rec.get("warnings", [])})
    # patient-wise split, stratified by the set of labels of each patient
    labels_of: dict[str, set[str]] = defaultdict(set)
    for it in items:
        labels_of[it["patient_id"]].add(it["pathology"])
    split_of = patient_split({p: "|".join(sorted(v)) for p, v in labels_of.items()}, split_fractions, seed)
    for it in items:
        it["split"] = split_of[it["patient_id"]]
    items.sort(key=lambda it: (it["patient_id"], it["study_id"], it["series_id"],
                               it["provenance"]["sop_instance_uid_hash"], it["provenance"]["frame"]))
    pathologies = sorted({it["pathology"] for it in items} | {default_pathology})
    description = (f"ultrasound frames ingested from a DICOM export by busgen_monai.data.ingest; pathology "
                   f"{default_pathology!r} where no label was given")
    data = make_datalist(items, name=name, description=description, pathologies=pathologies)
    datalist_path = save_datalist(data, out / "datalist.json", vocabulary=vocab)
    rejects.sort(key=lambda r: (r["reason"] == "missing_file", r["file"], r["reason"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["file", "file_id", "reason", "detail"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rejects)
    rejects_path = atomic_write_text(out / "rejects.csv", buf.getvalue())
    if on_unknown_device == "add" and any(not e.builtin for e in vocab.entries):
        atomic_write_json(out / "device_vocabulary.json", vocab.to_dict(), indent=1)
    reasons = Counter(r["reason"] for r in rejects)
    n_files = len(rel_of)
    result = IngestResult(
        out_dir=out, datalist_path=datalist_path, rejects_path=rejects_path,
        report_path=out / "ingest_report.json", files_total=n_files, files_ingested=ingested,
        files_rejected=n_files - ingested, files_resumed=resumed, frames_written=len(items), items=len(items),
        frames_dropped=dict(dropped), reasons=dict(reasons), unknown_devices=dict(unknown),
        elapsed_s=time.perf_counter() - t0,
    )
    report = {
        "tool": "busgen_monai.data.ingest",
        "settings": {k: v for k, v in settings.fingerprint().items() if k != "salt"},
        "paths": "pseudonymous file ids" if redact else "relative to the source folder",
        "reject_reasons": REJECT_REASONS,
        "counts": {"files": n_files, "ingested": ingested, "rejected": n_files - ingested,
                   "missing_referenced_files": reasons.get("missing_file", 0), "resumed": resumed,
                   "transient": sum(reasons.get(k, 0) for k in TRANSIENT_REASONS),
                   "items": len(items), "patients": len(labels_of),
                   "frames_dropped": dict(dropped), "reasons": dict(reasons)},
        "unknown_devices": dict(unknown),
        "unmatched_label_rows": [label_rows[i].line for i in sorted(unmatched_labels)],
        "files": per_file,
        "rejects": rejects,
    }
    atomic_write_json(result.report_path, report, indent=1)
    return result
