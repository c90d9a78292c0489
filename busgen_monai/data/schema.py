"""The datalist contract: schema, validation, loading and atomic saving.

The datalist is the one contract between busgen-monai stages (see ``docs/datalist.md``). It is a
MONAI-style JSON file with ``training`` / ``validation`` / ``test`` lists that
``monai.data.load_decathlon_datalist`` can read, plus per-item conditioning labels (pathology, device,
BI-RADS, normalised lesion boxes), pseudonymous ids and provenance.

Validation collects every problem and raises one :class:`DatalistError` whose message names each bad
item (split, index and image path) and says how to fix it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from busgen_monai.utils.io import atomic_write_bytes, atomic_write_text  # noqa: F401 - re-exported
from .devices import NULL_DEVICE, UNKNOWN_DEVICE, DeviceVocabulary, default_vocabulary

__all__ = [
    "SCHEMA_VERSION",
    "SPLITS",
    "BUILTIN_PATHOLOGIES",
    "BIRADS_VALUES",
    "ITEM_SCHEMA",
    "DATALIST_SCHEMA",
    "DatalistError",
    "EmptyDatalistError",
    "validate_item",
    "validate_datalist",
    "load_datalist",
    "save_datalist",
    "as_datalist_list",
    "split_names",
    "read_datalist_source",
    "make_datalist",
    "iter_items",
    "summarize_datalist",
    "pathology_ids",
    "atomic_write_text",
    "atomic_write_bytes",
]

SCHEMA_VERSION = 1
SPLITS = ("training", "validation", "test")
BUILTIN_PATHOLOGIES = ("normal", "benign", "malignant", "dcis")
BIRADS_VALUES = ("0", "1", "2", "3", "4", "4a", "4b", "4c", "5", "6")

_BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}

ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image", "pathology", "device", "boxes", "patient_id", "study_id", "split", "provenance"],
    "properties": {
        "image": {"type": "string", "minLength": 1},
        "mask": {"type": ["string", "null"]},
        "pathology": {"type": "string", "minLength": 1},
        "device": {"type": "string", "minLength": 1},
        "birads": {"type": ["string", "null"]},
        "boxes": {"type": "array", "items": _BOX},
        "patient_id": {"type": "string", "minLength": 1},
        "study_id": {"type": "string", "minLength": 1},
        "split": {"enum": list(SPLITS)},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "provenance": {"type": "object", "required": ["source"]},
    },
}

DATALIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "pathologies": {"type": "array", "items": {"type": "string"}},
        "devices": {"type": "array", "items": {"type": "string"}},
        **{split: {"type": "array", "items": {"type": "object"}} for split in SPLITS},
    },
}


class DatalistError(ValueError):
    """A datalist (or one of its items) breaks the contract. ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[str], source: str | os.PathLike | None = None):
        self.problems = list(problems)
        head = f"invalid datalist {source}" if source else "invalid datalist"
        shown = self.problems[:20]
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"{head}: {len(self.problems)} problem(s)\n  " + "\n  ".join(shown) + more)


class EmptyDatalistError(DatalistError):
    """A datalist (or a loader's result) with no items at all. Its message is one line: what was empty and why."""

    def __init__(self, message: str, source: str | os.PathLike | None = None):
        self.problems = [message]
        ValueError.__init__(self, f"empty datalist {source}: {message}" if source else f"empty datalist: {message}")


def _item_label(item: Mapping, split: str | None, index: int | None) -> str:
    where = f"{split}[{index}]" if split is not None and index is not None else "item"
    return f"{where} ({item.get('image', '<no image>')!s})" if isinstance(item, Mapping) else where


