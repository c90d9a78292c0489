"""Loaders that turn real breast-ultrasound datasets into datalists (see ``docs/datalist.md``).

- :func:`load_bus_bra`: BUS-BRA (Gomez-Flores et al., Medical Physics 2023; doi 10.5281/zenodo.7730709):
  ``bus_data.csv`` + ``Images/`` + ``Masks/``; boxes from the CSV, checked against the masks; device
  names from the CSV through the device vocabulary; splits by patient (``Case``), never by image.
- :func:`load_busi_folder`: BUSI-style folders (``benign/``, ``malignant/``, ``normal/``, any case), either the
  original flat layout (``name.png`` next to ``name_mask.png``, ``name_mask_1.png``...) or the common
  redistribution (``images/name.png`` + ``masks/name[_mask].png``); one box per connected lesion.
- :func:`load_image_csv`: a plain folder of images with a CSV (image, pathology, device, optional
  birads, patient_id, boxes as ``x1 y1 x2 y2`` in pixels or normalised, optional mask).

Every loader returns a validated datalist dict; write it with :func:`busgen_monai.data.schema.save_datalist`.
Problems in the source (unknown pathology, box outside the image, missing file) raise one
:class:`~busgen_monai.data.schema.DatalistError` naming each bad row. A loader that finds no usable item raises
:class:`~busgen_monai.data.schema.EmptyDatalistError` (one line naming the source and what was looked for); it
never returns an empty datalist.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .devices import UNKNOWN_DEVICE, DeviceVocabulary, UnknownDeviceError, default_vocabulary
from .schema import BUILTIN_PATHOLOGIES, DatalistError, EmptyDatalistError, make_datalist, validate_datalist

__all__ = [
    "pseudonym",
    "patient_split",
    "mask_to_boxes",
    "box_iou",
    "load_bus_bra",
    "load_busi_folder",
    "BUSI_LAYOUTS",
    "load_image_csv",
    "resolve_device",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def pseudonym(value: str, prefix: str = "P", salt: str = "busgen") -> str:
    """Stable pseudonymous id for ``value`` (salted SHA-256, 12 hex digits). Never reversible to a name/MRN."""
    digest = hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def patient_split(
    patient_labels: Mapping[str, str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, str]:
    """Assign each patient to ``training``/``validation``/``test``, stratified by the patient's label.

    Args:
        patient_labels: patient id -> stratification label (e.g. the patient's worst pathology).
        fractions: training, validation, test fractions (normalised to sum 1).
        seed: shuffling seed; the same inputs always give the same split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {list(fractions)}")
    total = float(sum(fractions))
    fr = [f / total for f in fractions]
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, label in sorted(patient_labels.items()):
        by_label[label].append(patient)
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for label in sorted(by_label):
        patients = by_label[label]
        rng.shuffle(patients)
        n = len(patients)
        n_val = int(round(fr[1] * n))
        n_test = int(round(fr[2] * n))
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        for i, p in enumerate(patients):
            out[p] = "test" if i < n_test else "validation" if i < n_test + n_val else "training"
    return out


def mask_to_boxes(mask: np.ndarray, min_pixels: int = 4, per_component: bool = True) -> list[list[float]]:
    """Normalised ``[x1, y1, x2, y2]`` boxes of a lesion mask (one per connected component, or the union).

    ``x2 = (last column + 1) / width``, so a box covers the mask pixels exactly.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(axis=-1)
    fg = mask > 0
    h, w = fg.shape
    if not fg.any():
        return []
    if per_component:
        labels, n = ndimage.label(fg)
        slices = ndimage.find_objects(labels)
        sizes = ndimage.sum(fg, labels, index=range(1, n + 1))
        comps = [(sl, sz) for sl, sz in zip(slices, np.atleast_1d(sizes)) if sl is not None and sz >= min_pixels]
    else:
        ys, xs = np.nonzero(fg)
        comps = [((slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)), fg.sum())]
    boxes = [[sl[1].start / w, sl[0].start / h, sl[1].stop / w, sl[0].stop / h] for sl, _ in comps]
    return sorted(boxes)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def resolve_device(
    name: str,
    vocabulary: DeviceVocabulary,
    on_unknown: str,
    unknown: dict[str, int],
    context: str = "",
) -> str:
    """Canonical device name for ``name``; unknown names raise, are added, or become ``unknown``.

    ``unknown`` counts each unknown raw name so callers can report them (nothing is dropped silently).
    """
    if on_unknown not in ("error", "add", "null"):
        raise ValueError(f"on_unknown must be 'error', 'add' or 'null', got {on_unknown!r}")
    found = vocabulary.find(name) if name else None
    if found is not None:
        return found
    unknown[name or "<empty>"] = unknown.get(name or "<empty>", 0) + 1
    if on_unknown == "error":
        raise UnknownDeviceError(name or "<empty>", context)
    if on_unknown == "add" and name:
        return vocabulary.add(name.split("@")[0].strip().replace(" ", "-")).name
    return UNKNOWN_DEVICE


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size  # (width, height)


def _finish(items: list[dict], name: str, description: str, pathologies: Iterable[str], base_dir: Path,
            vocabulary: DeviceVocabulary, problems: list[str], source: str | os.PathLike,
            rejected: Sequence[str] = ()) -> dict:
    if problems:
        raise DatalistError(problems, source)
    if not items:  # a loader never writes an empty datalist (it would train on nothing, silently)
        why = f"all {len(rejected)} rows were left out, first: {rejected[0]}" if rejected else "the source lists none"
        raise EmptyDatalistError(f"{name}: 0 usable items ({why})", source)
    data = make_datalist(items, name=name, description=description, pathologies=list(pathologies))
    validate_datalist(data, base_dir=base_dir, vocabulary=vocabulary, check_files=False, source=source)
    return data


def load_bus_bra(
    root: str | os.PathLike,
    *,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    fold: int | None = None,
    vocabulary: DeviceVocabulary | None = None,
    on_unknown_device: str = "error",
    min_mask_iou: float = 0.8,
    check_masks: bool = True,
    on_box_mismatch: str = "mask",
    relative_to: str | os.PathLike | None = None,
) -> dict:
    """BUS-BRA -> datalist.

    Args:
        root: the BUS-BRA folder (``bus_data.csv``, ``Images/``, ``Masks/``).
        fractions: patient-wise training/validation/test fractions (stratified by the patient's pathology).
        seed: split seed.
        fold: instead of ``fractions``, use ``5-fold-cv.csv``: images whose ``kFold`` equals ``fold`` are the
            test split, the next fold the validation split, the rest training (BUS-BRA's folds are patient-wise).
        vocabulary: device vocabulary (default: built-in, which knows BUS-BRA's four scanners).
        on_unknown_device: ``error`` | ``add`` | ``null`` for device names the vocabulary does not know.
        min_mask_iou: the CSV box must overlap the mask's bounding box at least this much (IoU).
        check_masks: read every mask to check boxes (about 2 s for 1,875 images).
        on_box_mismatch: what to do when the CSV box and the mask disagree (IoU below ``min_mask_iou``):
            ``mask`` (default) uses the mask's box, ``drop`` leaves the image out, ``error`` fails. Either
            way the row is recorded in ``data["load_report"]``.
        relative_to: folder the image paths are written relative to (the folder the datalist will be
            saved in); default: absolute paths.

    Boxes: the CSV's ``BBOX`` is ``[x, y, w, h]`` with 1-based pixel coordinates (MATLAB convention), so the
    box covers columns ``x-1 .. x+w-1``; it is normalised to ``[(x-1)/W, (y-1)/H, (x+w)/W, (y+h)/H]``.
    """
    root = Path(root)
    csv_path = root / "bus_data.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"BUS-BRA: {csv_path} not found; point root at the folder holding bus_data.csv")
    vocab = (vocabulary or default_vocabulary()).copy()
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    required = {"ID", "Case", "Pathology", "BIRADS", "Device", "Width", "Height", "BBOX"}
    missing = required - set(rows[0] if rows else ())
    if missing:
        raise DatalistError([f"bus_data.csv lacks columns {sorted(missing)}"], csv_path)

    fold_of: dict[str, int] = {}
    if fold is not None:
        with open(root / "5-fold-cv.csv", newline="") as fh:
            fold_of = {r["ID"]: int(r["kFold"]) for r in csv.DictReader(fh)}
        n_folds = max(fold_of.values())
        if not 1 <= fold <= n_folds:
            raise ValueError(f"BUS-BRA fold must be in 1..{n_folds}, got {fold}")

    patient_label: dict[str, str] = {}
    for r in rows:
        if r["Pathology"] == "malignant" or r["Case"] not in patient_label:
            patient_label[r["Case"]] = r["Pathology"]
    split_of_patient = patient_split(patient_label, fractions, seed) if fold is None else {}

    if on_box_mismatch not in ("mask", "drop", "error"):
        raise ValueError(f"on_box_mismatch must be 'mask', 'drop' or 'error', got {on_box_mismatch!r}")
    problems: list[str] = []
    report: dict[str, list[str]] = {"warnings": [], "rejected": []}
    unknown: dict[str, int] = {}
    items: list[dict] = []
    rel_base = Path(relative_to).resolve() if relative_to is not None else None
    for i, r in enumerate(rows):
        where = f"bus_data.csv row {i + 2} ({r['ID']})"
        img = root / "Images" / f"{r['ID']}.png"
        mask = root / "Masks" / f"mask_{r['ID'].removeprefix('bus_')}.png"
        if not img.is_file():
            problems.append(f"{where}: image {img} does not exist")
            continue
        pathology = r["Pathology"].strip().lower()
        if pathology not in ("benign", "malignant"):
            problems.append(f"{where}: unknown pathology {r['Pathology']!r}; BUS-BRA uses benign/malignant")
            continue
        try:
            device = resolve_device(r["Device"], vocab, on_unknown_device, unknown, where)
        except UnknownDeviceError as err:
            problems.append(str(err))
            continue
        w, h = _image_size(img)
        if (w, h) != (int(r["Width"]), int(r["Height"])):
            report["warnings"].append(f"{where}: CSV says {r['Width']}x{r['Height']} but the image is {w}x{h}; "
                                      "using the image size")
        try:
            x, y, bw, bh = (float(v) for v in json.loads(r["BBOX"]))
        except (ValueError, TypeError):
            problems.append(f"{where}: BBOX {r['BBOX']!r} is not [x, y, w, h]")
            continue
        box = [(x - 1) / w, (y - 1) / h, (x + bw) / w, (y + bh) / h]
        if not all(-1e-9 <= v <= 1 + 1e-9 for v in box) or bw <= 0 or bh <= 0:
            problems.append(f"{where}: box {r['BBOX']} lies outside the {w}x{h} image")
            continue
        box = [min(max(v, 0.0), 1.0) for v in box]
        if check_masks:
            if not mask.is_file():
                problems.append(f"{where}: mask {mask} does not exist")
                continue
            m = _read_mask(mask)
            if m.shape != (h, w):
                problems.append(f"{where}: mask is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}")
                continue
            mboxes = mask_to_boxes(m, per_component=False)
            iou = box_iou(box, mboxes[0]) if mboxes else 0.0
            if iou < min_mask_iou:
                msg = f"{where}: CSV box overlaps the mask's box with IoU {iou:.2f} < {min_mask_iou}"
                if on_box_mismatch == "error" or not mboxes:
                    problems.append(msg + " (pass on_box_mismatch='mask' to use the mask's box)")
                    continue
                if on_box_mismatch == "drop":
                    report["rejected"].append(msg + "; image left out")
                    continue
                report["warnings"].append(msg + "; using the mask's box")
                box = mboxes[0]
        if fold is None:
            split = split_of_patient[r["Case"]]
        else:
            k = fold_of[r["ID"]]
            split = "test" if k == fold else "validation" if k == (fold % max(fold_of.values())) + 1 else "training"

        def _path(p: Path) -> str:
            return os.path.relpath(p.resolve(), rel_base) if rel_base is not None else str(p.resolve())

        items.append({
            "image": _path(img),
            "mask": _path(mask),
            "pathology": pathology,
            "device": device,
            "birads": str(r["BIRADS"]).strip().lower(),
            "boxes": [box],
            "patient_id": pseudonym(r["Case"], "BB"),
            "study_id": pseudonym(r["Case"] + "/study", "BBS"),
            "split": split,
            "width": w,
            "height": h,
            # BUS-BRA's Side is the half of a dual-view screen capture (ids -l/-r) or "single", not the breast:
            # the breast's laterality is not in the data set, so it stays unknown
            "laterality": "",
            "capture_half": {"left": "left", "right": "right"}.get(str(r.get("Side", "")).strip().lower(), ""),
            "histology": r.get("Histology", ""),
            "provenance": {"source": "bus_bra", "file": img.name},
        })
    desc = ("BUS-BRA (Gomez-Flores et al., Med. Phys. 2023, doi 10.5281/zenodo.7730709); "
            f"patient-wise split, seed {seed}" + (f", fold {fold}" if fold else ""))
    data = _finish(items, "bus_bra", desc, ("benign", "malignant"), rel_base or root, vocab, problems, csv_path,
                   rejected=report["rejected"])
    data["load_report"] = report
    if unknown:
        data["unknown_devices"] = unknown
    return data


#: The BUSI layouts :func:`load_busi_folder` reads, for docs and error messages.
BUSI_LAYOUTS = (
    "<class>/<name>.png + <class>/<name>_mask.png [+ <name>_mask_1.png ...] (the original BUSI)",
    "<class>/images/<name>.png + <class>/masks/<name>[_mask].png (also image/, mask/; a common redistribution)",
)
_BUSI_CLASSES = ("benign", "malignant", "normal")
_IMAGE_DIRS = ("images", "image")
_MASK_DIRS = ("masks", "mask")
_MASK_STEM = re.compile(r"^(?P<base>.+?)_mask(?:_\d+)?$", re.IGNORECASE)


def _busi_class_files(cdir: Path, report: list[str]) -> tuple[list[Path], dict[str, list[Path]]]:
    """Images and masks (by image stem) of one BUSI class folder, in either layout (or both at once)."""
    images: list[Path] = []
    masks: dict[str, list[Path]] = defaultdict(list)
    subdirs = {d.name.lower(): d for d in cdir.iterdir() if d.is_dir() and not d.name.startswith(".")}
    image_dirs = [cdir] + [subdirs[n] for n in _IMAGE_DIRS if n in subdirs]
    mask_dirs = [subdirs[n] for n in _MASK_DIRS if n in subdirs]
    for name, d in sorted(subdirs.items()):
        if name not in _IMAGE_DIRS and name not in _MASK_DIRS:
            report.append(f"{cdir.name}/{d.name}/: ignored (not an images/ or masks/ folder)")
    for folder in image_dirs:
        for p in sorted(folder.iterdir()):
            if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            m = _MASK_STEM.match(p.stem)
            if m:
                masks[m.group("base")].append(p)
            else:
                images.append(p)
    for folder in mask_dirs:  # masks/ holds masks only: <name>.png or <name>_mask[_k].png
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                m = _MASK_STEM.match(p.stem)
                masks[m.group("base") if m else p.stem].append(p)
    return images, masks


def _no_busi_images(root: Path, class_dirs: Sequence[Path], n_masks: int = 0,
                    ignored: Sequence[str] = ()) -> EmptyDatalistError:
    seen = ", ".join(f"{d.name}/" for d in class_dirs) or "none"
    hint = f"; masks of {n_masks} name(s) without an image" if n_masks else ""
    if ignored:
        hint += f"; ignored subfolders: {', '.join(w.split(': ')[0] for w in ignored[:5])}"
    for d in class_dirs:  # pointed one level too high (e.g. at the folder holding Dataset_BUSI_with_GT/)?
        if {c.name.lower() for c in d.iterdir() if c.is_dir()} & set(_BUSI_CLASSES):
            hint += f"; {d.name}/ holds class folders: point at {d}"
            break
    if {d.name.lower() for d in class_dirs} & set(_IMAGE_DIRS + _MASK_DIRS):
        hint += f"; {root.name}/ looks like one class folder: point at the folder holding benign/, malignant/, normal/"
    layouts = " or ".join(BUSI_LAYOUTS)
    return EmptyDatalistError(f"BUSI folder {root}: found 0 images; looked for {layouts}, with class folders "
                              f"{'/, '.join(_BUSI_CLASSES)}/ (any case); folders found: {seen}{hint}")


def load_busi_folder(
    root: str | os.PathLike,
    *,
    device: str = UNKNOWN_DEVICE,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    vocabulary: DeviceVocabulary | None = None,
    relative_to: str | os.PathLike | None = None,
    min_pixels: int = 16,
) -> dict:
    """BUSI-style folder -> datalist.

    Accepted layouts (see :data:`BUSI_LAYOUTS`; both may be mixed, class by class):

    - the original BUSI (Al-Dhabyani et al., Data in Brief 2020): ``root/<class>/<name>.png`` with masks
      ``<name>_mask.png`` (and ``<name>_mask_1.png``, ... for more lesions) next to it;
    - the common redistribution ``root/<class>/images/<name>.png`` with masks in ``root/<class>/masks/``
      (or ``mask/``) named ``<name>.png`` or ``<name>_mask[_k].png``.

    Class folders are the pathology, matched case-insensitively (``benign``, ``malignant``, ``normal``; any other
    name is taken as a pathology and declared in the datalist's pathologies). Other subfolders of a class folder
    are ignored and listed in ``data["load_report"]["warnings"]``. Each image is its own patient (BUSI has no
    patient ids), so the split is per image; ids and splits do not depend on the layout. One box per connected
    lesion component over all masks of an image.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        EmptyDatalistError: no image found in any accepted layout (one line naming ``root`` and the layouts).
        DatalistError: a lesion image without a mask, a mask without an image, a mask of another size.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BUSI folder {root} does not exist")
    vocab = vocabulary or default_vocabulary()
    if device != UNKNOWN_DEVICE:
        device = vocab.lookup(device, "load_busi_folder(device=...)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    problems: list[str] = []
    report: dict[str, list[str]] = {"warnings": [], "rejected": []}
    records = []
    seen: dict[str, Path] = {}
    for cdir in class_dirs:
        pathology = cdir.name.strip().lower()
        images, masks_by_stem = _busi_class_files(cdir, report["warnings"])
        for img in images:
            key = f"{pathology}/{img.name}"
            if key in seen:
                problems.append(f"{img.relative_to(root).as_posix()}: same image name as "
                                f"{seen[key].relative_to(root).as_posix()}; keep one copy")
                continue
            seen[key] = img
            records.append((pathology, img, sorted(masks_by_stem.pop(img.stem, []))))
        for stem, orphan in sorted(masks_by_stem.items()):
            problems.append(f"{orphan[0].relative_to(root).as_posix()}: mask without an image {stem}.png")
    if not records:  # (problems then only lists masks without images)
        raise _no_busi_images(root, class_dirs, n_masks=len(problems), ignored=report["warnings"])
    # keyed by class/name (not the path) so the split is the same whatever the layout or location
    split_of = patient_split({f"{path}/{img.name}": path for path, img, _ in records}, fractions, seed)
    rel_base = Path(relative_to).resolve() if relative_to is not None else None
    rel = (lambda p: os.path.relpath(p.resolve(), rel_base)) if rel_base else (lambda p: str(p.resolve()))
    items = []
    for pathology, img, masks in records:
        where = img.relative_to(root).as_posix()
        w, h = _image_size(img)
        union = np.zeros((h, w), bool)
        for m in masks:
            arr = _read_mask(m)
            if arr.shape != (h, w):
                problems.append(f"{m.relative_to(root).as_posix()}: mask is {arr.shape[1]}x{arr.shape[0]}, "
                                f"image is {w}x{h}")
                continue
            union |= arr > 0
        boxes = mask_to_boxes(union, min_pixels=min_pixels)
        if pathology != "normal" and not boxes:
            problems.append(f"{where}: {pathology} image without a lesion mask")
            continue
        item = {
            "image": rel(img),
            "pathology": pathology,
            "device": device,
            "boxes": boxes,
            "patient_id": pseudonym(f"{pathology}/{img.name}", "BUSI"),
            "study_id": pseudonym(f"{pathology}/{img.name}/study", "BUSIS"),
            "split": split_of[f"{pathology}/{img.name}"],
            "width": w,
            "height": h,
            "provenance": {"source": "busi_folder", "file": where,
                           "masks": [m.relative_to(root).as_posix() for m in masks]},
        }
        if len(masks) == 1:
            item["mask"] = rel(masks[0])
        items.append(item)
    names = {d.name.strip().lower() for d in class_dirs}
    pathologies = sorted({it["pathology"] for it in items} | ({"benign", "malignant"} & names))
    data = _finish(items, root.name, f"BUSI-style folder {root.name}; split by image (no patient ids)",
                   pathologies, rel_base or root, vocab, problems, root)
    data["load_report"] = report
    return data


def _parse_box(text: str, w: int, h: int) -> list[list[float]]:
    """Boxes from a CSV cell: ``x1 y1 x2 y2`` (pixels or normalised); several separated by ``;``."""
    boxes = []
    for part in str(text).replace("[", " ").replace("]", " ").split(";"):
        vals = [float(v) for v in part.replace(",", " ").split()]
        if not vals:
            continue
        if len(vals) != 4:
            raise ValueError(f"box {part.strip()!r} needs 4 numbers x1 y1 x2 y2")
        if max(vals) > 1.0:
            vals = [vals[0] / w, vals[1] / h, vals[2] / w, vals[3] / h]
        boxes.append(vals)
    return boxes


def load_image_csv(
    csv_path: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    vocabulary: DeviceVocabulary | None = None,
    on_unknown_device: str = "error",
    pathologies: Iterable[str] | None = None,
    relative_to: str | os.PathLike | None = None,
) -> dict:
    """A folder of images described by a CSV -> datalist.

    Columns: ``image`` (path relative to ``image_dir``, default the CSV's folder), ``pathology``,
    optional ``device``, ``birads``, ``patient_id`` (default: the image name), ``study_id``, ``split``
    (default: a patient-wise split), ``boxes`` (``x1 y1 x2 y2`` in pixels or normalised; ``;`` between
    boxes), ``mask`` (boxes derived from it when ``boxes`` is empty).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV {csv_path} does not exist")
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    vocab = (vocabulary or default_vocabulary()).copy()
    allowed = set(pathologies) if pathologies is not None else set(BUILTIN_PATHOLOGIES)
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DatalistError(["the CSV has no rows"], csv_path)
    if not {"image", "pathology"} <= set(rows[0]):
        raise DatalistError([f"the CSV needs columns 'image' and 'pathology'; it has {list(rows[0])}"], csv_path)
    problems: list[str] = []
    unknown: dict[str, int] = {}
    staged = []
    for i, r in enumerate(rows):
        where = f"{csv_path.name} row {i + 2} ({r['image']})"
        img = image_dir / r["image"]
        if not img.is_file():
            problems.append(f"{where}: image {img} does not exist")
            continue
        pathology = r["pathology"].strip().lower()
        if pathology not in allowed:
            problems.append(f"{where}: unknown pathology {r['pathology']!r}; allowed {sorted(allowed)} "
                            "(pass pathologies=[...] / --pathologies to declare more)")
            continue
        try:
            device = resolve_device((r.get("device") or "").strip(), vocab, on_unknown_device, unknown, where) \
                if (r.get("device") or "").strip() else UNKNOWN_DEVICE
        except UnknownDeviceError as err:
            problems.append(str(err))
            continue
        w, h = _image_size(img)
        try:
            boxes = _parse_box(r.get("boxes") or "", w, h)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        mask = image_dir / r["mask"] if r.get("mask") else None
        if mask is not None and not mask.is_file():
            problems.append(f"{where}: mask {mask} does not exist")
            continue
        if not boxes and mask is not None:
            boxes = mask_to_boxes(_read_mask(mask))
        for b in boxes:
            if not (all(0 <= v <= 1 for v in b) and b[0] < b[2] and b[1] < b[3]):
                problems.append(f"{where}: box {b} lies outside the {w}x{h} image or is inverted")
        staged.append((r, img, mask, pathology, device, boxes, w, h))
    patients = {(r.get("patient_id") or Path(r["image"]).stem): p for r, _, _, p, *_ in staged}
    split_of = patient_split(patients, fractions, seed)
    rel_base = Path(relative_to).resolve() if relative_to is not None else None
    rel = (lambda p: os.path.relpath(p.resolve(), rel_base)) if rel_base else (lambda p: str(p.resolve()))
    items = []
    for r, img, mask, pathology, device, boxes, w, h in staged:
        pid_raw = r.get("patient_id") or Path(r["image"]).stem
        item = {
            "image": rel(img),
            "pathology": pathology,
            "device": device,
            "boxes": boxes,
            "patient_id": pseudonym(pid_raw, "CSV"),
            "study_id": pseudonym(r.get("study_id") or f"{pid_raw}/study", "CSVS"),
            "split": (r.get("split") or "").strip() or split_of[pid_raw],
            "width": w,
            "height": h,
            "provenance": {"source": "image_csv", "file": r["image"]},
        }
        if r.get("birads"):
            item["birads"] = str(r["birads"]).strip().lower()
        if mask is not None:
            item["mask"] = rel(mask)
        items.append(item)
    data = _finish(items, csv_path.stem, f"images listed in {csv_path.name}", sorted(allowed & {i["pathology"] for i in items}) or sorted(allowed),
                   rel_base or image_dir, vocab, problems, csv_path)
    if unknown:
        data["unknown_devices"] = unknown
    return data
