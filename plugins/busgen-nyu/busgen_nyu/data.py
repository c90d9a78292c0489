"""Datalist(s) -> breast items, and the transforms / collate that turn a breast into a padded image stack.

A breast item groups all images of one breast (NYU: one patient and one laterality, exams with missing
laterality excluded) and carries breast-level labels only::

    {"images": ["/abs/a.png", "/abs/b.png"], "masks": ["/abs/ma.png", ""], "image_ids": ["bus_bra:a.png", ...],
     "label": [0.0, 1.0],            # [benign present, malignant present]
     "label_name": "malignant", "breast_id": "BB-1234|L", "patient_id": "BB-1234", "birads": 4.0,
     "n_images": 2, "source": "bus_bra"}

Grouping (``group_by``):

* ``patient_laterality`` (NYU, ingested PACS data): patient id + laterality (``L``/``R``); items without a
  laterality are excluded and counted, as in Shen et al. 2021;
* ``study_laterality``: study id + laterality (one exam of one breast);
* ``patient``: all images of a patient (BUS-BRA, the phantom). BUS-BRA has one lesion per patient, and its
  ``Side`` column names the half of a dual-view screen capture (``-l``/``-r``), not the breast, so the two halves
  of one capture belong to one breast;
* ``study``: all images of a study.

Labels: a breast is ``benign``/``malignant`` positive when any of its images has that pathology; ``normal`` images
add no label. Items with another pathology are counted and logged, never dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform

from busgen_monai.data.io import read_image_gray
from busgen_monai.data.schema import read_datalist_source, split_names

__all__ = ["GROUP_BY", "CLASSES", "birads_value", "load_breasts", "LoadBreastd", "collate_breasts",
           "breast_counts"]

logger = logging.getLogger(__name__)

GROUP_BY = ("patient_laterality", "study_laterality", "patient", "study")
CLASSES = ("benign", "malignant")
_BIRADS = {"0": 0.0, "1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0, "4a": 4.2, "4b": 4.5, "4c": 4.8, "5": 5.0, "6": 6.0}


def birads_value(value: Any) -> float:
    """A BI-RADS category as a number on an ordinal scale (4a/4b/4c between 4 and 5); NaN when absent/unknown."""
    if value is None:
        return float("nan")
    key = str(value).strip().lower().replace("birads", "").replace("bi-rads", "").strip()
    return _BIRADS.get(key, float("nan"))


def _laterality(it: Mapping) -> str:
    lat = str(it.get("laterality") or "").strip().upper()[:1]
    return lat if lat in ("L", "R") else ""


def load_breasts(
    datalists: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping],
    split: str | Sequence[str] | None = "training",
    group_by: str = "patient_laterality",
    max_images: int | None = None,
    require_label: bool = True,
    validate: bool = True,
) -> list[dict]:
    """Breast items (see the module docstring) from one or several datalists.

    Args:
        datalists: datalist JSON path(s) or loaded datalist dict(s) (with ``base_dir``).
        split: ``training`` / ``validation`` / ``test``, a list of them, or ``"all"``.
        group_by: one of :data:`GROUP_BY`.
        max_images: keep at most this many images per breast (the first ones in datalist order).
        require_label: when False (inference) items without a known pathology are kept with no label.
        validate: validate each datalist (schema and files) on reading.

    Returns:
        list of breast items, in order of first appearance.
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {list(GROUP_BY)}, got {group_by!r}")
    sources = [datalists] if isinstance(datalists, (str, os.PathLike, Mapping)) else list(datalists or [])
    if not sources:
        raise ValueError("load_breasts: no datalist given (config entry 'datalists' is empty)")
    groups: OrderedDict[str, dict] = OrderedDict()
    rejected: Counter = Counter()
    examples: list[str] = []
    for src in sources:
        data, base, name = read_datalist_source(src, validate)
        for split_name in split_names(split):
            for i, it in enumerate(data.get(split_name) or []):
                where = f"{name} {split_name}[{i}] ({it.get('image')})"
                pathology = str(it.get("pathology", "")).lower()
                if pathology not in ("benign", "malignant", "normal") and require_label:
                    rejected[f"pathology={pathology!r}"] += 1
                    examples.append(f"{where}: pathology {pathology!r}")
                    continue
                lat = _laterality(it)
                if group_by.endswith("_laterality") and not lat:
                    rejected["no laterality"] += 1
                    examples.append(f"{where}: no laterality")
                    continue
                unit = str(it.get("patient_id") if group_by.startswith("patient") else it.get("study_id", ""))
                if not unit:
                    rejected[f"no {group_by.split('_')[0]}_id"] += 1
                    examples.append(f"{where}: no {group_by.split('_')[0]}_id")
                    continue
                key = f"{name}:{unit}" + (f"|{lat}" if group_by.endswith("_laterality") else "")
                img = Path(it["image"])
                img = img if img.is_absolute() else base / img
                mask = it.get("mask") or ""
                if mask and not Path(mask).is_absolute():
                    mask = str(base / mask)
                prov = it.get("provenance") or {}
                g = groups.setdefault(key, {"images": [], "masks": [], "image_ids": [], "label": [0.0, 0.0],
                                            "breast_id": key, "patient_id": str(it.get("patient_id", unit)),
                                            "birads": float("nan"), "source": name, "image_pathology": []})
                if max_images is not None and len(g["images"]) >= int(max_images):
                    continue
                g["images"].append(str(img))
                g["masks"].append(str(mask))
                g["image_ids"].append(f"{name}:{prov.get('file') or it['image']}")
                g["image_pathology"].append(pathology)
                if pathology in CLASSES:
                    g["label"][CLASSES.index(pathology)] = 1.0
                b = birads_value(it.get("birads"))
                if not np.isnan(b) and (np.isnan(g["birads"]) or b > g["birads"]):
                    g["birads"] = b
    if rejected:
        total = sum(rejected.values())
        hint = (" Images without laterality are excluded under group_by='patient_laterality' (NYU rule); for data "
                "without a breast side (BUS-BRA, the phantom) use group_by='patient'." if "no laterality" in rejected else "")
        logger.warning("load_breasts: %d image(s) excluded (%s), e.g. %s.%s", total, dict(rejected),
                       "; ".join(examples[:5]), hint)
    breasts = list(groups.values())
    for g in breasts:
        g["n_images"] = len(g["images"])
        g["label_name"] = "+".join(c for c, v in zip(CLASSES, g["label"]) if v) or "normal"
    if not breasts:
        raise ValueError(f"load_breasts: no breast in split {split!r} with group_by={group_by!r} "
                         f"(excluded: {dict(rejected)}).{' Use group_by=patient for data without laterality.' if 'no laterality' in rejected else ''}")
    return breasts


