"""Plumbing shared by the library, the CLI and the plugins (public API): atomic writes and hashing."""

from __future__ import annotations

from .io import atomic_torch_save, atomic_write_bytes, atomic_write_text, file_sha256

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "file_sha256"]
