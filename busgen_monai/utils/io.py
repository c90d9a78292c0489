"""Atomic file writes, JSON-safe conversion and file hashing: the one place the project writes files from.

Every writer goes through :func:`atomic_open`: the data go to a temporary file in the destination's folder
(``.<name>.<random>.tmp``), are flushed and fsynced, the file gets the usual permissions (``0666`` less the
umask, as ``open()`` would give), and only then is it renamed over the destination. A reader therefore sees
the old file or the whole new one, never a partial one, and a failure (an exception, Ctrl-C) removes the
temporary file and leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_save_figure",
    "atomic_save_png",
    "atomic_save_npz",
    "atomic_copy",
    "to_jsonable",
    "file_hash",
    "file_sha256",
]

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on a clean exit it replaces ``path`` atomically.

    Args:
        path: the destination; its folder is created when missing.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8 unless ``encoding`` is given).
        encoding, newline: as for :func:`open` (text mode only).

    Yields:
        the open file object. On leaving the block the file is flushed, fsynced, given the usual
        permissions and renamed onto ``path``; if the block raises, the temporary file is removed and
        ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        if mode == "w":
            fh = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            fh = os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, then rename)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any, nonfinite_as_none: bool = True) -> Any:
    """Convert nested results to plain Python/JSON types.

    Args:
        obj: nested dicts (keys become ``str``), lists/tuples, numpy scalars and arrays, paths,
            dataclasses (``as_dict()`` used when present).
        nonfinite_as_none: turn nan/inf into ``None`` (strict JSON); keep them otherwise.

    Raises:
        TypeError: for a value with no JSON form (the message names its type).
    """
    def rec(v: Any) -> Any:
        return to_jsonable(v, nonfinite_as_none)

    if hasattr(obj, "as_dict") and callable(obj.as_dict):
        return rec(obj.as_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return rec({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, Mapping):
        return {str(k): rec(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return rec(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [rec(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if (math.isfinite(v) or not nonfinite_as_none) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot put a {type(obj).__name__} object into JSON; convert it to numbers or strings first.")


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 1, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as strict JSON (UTF-8, trailing newline) to ``path`` atomically.

    ``obj`` goes through :func:`to_jsonable` first: numpy scalars and arrays become numbers and lists,
    paths become strings, and nan/inf become ``null``.
    """
    text = json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def atomic_save_figure(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig(path, **savefig_kwargs)`` atomically (a matplotlib figure; the caller closes it).

    The format is taken from ``path``'s suffix unless ``format=`` is given.
    """
    path = Path(path)
    if "format" not in savefig_kwargs:
        savefig_kwargs["format"] = path.suffix.lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, **savefig_kwargs)
    return path


def atomic_save_png(image: Any, path: PathLike, **pil_kwargs: Any) -> Path:
    """Write a ``(H, W)`` / ``(H, W, C)`` uint8 array (or a PIL image) as PNG to ``path`` atomically.

    ``pil_kwargs`` go to :meth:`PIL.Image.Image.save` (e.g. ``compress_level=1``).
    """
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    im.save(buf, format="PNG", **pil_kwargs)  # encode first: an encoder error leaves no file behind
    return atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: PathLike, **arrays: Any) -> Path:
    """``numpy.savez(path, **arrays)`` atomically (``path`` is written as given; no ``.npz`` is appended)."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Copy ``src``'s bytes to ``dst`` atomically (streamed; ``dst`` gets the usual permissions)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return Path(dst)


def file_hash(path: PathLike, kind: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (read in ``chunk``-byte blocks) with :func:`hashlib.new` algorithm ``kind``."""
    h = hashlib.new(kind)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    return file_hash(path, "sha256", chunk)