def breast_counts(breasts: Sequence[Mapping]) -> dict[str, int]:
    """Breasts per label name, images, patients."""
    c = Counter(b["label_name"] for b in breasts)
    return {**dict(sorted(c.items())), "breasts": len(breasts), "images": sum(b["n_images"] for b in breasts),
            "patients": len({b["patient_id"] for b in breasts})}


def _resize(arr: np.ndarray, size: Sequence[int], mode: str) -> torch.Tensor:
    t = torch.as_tensor(arr, dtype=torch.float32)[None, None]
    if mode == "area":
        return F.interpolate(t, size=tuple(int(s) for s in size), mode="area")[0, 0]
    return F.interpolate(t, size=tuple(int(s) for s in size), mode="nearest")[0, 0]


_LIST_KEYS = ("images", "masks", "image_ids", "image_pathology")


class LoadBreastd(MapTransform):
    """Load every image of a breast item, resize each to ``image_size`` and stack them.

    Writes ``image`` (K, H, W) float in [0, 1] (K images as channels, so MONAI spatial transforms move all images
    of a breast together). An unreadable image is logged and left out of its breast (``rejected_images`` lists it);
    a breast none of whose images can be read raises one error naming them. With ``load_masks``, ``lesion_mask`` (K, H, W) in {0, 1} and ``has_mask`` (K,)
    (masks are for localisation scores only, never for training).

    Args:
        keys: the item key holding the image paths (``images``).
        image_size: (H, W) of every image.
        load_masks: also load the lesion masks (``masks`` key; empty path -> no mask).
    """

    def __init__(self, keys: KeysCollection = "images", image_size: Sequence[int] = (256, 256), load_masks: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_size = [int(s) for s in image_size]
        self.load_masks = bool(load_masks)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            paths = d[key]
            if not paths:
                raise ValueError(f"breast {d.get('breast_id')!r} has no image")
            imgs, keep, problems = [], [], []
            for i, p in enumerate(paths):
                try:
                    arr = read_image_gray(p).astype(np.float32) / 255.0
                except Exception as err:  # noqa: BLE001 - logged; the breast goes on with its other images
                    problems.append(f"{p}: {err}")
                    continue
                imgs.append(_resize(arr, self.image_size, "area"))
                keep.append(i)
            if not imgs:
                raise ValueError(f"breast {d.get('breast_id')!r}: none of its images can be read ({'; '.join(problems)}); "
                                 "fix or remove them in the datalist")
            if problems:
                logger.warning("breast %r: %d unreadable image(s) left out: %s", d.get("breast_id"), len(problems),
                               "; ".join(problems))
                for list_key in _LIST_KEYS:
                    if isinstance(d.get(list_key), list) and len(d[list_key]) == len(paths):
                        d[list_key] = [d[list_key][i] for i in keep]
                d["rejected_images"] = problems
            d["image"] = torch.stack(imgs).clamp(0.0, 1.0)
            if self.load_masks:
                masks, has = [], []
                for p in d.get("masks") or [""] * len(imgs):
                    if p and os.path.isfile(p):
                        m = (read_image_gray(p) > 127).astype(np.float32)
                        masks.append((_resize(m, self.image_size, "nearest") > 0.5).float())
                        has.append(float(m.any()))
                    else:
                        masks.append(torch.zeros(self.image_size))
                        has.append(0.0)
                d["lesion_mask"] = torch.stack(masks)
                d["has_mask"] = torch.tensor(has)
        return d


def collate_breasts(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate breast items with different numbers of images: pad ``image`` (and ``lesion_mask``/``has_mask``) to
    the largest K with zeros and add ``image_mask`` (B, K) (1 = real image). ``label`` becomes (B, 2); ids and
    other scalars become lists."""
    if not batch:
        raise ValueError("collate_breasts: empty batch")
    k = max(int(torch.as_tensor(b["image"]).shape[0]) for b in batch)
    out: dict[str, Any] = {}
    images, masks = [], []
    for b in batch:
        img = torch.as_tensor(b["image"]).float()
        if hasattr(img, "as_tensor"):
            img = img.as_tensor()
        pad = k - img.shape[0]
        images.append(torch.cat([img, img.new_zeros(pad, *img.shape[1:])]) if pad else img)
        masks.append(torch.cat([torch.ones(img.shape[0]), torch.zeros(pad)]))
    out["image"] = torch.stack(images)
    out["image_mask"] = torch.stack(masks).bool()
    if "lesion_mask" in batch[0]:
        lm = []
        for b in batch:
            m = torch.as_tensor(b["lesion_mask"]).float()
            pad = k - m.shape[0]
            lm.append(torch.cat([m, m.new_zeros(pad, *m.shape[1:])]) if pad else m)
        out["lesion_mask"] = torch.stack(lm)
        out["has_mask"] = torch.stack([torch.cat([torch.as_tensor(b["has_mask"]).float(),
                                                  torch.zeros(k - len(b["has_mask"]))]) for b in batch])
    labels = [b.get("label") for b in batch]
    out["label"] = torch.tensor([[float(v) for v in lab] if lab is not None else [float("nan")] * 2 for lab in labels])
    for key in set(batch[0]) - {"image", "lesion_mask", "has_mask", "label"}:
        out[key] = [b.get(key) for b in batch]
    return out
