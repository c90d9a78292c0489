"""Load a shared ``.pt`` file without running code: ``torch.load(weights_only=True)`` with a clear refusal.

Every file the project writes (checkpoints, model files, LoRA adapters, protectors) holds tensors and
plain containers only, so it loads with PyTorch's weights-only unpickler. A file that holds pickled objects
(a class instance, a function, a ``__reduce__`` payload) is refused before any of it runs.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["UnsafeFileError", "load_weights"]


class UnsafeFileError(ValueError):
    """A ``.pt`` file that is not tensors and plain containers (it would need to run code to load)."""


def load_weights(path: str | os.PathLike, what: str = "file", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; raises :class:`UnsafeFileError` naming the file and ``what``
    it should have been when the file holds anything else."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - the unpickler raises UnpicklingError, RuntimeError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(
            f"refused to load {what} {path}: it is not tensors and plain containers (weights-only loading; a "
            f"file holding pickled objects could run code). Only load files from a source you trust, re-saved "
            f"as plain tensors. ({type(err).__name__}: {first[:200]})") from None
