"""Write a phantom data set (images + a datalist with boxes, pathology, BI-RADS, device, patient-wise split)
and captioned sample grids.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from busgen_monai.utils.io import atomic_save_png, atomic_write_bytes, atomic_write_json

from .anatomy import _PATHOLOGY_CODE, PHANTOM_PATHOLOGIES
from .device_styles import PHANTOM_DEVICES, get_device_style
from .phantom import generate_case


__all__ = ["write_dataset", "sample_grid"]


# ----------------------------------------------------------------------------------------------
# data set writer and sample grid
# ----------------------------------------------------------------------------------------------


def _save_image(arr: np.ndarray, path: pathlib.Path, fmt: str) -> None:
    if fmt == "png":
        atomic_save_png(arr, path, optimize=False, compress_level=6)
        return
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    atomic_write_bytes(path, buf.getvalue())


def write_dataset(
    out_dir: str | os.PathLike,
    n: int = 200,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    devices: Sequence[str] | None = None,
    pathologies: Sequence[str] = ("benign", "malignant"),
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    image_format: str = "png",
) -> pathlib.Path:
    """Write a phantom data set (images, masks and a schema-1 datalist) to ``out_dir``.

    Items are balanced over pathology x device (round robin). Within each pathology x device cell,
    images are grouped into pseudonymous patients (``PH-P0001``; about a third have two images, one
    study ``PH-S0001`` each), and patients are split into training/validation/test by
    ``split_fractions`` within each cell, so no patient crosses splits and every split sees every
    cell when the cell is large enough. Output is byte-identical for identical arguments.

    Layout::

        out_dir/images/ph_000000.png   out_dir/masks/ph_000000.png   out_dir/datalist.json

    Args:
        out_dir: output folder (created).
        n: number of images.
        seed: data-set seed (per-image seeds are derived from it and stored in ``provenance``).
        size: image (H, W).
        devices: canonical phantom device names (default: all four).
        pathologies: pathologies to draw (``normal``, ``benign``, ``malignant``).
        split_fractions: (training, validation, test) fractions of patients.
        image_format: ``"png"`` (default) or ``"jpg"``; masks are always PNG.

    Returns:
        the path of ``datalist.json``.
    """
    out = pathlib.Path(out_dir)
    devices = list(PHANTOM_DEVICES) if devices is None else [get_device_style(d).name for d in devices]
    pathologies = list(pathologies)
    for p in pathologies:
        if p not in _PATHOLOGY_CODE:
            raise ValueError(f"unknown phantom pathology {p!r}; use one of {list(PHANTOM_PATHOLOGIES)}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fr = np.asarray(split_fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers, got {split_fractions!r}")
    fr = fr / fr.sum()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    cells = [(p, d) for p in pathologies for d in devices]
    item_seeds = np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint32)
    rng = np.random.default_rng([int(seed), 77])
    by_cell: dict[int, list[int]] = {}
    for i in range(n):
        by_cell.setdefault(i % len(cells), []).append(i)

    split_names = ("training", "validation", "test")
    patient_of: dict[int, tuple[str, str, str]] = {}
    pcount = 0
    for ci in range(len(cells)):
        idx = by_cell.get(ci, [])
        groups: list[list[int]] = []
        k = 0
        while k < len(idx):
            size_g = 2 if (k + 1 < len(idx) and rng.random() < 0.35) else 1
            groups.append(idx[k : k + size_g])
            k += size_g
        order = rng.permutation(len(groups))
        n_val = int(round(fr[1] * len(groups)))
        n_test = int(round(fr[2] * len(groups)))
        n_val = min(n_val, len(groups))
        n_test = min(n_test, len(groups) - n_val)
        for rank, gi in enumerate(order):
            split = "validation" if rank < n_val else "test" if rank < n_val + n_test else "training"
            pcount += 1
            pid, sid = f"PH-P{pcount:04d}", f"PH-S{pcount:04d}"
            for i in groups[gi]:
                patient_of[i] = (pid, sid, split)

    lists: dict[str, list[dict]] = {s: [] for s in split_names}
    for i in range(n):
        pathology, device = cells[i % len(cells)]
        case = generate_case(int(item_seeds[i]), pathology, device, size)
        name = f"ph_{i:06d}"
        img_rel = f"images/{name}.{image_format}"
        mask_rel = f"masks/{name}.png"
        _save_image(case.image, out / img_rel, image_format)
        _save_image(case.mask, out / mask_rel, "png")
        pid, sid, split = patient_of[i]
        lists[split].append({
            "image": img_rel,
            "mask": mask_rel,
            "pathology": pathology,
            "device": device,
            "birads": case.birads,
            "boxes": case.boxes,
            "patient_id": pid,
            "study_id": sid,
            "split": split,
            "width": int(size[1]),
            "height": int(size[0]),
            "provenance": {"source": "phantom", "seed": int(item_seeds[i]), "index": i},
        })
    datalist = {
        "schema_version": 1,
        "name": "phantom",
        "description": (f"busgen-monai breast ultrasound phantom: n={n}, seed={seed}, size={list(size)}, "
                        "balanced over pathology x device, patient-wise splits"),
        "pathologies": pathologies,
        "devices": devices,
        **lists,
    }
    path = out / "datalist.json"
    atomic_write_json(path, datalist, indent=2)
    return path


def sample_grid(
    images: Sequence[np.ndarray | str | os.PathLike],
    labels: Sequence[str] | None,
    path: str | os.PathLike,
    ncols: int = 8,
    tile: int = 128,
) -> pathlib.Path:
    """Save a captioned grid of images as a PNG (PIL only; deterministic).

    Args:
        images: arrays (H, W) / (H, W, 3) (uint8, or float in [0, 1]) or image file paths.
        labels: one caption per image (or ``None``).
        path: output PNG path (parent folders are created).
        ncols: images per row.
        tile: tile edge in pixels (images are resized to fit, keeping the aspect ratio).

    Returns:
        the written path.
    """
    from PIL import Image, ImageDraw

    if labels is not None and len(labels) != len(images):
        raise ValueError(f"sample_grid: {len(images)} images but {len(labels)} labels")
    n = len(images)
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, math.ceil(n / ncols))
    cap = 14
    canvas = Image.new("RGB", (ncols * (tile + 4) + 4, nrows * (tile + cap + 6) + 4), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for k, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            with Image.open(item) as src:
                im = src.convert("RGB")
        else:
            a = np.asarray(item)
            if a.dtype != np.uint8:
                a = np.clip(np.round(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
            im = Image.fromarray(a).convert("RGB")
        im.thumbnail((tile, tile))
        r, c = divmod(k, ncols)
        x0, y0 = 4 + c * (tile + 4), 4 + r * (tile + cap + 6)
        canvas.paste(im, (x0 + (tile - im.width) // 2, y0 + (tile - im.height) // 2))
        if labels is not None:
            draw.text((x0 + 1, y0 + tile + 2), str(labels[k])[: max(4, tile // 6)], fill=(235, 235, 235))
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save_png(canvas, out)
