"""The answers database: one SQLite file next to the study, written by one server process.

* WAL journal, ``synchronous=FULL``: an answer is on disk when the request that gave it returns (each answer is
  its own transaction), so a server or a machine killed mid-study loses nothing already acknowledged.
* ``UNIQUE(reader, image_id)``: a second answer for the same image by the same reader (a double click, a replayed
  request, two tabs) is refused by the database itself, not only by the server's checks.
* One connection per request (SQLite connections are cheap; ``busy_timeout`` lets concurrent writers queue).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["AnswerStore", "DuplicateAnswer", "ANSWER_FIELDS"]

ANSWER_FIELDS = ("reader", "image_id", "position", "call", "confidence", "pathology", "birads", "elapsed_ms",
                 "answered_at")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    reader      TEXT    NOT NULL,
    image_id    TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    call        TEXT    NOT NULL CHECK (call IN ('real', 'generated')),
    confidence  INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    pathology   TEXT,
    birads      TEXT,
    elapsed_ms  INTEGER,
    answered_at REAL    NOT NULL,
    UNIQUE (reader, image_id)
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    reader  TEXT,
    kind    TEXT NOT NULL,
    detail  TEXT
);
"""


class DuplicateAnswer(Exception):
    """This reader already answered this image."""


class AnswerStore:
    """Answers of one study in ``path`` (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA busy_timeout=30000")
        con.row_factory = sqlite3.Row
        return con

    def add(self, reader: str, image_id: str, position: int, call: str, confidence: int,
            pathology: str | None, birads: str | None, elapsed_ms: int | None) -> float:
        """Insert one answer in its own transaction; :class:`DuplicateAnswer` when it exists already."""
        at = time.time()
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                "INSERT INTO answers (reader, image_id, position, call, confidence, pathology, birads, elapsed_ms,"
                " answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (reader, image_id, position, call, confidence, pathology, birads, elapsed_ms, at),
            )
            con.execute("COMMIT")
        except sqlite3.IntegrityError as err:
            con.execute("ROLLBACK")
            if "UNIQUE" in str(err):
                raise DuplicateAnswer(image_id) from err
            raise
        finally:
            con.close()
        return at

    def log(self, kind: str, reader: str | None = None, detail: str = "") -> None:
        """Record a refused request or a login (kept for the coordinator; never shown to readers)."""
        con = self._connect()
        try:
            con.execute("INSERT INTO events (at, reader, kind, detail) VALUES (?, ?, ?, ?)",
                        (time.time(), reader, kind, detail[:500]))
        finally:
            con.close()

    def answered(self, reader: str) -> set[str]:
        con = self._connect()
        try:
            return {r[0] for r in con.execute("SELECT image_id FROM answers WHERE reader = ?", (reader,))}
        finally:
            con.close()

    def counts(self) -> dict[str, int]:
        con = self._connect()
        try:
            return {r[0]: r[1] for r in con.execute("SELECT reader, COUNT(*) FROM answers GROUP BY reader")}
        finally:
            con.close()

    def last_answer(self) -> dict[str, float]:
        con = self._connect()
        try:
            return {r[0]: r[1] for r in con.execute("SELECT reader, MAX(answered_at) FROM answers GROUP BY reader")}
        finally:
            con.close()

    def all(self) -> list[dict[str, Any]]:
        con = self._connect()
        try:
            rows = con.execute(f"SELECT {', '.join(ANSWER_FIELDS)} FROM answers ORDER BY id").fetchall()
        finally:
            con.close()
        return [dict(r) for r in rows]

    def events(self) -> list[dict[str, Any]]:
        con = self._connect()
        try:
            return [dict(r) for r in con.execute("SELECT at, reader, kind, detail FROM events ORDER BY id")]
        finally:
            con.close()
