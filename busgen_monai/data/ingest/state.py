"""The resume state in ``out/.ingest`` (private): settings fingerprint, salt, and the append-only manifest of
finished files; and the lock that keeps a second run out of the same output folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from busgen_monai.utils.io import atomic_write_json

from .records import TRANSIENT_REASONS, IngestError


__all__: list[str] = []  # the package's own plumbing; nothing public


_STATE_DIR = ".ingest"


_MANIFEST = "manifest.jsonl"
_DEVICE_NAMES = "unknown_devices.json"


class _State:
    """``out/.ingest``: settings fingerprint, salt and the append-only manifest of finished files."""

    def __init__(self, out: Path, settings_fp: dict, restart: bool, salt: str | None):
        self.out = out
        self.dir = out / _STATE_DIR
        if restart:
            self.clear()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # private: the salt and the resume state
        salt_file = self.dir / "salt"
        if salt is None:
            salt = _read_or_create_salt(salt_file)
        self.salt = salt
        self.records: dict[str, dict] = {}
        self.manifest = self.dir / _MANIFEST
        self._fh = None
        self._settings_fp = settings_fp

    def check_settings(self, fp: dict) -> None:
        cfg = self.dir / "settings.json"
        if cfg.is_file() and self.manifest.is_file() and self.manifest.stat().st_size > 0:
            try:
                old = json.loads(cfg.read_text())
            except json.JSONDecodeError:
                old = None
            if old is not None and old != fp:
                diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in diff if k != "biopsy_pattern")
                if "biopsy_pattern" in diff:
                    shown += (", " if shown else "") + "biopsy_pattern changed"
                raise IngestError(
                    f"{self.out} was ingested with other settings ({shown}). Re-run with the same settings to "
                    "resume, pass restart=True (--restart) to start over, or choose another output folder")
        atomic_write_json(cfg, fp, indent=1, sort_keys=True)

    def load(self) -> None:
        self._load()
        # transient failures: how many times each file has failed so far (a retry counts on from there)
        self.attempts = {fid: int(r.get("attempts", 1)) for fid, r in self.records.items()
                         if r.get("reason") in TRANSIENT_REASONS}

    def _load(self) -> None:
        if not self.manifest.is_file():
            return
        with open(self.manifest, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: the file is simply redone
                if isinstance(rec, dict) and "file_id" in rec:
                    self.records[rec["file_id"]] = rec

    def append(self, rec: dict) -> None:
        if rec.get("reason") in TRANSIENT_REASONS:
            rec = {**rec, "attempts": getattr(self, "attempts", {}).get(rec["file_id"], 0) + 1}
        if self._fh is None:
            self._fh = open(self.manifest, "a", encoding="utf-8")
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        self.records[rec["file_id"]] = rec

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def clear(self) -> None:
        for name in (_STATE_DIR, "images"):
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
        for name in ("datalist.json", "rejects.csv", "ingest_report.json", "device_vocabulary.json"):
            p = self.out / name
            if p.is_file():
                p.unlink()


def _read_or_create_salt(salt_file: Path) -> str:
    """The salt kept in ``salt_file``, created exclusively (``O_EXCL``) when missing: two processes that
    start at once end up with the same salt, never with two."""
    for _ in range(50):
        try:
            fd = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            text = salt_file.read_text().strip()
            if text:
                return text
            time.sleep(0.02)  # created by another process that has not written it yet
            continue
        salt = secrets.token_hex(16)
        with os.fdopen(fd, "w") as fh:
            fh.write(salt + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return salt
    raise IngestError(f"{salt_file} exists but stays empty; remove it (and restart) or pass the salt")


class _OutputLock:
    """Exclusive lock on an output folder for the length of a run (``flock`` on the folder itself, released
    by the kernel when the process dies, so a killed run never leaves a stale lock). A second run into the
    same folder fails at once with a clear message instead of interleaving with the first."""

    def __init__(self, out: Path):
        self.out = out
        self.fd: int | None = None

    def __enter__(self) -> _OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IngestError(f"another ingestion is writing into {self.out} (it holds the folder's lock); wait for "
                              "it to finish, or choose another output folder") from None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def _outputs_present(out: Path, rec: Mapping) -> bool:
    if rec.get("status") in ("rejected", "scanned"):
        return True  # nothing on disk; a scanned file is decoded (or not) again this run
    return all((out / fr["image"]).is_file() for fr in rec.get("frames", []))
