"""Plumbing shared by the library, the CLI and the plugins (public API): atomic writes, JSON-safe conversion
and hashing."""

from __future__ import annotations

from . import io as _io
from .io import (
    atomic_copy,
    atomic_open,
    atomic_save_figure,
    atomic_save_npz,
    atomic_save_png,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_hash,
    file_sha256,
    to_jsonable,
)

__all__ = list(_io.__all__)  # one list: the module's
