"""Where an image's frames go (``images/<patient>/<study>/<series>/``) and how they are written: PNG or
NIfTI through :mod:`busgen_monai.utils.io`'s atomic writes, and removed again when the file is rejected.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from busgen_monai.utils.io import atomic_save_png, atomic_write_bytes


__all__: list[str] = []  # the package's own plumbing; nothing public


def _rel_frame_dir(info: Mapping) -> str:
    return f"images/{info['patient_hash']}/{info['study_hash']}/{info['series_hash']}"


def _write_png(path: Path, frame: np.ndarray, level: int) -> None:
    atomic_save_png(frame, path, compress_level=level)


def _write_nifti(path: Path, frame: np.ndarray, spacing: Sequence[float] | None) -> None:
    import nibabel as nib

    dx, dy = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    affine = np.diag([dx, dy, 1.0, 1.0])
    if frame.ndim == 2:
        data = np.ascontiguousarray(frame.T)  # (x, y) = (column, row), as MONAI's readers index images
    else:  # RGB: a 5-D vector image (x, y, z=1, t=1, 3), the NIfTI way of storing vector voxels
        data = np.ascontiguousarray(frame.transpose(1, 0, 2)[:, :, None, None, :])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm" if spacing else "unknown")
    if frame.ndim == 3:
        img.header.set_intent("vector")
    img.header["descrip"] = b""
    img.header["aux_file"] = b""
    img.header["db_name"] = b""
    img.set_sform(affine, code=1 if spacing else 0)
    img.set_qform(affine, code=1 if spacing else 0)
    # one .nii file, gzipped as nibabel would (level 1), with no time stamp in the gzip header
    atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def _remove_outputs(out_dir: Path, rel_dir: str, sop_hash: str, temporary_only: bool = False) -> None:
    """Delete the frames of one image (or only temporary files left by a killed run).

    Folders are left alone: another worker may be about to write into the same series folder (a folder
    removed under it turned its good file into an error). :func:`_prune_empty_dirs` removes emptied folders
    once every worker has finished."""
    folder = out_dir / rel_dir
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        temporary = (p.name.startswith(f".{sop_hash}_f") and p.name.endswith(".tmp")) or \
            (p.name.startswith(".tmp-") and f"{sop_hash}_f" in p.name)  # atomic writes' / older versions' names
        if temporary or (not temporary_only and p.name.startswith(f"{sop_hash}_f")):
            try:
                p.unlink()
            except OSError:
                pass


def _prune_empty_dirs(images: Path) -> None:
    """Remove empty folders under ``images`` (bottom-up); only the main process calls it, after the workers."""
    if not images.is_dir():
        return
    for root, dirs, files in os.walk(images, topdown=False):
        if Path(root) != images and not os.listdir(root):
            try:
                os.rmdir(root)
            except OSError:
                pass
