"""Datalist(s) -> detector items.

A detector item is a flat dict::

    {"image": "/abs/path.png", "boxes": [[x1, y1, x2, y2], ...], "labels": [0, ...],
     "patient_id": "BB-...", "image_id": "bus_bra:bus_0001-l.png", "source": "bus_bra",
     "pathology": "benign"}

``boxes`` are the datalist's normalised ``[x1, y1, x2, y2]`` boxes (in [0, 1], the datalist contract, see
``busgen_monai.data.schema``); a lesion-free image (``boxes: []``, e.g. the phantom's ``normal`` items) is kept
with zero boxes, so false positives on normal images are counted. Generated items carry the generator's
conditioning boxes (pseudo-labels) the same way. Every box gets class 0 (``lesion``).

Invalid boxes (outside [0, 1], empty or inverted) are never dropped silently: the datalist validator
rejects the file naming the item, or, for dict datalists passed without validation, the item is counted
and logged (``on_bad_box="skip"``) or raises (``"error"``).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from busgen_monai.data.schema import as_datalist_list, read_datalist_source, split_names

__all__ = ["load_items", "inference_items", "subset", "relative_areas", "count_boxes"]

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike


def _good_box(box: Sequence[float]) -> bool:
    if len(box) != 4:
        return False
    x1, y1, x2, y2 = (float(v) for v in box)
    return all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) and x1 < x2 and y1 < y2


def load_items(
    datalists: PathLike | Mapping | Sequence[PathLike | Mapping],
    split: str | Sequence[str] | None = "training",
    limit: int | None = None,
    seed: int = 0,
    lesion_free: bool = True,
    validate: bool = True,
    on_bad_box: str = "skip",
) -> list[dict]:
    """Detector items from one or several datalists (concatenated in order).

    Args:
        datalists: datalist JSON path(s) or loaded datalist dict(s) (with ``base_dir``).
        split: ``training`` / ``validation`` / ``test``, a list of them, or ``"all"``.
        limit: keep a random subset of this many items (by patient order, seed ``seed``; see :func:`subset`).
        seed: seed of that subset.
        lesion_free: keep images without boxes (they teach and measure "no lesion here").
        validate: validate each datalist file against the schema (files included).
        on_bad_box: ``skip`` (count and log) or ``error`` for items whose boxes break the contract.

    Returns:
        list of detector items (see the module docstring).
    """
    if on_bad_box not in ("skip", "error"):
        raise ValueError(f"on_bad_box must be 'skip' or 'error', got {on_bad_box!r}")
    sources = as_datalist_list(datalists)
    if not sources:
        raise ValueError("load_items: no datalist given (config entry 'datalists' / 'train_datalists' is empty)")
    items: list[dict] = []
    bad: list[str] = []
    for src in sources:
        data, base, name = read_datalist_source(src, validate)
        for split_name in split_names(split):
            for i, it in enumerate(data.get(split_name) or []):
                boxes = [list(map(float, b)) for b in (it.get("boxes") or [])]
                if not all(_good_box(b) for b in boxes):
                    bad.append(f"{name} {split_name}[{i}] ({it.get('image')}): boxes {boxes}")
                    continue
                if not boxes and not lesion_free:
                    continue
                img = Path(it["image"])
                img = img if img.is_absolute() else base / img
                prov = it.get("provenance") or {}
                ident = prov.get("file") or it["image"]
                items.append({
                    "image": str(img),
                    "boxes": boxes,
                    "labels": [0] * len(boxes),
                    "patient_id": str(it.get("patient_id", ident)),
                    "image_id": f"{name}:{ident}",
                    "source": name,
                    "pathology": str(it.get("pathology", "")),
                })
    if bad:
        msg = (f"{len(bad)} item(s) have boxes that are not normalised [x1, y1, x2, y2] with 0 <= x1 < x2 <= 1 "
               "and 0 <= y1 < y2 <= 1: " + "; ".join(bad[:10]) + ". Fix the datalist (busgen datalist validate).")
        if on_bad_box == "error":
            raise ValueError(msg)
        logger.warning("load_items: skipping %s", msg)
    if not items:
        raise ValueError(f"load_items: no usable items in split {split!r} of "
                         f"{[s if not isinstance(s, Mapping) else s.get('name') for s in sources]}")
    if limit is not None:
        items = subset(items, int(limit), seed)
    return items


def subset(items: Sequence[Mapping], k: int, seed: int = 0) -> list[dict]:
    """``k`` items drawn by whole patients (random patient order, seed ``seed``) so that a patient's images
    stay together; the last patient may be cut. Keeps the input order."""
    if k <= 0:
        raise ValueError(f"subset size must be positive, got {k}")
    if k >= len(items):
        return [dict(it) for it in items]
    patients = sorted({str(it["patient_id"]) for it in items})
    order = np.random.default_rng(seed).permutation(len(patients))
    rank = {patients[j]: r for r, j in enumerate(order)}
    idx = sorted(range(len(items)), key=lambda i: (rank[str(items[i]["patient_id"])], i))[:k]
    return [dict(items[i]) for i in sorted(idx)]


def relative_areas(items: Sequence[Mapping]) -> np.ndarray:
    """Relative area ``(x2 - x1) * (y2 - y1)`` of every ground-truth box, in item order."""
    out = [(b[2] - b[0]) * (b[3] - b[1]) for it in items for b in it.get("boxes") or []]
    return np.asarray(out, dtype=np.float64)


def count_boxes(items: Sequence[Mapping]) -> dict[str, int]:
    """Images, boxes and lesion-free images."""
    return {"images": len(items), "boxes": int(sum(len(it.get("boxes") or []) for it in items)),
            "lesion_free_images": int(sum(not it.get("boxes") for it in items)),
            "patients": len({str(it.get("patient_id")) for it in items})}


def inference_items(datalists: PathLike | Sequence[PathLike] | None = None, split: str | Sequence[str] | None = "test",
                    image_glob: str | None = None) -> list[dict]:
    """Items to run the detector on: datalist split(s) (ground truth kept where known) and/or an image glob
    (no ground truth: ``boxes`` is ``None``)."""
    items: list[dict] = []
    if datalists:
        items += load_items(datalists, split)
    if image_glob:
        paths = sorted(glob.glob(os.path.expanduser(image_glob), recursive=True))
        if not paths:
            raise FileNotFoundError(f"image_glob {image_glob!r} matches no file")
        for p in paths:
            ident = os.path.basename(p)
            items.append({"image": os.path.abspath(p), "boxes": [], "labels": [], "patient_id": ident,
                          "image_id": f"glob:{ident}", "source": "glob", "pathology": "", "has_truth": False})
    if not items:
        raise ValueError("inference: give 'datalists' (with 'split') or 'image_glob'")
    return items