def validate_item(
    item: Mapping,
    *,
    base_dir: str | os.PathLike | None = None,
    pathologies: Iterable[str] = BUILTIN_PATHOLOGIES,
    vocabulary: DeviceVocabulary | None = None,
    check_files: bool = True,
    split: str | None = None,
    index: int | None = None,
) -> list[str]:
    """Check one datalist item and return a list of problems (empty when valid).

    Args:
        item: the datalist item.
        base_dir: folder that relative ``image``/``mask`` paths are relative to (the datalist's folder).
        pathologies: allowed pathology values.
        vocabulary: device vocabulary (default: built-in); ``unknown`` is always allowed.
        check_files: also check that ``image`` and ``mask`` exist.
        split, index: where the item is, for messages.
    """
    label = _item_label(item, split, index)
    problems: list[str] = []
    if not isinstance(item, Mapping):
        return [f"{label}: expected a JSON object, got {type(item).__name__}"]
    for err in jsonschema.Draft7Validator(ITEM_SCHEMA).iter_errors(item):
        path = ".".join(str(p) for p in err.absolute_path) or "(item)"
        problems.append(f"{label}: key '{path}': {err.message}")
    if problems:
        return problems
    allowed = set(pathologies)
    if item["pathology"] not in allowed:
        problems.append(
            f"{label}: unknown pathology {item['pathology']!r}; allowed: {sorted(allowed)} "
            "(declare extra values in the datalist's 'pathologies' list)"
        )
    vocab = vocabulary or default_vocabulary()
    if item["device"] not in (UNKNOWN_DEVICE, NULL_DEVICE) and item["device"] not in vocab.names:
        found = vocab.find(item["device"])
        hint = f" (did you mean the canonical name {found!r}?)" if found else " (add it with a device vocabulary file)"
        problems.append(f"{label}: device {item['device']!r} is not a canonical device name{hint}")
    birads = item.get("birads")
    if birads is not None and str(birads).lower() not in BIRADS_VALUES:
        problems.append(f"{label}: BI-RADS {birads!r} is not one of {list(BIRADS_VALUES)}")
    if split is not None and item["split"] != split:
        problems.append(f"{label}: item says split {item['split']!r} but is listed under {split!r}")
    for b, box in enumerate(item["boxes"]):
        x1, y1, x2, y2 = box
        if not all(0.0 <= v <= 1.0 for v in box):
            problems.append(
                f"{label}: box {b} {list(box)} lies outside the image; boxes are normalised x1,y1,x2,y2 in [0, 1]"
            )
        elif not (x1 < x2 and y1 < y2):
            problems.append(f"{label}: box {b} {list(box)} is empty or inverted; need x1 < x2 and y1 < y2")
    if check_files:
        for key in ("image", "mask"):
            rel = item.get(key)
            if not rel:
                continue
            path = Path(rel) if base_dir is None or os.path.isabs(rel) else Path(base_dir) / rel
            if not path.is_file():
                problems.append(f"{label}: {key} file {path} does not exist")
    return problems


def iter_items(datalist: Mapping) -> Iterable[tuple[str, int, dict]]:
    """Yield ``(split, index, item)`` over all split lists of a datalist."""
    for split in SPLITS:
        for i, item in enumerate(datalist.get(split) or []):
            yield split, i, item


def validate_datalist(
    datalist: Mapping,
    *,
    base_dir: str | os.PathLike | None = None,
    vocabulary: DeviceVocabulary | None = None,
    check_files: bool = True,
    source: str | os.PathLike | None = None,
    allow_empty: bool = True,
) -> None:
    """Validate a whole datalist; raise one :class:`DatalistError` listing every problem.

    Besides per-item checks, it checks that no patient appears in two splits. With ``allow_empty=False`` a
    datalist without a single item (all splits empty or absent) raises :class:`EmptyDatalistError` (one line);
    ``busgen datalist validate`` and the loaders refuse empty datalists this way.
    """
    problems: list[str] = []
    for err in jsonschema.Draft7Validator(DATALIST_SCHEMA).iter_errors(datalist):
        path = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if path == "schema_version" or "schema_version" in err.message:
            problems.append(f"key 'schema_version': {err.message} (this busgen-monai reads schema version {SCHEMA_VERSION})")
        else:
            problems.append(f"key '{path}': {err.message}")
    if problems:
        raise DatalistError(problems, source)
    if not allow_empty and not any(datalist.get(split) for split in SPLITS):
        raise EmptyDatalistError(f"no items in {'/'.join(SPLITS)}; a datalist needs at least one item "
                                 "(rebuild it with `busgen datalist build` and check its source folder)", source)
    pathologies = set(BUILTIN_PATHOLOGIES) | set(datalist.get("pathologies") or [])
    vocab = vocabulary or default_vocabulary()
    extra_devices = [d for d in datalist.get("devices") or [] if d not in vocab.names and d not in (UNKNOWN_DEVICE, NULL_DEVICE)]
    if extra_devices:
        vocab = vocab.copy()
        for name in extra_devices:
            found = vocab.find(name)
            if found is None:
                vocab.add(name)
    patient_splits: dict[str, set[str]] = {}
    for split, i, item in iter_items(datalist):
        problems += validate_item(item, base_dir=base_dir, pathologies=pathologies, vocabulary=vocab,
                                  check_files=check_files, split=split, index=i)
        if isinstance(item, Mapping) and "patient_id" in item:
            patient_splits.setdefault(str(item["patient_id"]), set()).add(split)
    leaks = {p: s for p, s in patient_splits.items() if len(s) > 1}
    for patient, splits in sorted(leaks.items())[:20]:
        problems.append(f"patient {patient!r} appears in several splits {sorted(splits)}; split by patient, never by image")
    if problems:
        raise DatalistError(problems, source)


