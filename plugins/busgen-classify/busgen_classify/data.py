"""Datalist(s) -> classifier items.

A classifier item is a flat dict that MONAI's default collate can batch::

    {"image": "/abs/path.png", "label": 1, "label_name": "malignant", "box": [x1, y1, x2, y2],
     "has_box": 1, "patient_id": "BB-...", "image_id": "bus_bra:bus_0001-l.png", "source": "bus_bra"}

``box`` is the union of the item's normalised lesion boxes ([0, 0, 1, 1] when it has none). The label
comes from any datalist key (``pathology`` by default; ``birads``, ``device`` or a custom key such as
``label``), optionally mapped through ``label_map`` (raw value -> class name), and is the index of the
class in ``classes``. Several datalists (real, generated, or both) are concatenated.

Items whose label is missing or not one of ``classes`` are never dropped silently: they are counted and
logged (``on_unknown="skip"``, the default) or raise one error naming them (``on_unknown="error"``).
"""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.data.schema import as_datalist_list, read_datalist_source, split_names

__all__ = [
    "eval_folder_name",
    "load_items",
    "inference_items",
    "class_balanced_weights",
    "stratified_subset",
    "label_counts",
    "union_box",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def eval_folder_name(test_datalists: Any, datalists: Any, test_split: str = "test") -> str:
    """The evaluation folder's name: ``eval`` for the training datalists' test split, else ``eval_<names>`` from the
    test datalists' names (file stems) and split, so that evaluating a second test set never overwrites the first."""
    import re

    tests, trains = as_datalist_list(test_datalists), as_datalist_list(datalists)
    same = [str(t) if not isinstance(t, Mapping) else t.get("name") for t in tests] == \
        [str(t) if not isinstance(t, Mapping) else t.get("name") for t in trains]
    if same and test_split == "test":
        return "eval"
    names = [Path(str(t)).stem if not isinstance(t, Mapping) else str(t.get("name", "datalist")) for t in tests]
    tag = re.sub(r"[^A-Za-z0-9_.+-]+", "-", "+".join(names) or "none")[:80]
    return f"eval_{tag}" + ("" if test_split == "test" else f"_{test_split}")


def union_box(boxes: Sequence[Sequence[float]] | None) -> list[float]:
    """Union of normalised ``[x1, y1, x2, y2]`` boxes; the whole image ``[0, 0, 1, 1]`` when there are none."""
    if not boxes:
        return [0.0, 0.0, 1.0, 1.0]
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [float(arr[:, 0].min()), float(arr[:, 1].min()), float(arr[:, 2].max()), float(arr[:, 3].max())]


def _class_index(value: Any, classes: Sequence[str], label_map: Mapping[str, Any] | None) -> int | None:
    if value is None:
        return None
    raw = str(value)
    if label_map:
        for key in (raw, raw.lower()):
            if key in label_map:
                mapped = label_map[key]
                if isinstance(mapped, int) and not isinstance(mapped, bool):
                    return mapped if 0 <= mapped < len(classes) else None
                raw = str(mapped)
                break
    lowered = [str(c).lower() for c in classes]
    if raw in classes:
        return list(classes).index(raw)
    if raw.lower() in lowered:
        return lowered.index(raw.lower())
    return None


def load_items(
    datalists: PathLike | Mapping | Sequence[PathLike | Mapping],
    split: str | Sequence[str] | None = "training",
    label_key: str = "pathology",
    classes: Sequence[str] = ("benign", "malignant"),
    label_map: Mapping[str, Any] | None = None,
    limit: int | None = None,
    seed: int = 0,
    on_unknown: str = "skip",
    validate: bool = True,
    require_label: bool = True,
) -> list[dict]:
    """Classifier items from one or several datalists (concatenated in order).

    Args:
        datalists: datalist JSON path(s) or already-loaded datalist dict(s) (with ``base_dir``).
        split: ``training`` / ``validation`` / ``test``, a list of them, or ``"all"``.
        label_key: item key holding the label (``pathology``, ``birads``, ``device``, ``label``, ...).
        classes: class names; the label is the index of the item's (mapped) value in this list.
            Matching is exact first, then case-insensitive.
        label_map: optional raw value -> class name (or class index), e.g. BI-RADS to benign/malignant
            ``{"2": "benign", "3": "benign", "4a": "malignant", ...}``.
        limit: keep a class-stratified random subset of this many items (see :func:`stratified_subset`).
        seed: seed of that subset.
        on_unknown: ``"skip"`` (count and log items whose label is missing or not in ``classes``) or
            ``"error"`` (raise one ``ValueError`` naming them).
        validate: validate each datalist against the schema (files included) when reading it.
        require_label: when False (inference), items without a usable label get ``label = -1``.

    Returns:
        list of classifier items (see the module docstring).
    """
    if on_unknown not in ("skip", "error"):
        raise ValueError(f"on_unknown must be 'skip' or 'error', got {on_unknown!r}")
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise ValueError(f"classes needs at least two class names, got {classes}")
    sources = as_datalist_list(datalists)
    if not sources:
        raise ValueError("load_items: no datalist given (config entry 'datalists' / 'train_datalists' is empty)")
    items: list[dict] = []
    unknown: Counter = Counter()
    examples: list[str] = []
    for src in sources:
        data, base, name = read_datalist_source(src, validate)
        for split_name in split_names(split):
            for i, it in enumerate(data.get(split_name) or []):
                value = it.get(label_key)
                idx = _class_index(value, classes, label_map)
                if idx is None and require_label:
                    unknown[f"{name}:{label_key}={value!r}"] += 1
                    if len(examples) < 10:
                        examples.append(f"{name} {split_name}[{i}] ({it.get('image')}): {label_key}={value!r}")
                    continue
                img = Path(it["image"])
                img = img if img.is_absolute() else base / img
                prov = it.get("provenance") or {}
                ident = prov.get("file") or it["image"]
                items.append({
                    "image": str(img),
                    "label": int(idx) if idx is not None else -1,
                    "label_name": classes[idx] if idx is not None else str(value),
                    "box": union_box(it.get("boxes")),
                    "has_box": int(bool(it.get("boxes"))),
                    "patient_id": str(it.get("patient_id", ident)),
                    "image_id": f"{name}:{ident}",
                    "source": name,
                })
    if unknown:
        total = sum(unknown.values())
        msg = (f"{total} item(s) have a '{label_key}' value that is not one of the classes {classes} "
               f"(counts: {dict(unknown)}); e.g. " + "; ".join(examples)
               + ". Add the values to 'classes' or map them with 'label_map'.")
        if on_unknown == "error":
            raise ValueError(msg)
        logger.warning("load_items: skipping %s", msg)
    if not items:
        raise ValueError(f"load_items: no usable items in split {split!r} of {[str(s) if not isinstance(s, Mapping) else s.get('name') for s in sources]} "
                         f"with label key {label_key!r} and classes {classes}")
    if limit is not None:
        items = stratified_subset(items, int(limit), seed)
    return items


def stratified_subset(items: Sequence[Mapping], k: int, seed: int = 0) -> list[dict]:
    """A random subset of ``k`` items whose class proportions follow the full list (every class present
    at least once when ``k`` allows it). Deterministic for a given ``seed``; keeps the input order."""
    if k <= 0:
        raise ValueError(f"subset size must be positive, got {k}")
    if k >= len(items):
        return [dict(it) for it in items]
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_label.setdefault(int(it["label"]), []).append(i)
    labels = sorted(by_label)
    n = len(items)
    quota = {c: max(1, int(round(k * len(by_label[c]) / n))) if k >= len(labels) else 0 for c in labels}
    # fix rounding so the quotas sum to k, taking from / giving to the largest classes
    while sum(quota.values()) > k:
        c = max(labels, key=lambda c: quota[c])
        quota[c] -= 1
    while sum(quota.values()) < k:
        c = max(labels, key=lambda c: len(by_label[c]) - quota[c])
        quota[c] += 1
    chosen: list[int] = []
    for c in labels:
        pool = by_label[c]
        chosen += list(rng.choice(pool, size=min(quota[c], len(pool)), replace=False))
    return [dict(items[i]) for i in sorted(chosen)]


def label_counts(items: Sequence[Mapping]) -> dict[int, int]:
    """Items per class index."""
    return dict(sorted(Counter(int(it["label"]) for it in items).items()))


def class_balanced_weights(items: Sequence[Mapping]) -> list[float]:
    """Per-item sampling weights ``1 / (items of its class)``: with ``WeightedRandomSampler`` every class
    is drawn equally often."""
    counts = label_counts(items)
    return [1.0 / counts[int(it["label"])] for it in items]


def inference_items(
    datalists: PathLike | Sequence[PathLike] | None = None,
    split: str | Sequence[str] | None = "test",
    image_glob: str | None = None,
    label_key: str = "pathology",
    classes: Sequence[str] = ("benign", "malignant"),
    label_map: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Items to predict: from datalist(s) (labels kept where known, else ``-1``) and/or an image glob
    (whole image, no box, ``label = -1``)."""
    items: list[dict] = []
    if datalists:
        items += load_items(datalists, split, label_key, classes, label_map, require_label=False)
    if image_glob:
        paths = sorted(glob.glob(os.path.expanduser(image_glob), recursive=True))
        if not paths:
            raise FileNotFoundError(f"image_glob {image_glob!r} matches no file")
        for p in paths:
            ident = os.path.basename(p)
            items.append({"image": os.path.abspath(p), "label": -1, "label_name": "", "box": [0.0, 0.0, 1.0, 1.0],
                          "has_box": 0, "patient_id": ident, "image_id": f"glob:{ident}", "source": "glob"})
    if not items:
        raise ValueError("inference: give 'datalists' (with 'split') or 'image_glob'")
    return items
