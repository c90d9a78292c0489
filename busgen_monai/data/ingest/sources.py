"""The files of a source folder (every regular file, sorted, whatever its name), their pseudonymous ids, and
:func:`locate`, which maps ids back to paths.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from ..dicom import dicomdir_missing_files
from .records import IngestError, file_id_of
from .state import _STATE_DIR


__all__ = ["locate"]


def _walk(src: Path, exclude: Path | None) -> list[tuple[str, str, tuple[int, int]]]:
    """``(absolute path, relative posix path, (size, mtime_ns))`` of every file under ``src``, sorted."""
    out = []
    if src.is_file():
        st = src.stat()
        return [(str(src), src.name, (st.st_size, st.st_mtime_ns))]
    excl = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(src, followlinks=False):
        rp = Path(root)
        if excl is not None:
            dirs[:] = [d for d in dirs if (rp / d).resolve() != excl]
        dirs.sort()
        for name in sorted(files):
            p = rp / name
            rel = p.relative_to(src).as_posix()
            try:
                st = p.stat()
            except OSError:
                out.append((str(p), rel, (-1, 0)))
                continue
            if not os.path.isfile(p):
                continue  # sockets, fifos...
            out.append((str(p), rel, (st.st_size, st.st_mtime_ns)))
    out.sort(key=lambda t: t[1])
    return out


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        inner.resolve().relative_to(outer.resolve())
        return True
    except ValueError:
        return False


def locate(src: str | os.PathLike, file_ids: Iterable[str], *, out: str | os.PathLike | None = None,
           salt: str | None = None) -> dict[str, str]:
    """Source paths (relative to ``src``) of pseudonymous file ids from a rejects report or provenance.

    The salt is ``salt`` or the one kept in ``out/.ingest/salt``. Ids of files that no longer exist (or
    DICOMDIR references to missing files) are not found.
    """
    if salt is None:
        if out is None:
            raise IngestError("locate() needs the salt or the output folder that keeps it")
        salt_file = Path(out) / _STATE_DIR / "salt"
        if not salt_file.is_file():
            raise IngestError(f"{salt_file} does not exist; pass the salt used for the run")
        salt = salt_file.read_text().strip()
    wanted = set(file_ids)
    found = {}
    for _, rel, _ in _walk(Path(src), Path(out) if out is not None else None):
        fid = file_id_of(rel, salt)
        if fid in wanted:
            found[fid] = rel
    return found


def _dicomdir_missing_paths(src: Path, rel: str, salt: str) -> dict[str, str]:
    """file id -> relative path of the files a DICOMDIR references that are missing (for show_paths)."""
    import pydicom

    path = src / rel if src.is_dir() else src
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
        missing = dicomdir_missing_files(ds, path)
    except Exception:  # noqa: BLE001 - the DICOMDIR changed since it was scanned: ids only
        return {}
    paths = [(Path(rel).parent / m).as_posix() for m in missing]
    return {file_id_of(p, salt): p for p in paths}