def load_datalist(
    path: str | os.PathLike,
    *,
    validate: bool = True,
    check_files: bool = True,
    vocabulary: DeviceVocabulary | None = None,
    allow_empty: bool = True,
) -> dict:
    """Read a datalist JSON file, validate it, and return it with a ``base_dir`` entry (its folder).

    ``allow_empty=False`` refuses a datalist with no items (:class:`EmptyDatalistError`, one line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatalistError([f"not valid JSON: {err}"], path) from err
    if validate:
        validate_datalist(data, base_dir=path.parent, vocabulary=vocabulary, check_files=check_files, source=path,
                          allow_empty=allow_empty)
    data["base_dir"] = str(path.parent.resolve())
    return data


def save_datalist(datalist: Mapping, path: str | os.PathLike, *, validate: bool = True,
                  vocabulary: DeviceVocabulary | None = None) -> Path:
    """Validate (files relative to ``path``'s folder) and write a datalist atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # relative paths with '..' only resolve through existing folders
    data = {k: v for k, v in datalist.items() if k != "base_dir"}
    if validate:
        validate_datalist(data, base_dir=path.parent, vocabulary=vocabulary, source=path)
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def make_datalist(items: Iterable[Mapping], *, name: str, description: str = "",
                  pathologies: Iterable[str] | None = None) -> dict:
    """Group items by their ``split`` into a datalist dict (pathologies/devices lists filled in)."""
    items = list(items)
    data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "name": name, "description": description}
    used_pathologies = sorted({it["pathology"] for it in items})
    data["pathologies"] = list(pathologies) if pathologies is not None else used_pathologies
    data["devices"] = sorted({it["device"] for it in items})
    for split in SPLITS:
        data[split] = [dict(it) for it in items if it["split"] == split]
    return data


def pathology_ids(pathologies: Sequence[str]) -> dict[str, int]:
    """Pathology name -> integer id used by networks: 0 is null (unconditional), then 1, 2, ... in order."""
    return {name: i + 1 for i, name in enumerate(pathologies)}


def summarize_datalist(datalist: Mapping) -> dict:
    """Counts per split, pathology, device and BI-RADS, patients, and boxes per item."""
    summary: dict[str, Any] = {"name": datalist.get("name", ""), "splits": {}}
    totals: dict[str, Counter] = {"pathology": Counter(), "device": Counter(), "birads": Counter()}
    n_boxes = Counter()
    for split in SPLITS:
        items = datalist.get(split) or []
        summary["splits"][split] = {
            "items": len(items),
            "patients": len({it.get("patient_id") for it in items}),
            "pathology": dict(Counter(it.get("pathology") for it in items)),
        }
        for it in items:
            totals["pathology"][it.get("pathology")] += 1
            totals["device"][it.get("device")] += 1
            totals["birads"][str(it.get("birads"))] += 1
            n_boxes[len(it.get("boxes") or [])] += 1
    summary["items"] = sum(s["items"] for s in summary["splits"].values())
    summary.update({k: dict(sorted(v.items(), key=lambda kv: str(kv[0]))) for k, v in totals.items()})
    summary["boxes_per_item"] = {str(k): v for k, v in sorted(n_boxes.items())}
    return summary


# ---------------------------------------------------------------------------------------------- for stage code
def as_datalist_list(value: Any) -> list:
    """One datalist (path or dict) or several -> a list (``None`` -> ``[]``): the ``datalists`` argument of
    downstream bundles takes either."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike, Mapping)):
        return [value]
    return list(value)


def split_names(split: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"test"``, ``["training", "validation"]``, ``"all"`` or ``None`` (all) -> split names, checked."""
    if split is None or split == "all":
        return SPLITS
    names = (split,) if isinstance(split, str) else tuple(split)
    bad = [s for s in names if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; use one or more of {list(SPLITS)} or 'all'")
    return names


def read_datalist_source(datalist: str | os.PathLike | Mapping, validate: bool = True) -> tuple[dict, Path, str]:
    """``(datalist dict, base folder, name)`` from a datalist file (loaded and, with ``validate``, checked with its
    files) or an in-memory datalist dict (its ``base_dir``, default the working folder)."""
    if isinstance(datalist, Mapping):
        data = dict(datalist)
        return data, Path(data.get("base_dir", ".")), str(data.get("name", "datalist"))
    path = Path(datalist)
    data = load_datalist(path, validate=validate, check_files=validate)
    return data, Path(data["base_dir"]), str(data.get("name") or path.stem)
