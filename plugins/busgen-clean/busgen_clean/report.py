"""Clean a generated datalist into a folder: kept datalist, rejects (JSON + CSV), summary and a grid of
the rejected images with their reasons.

Outputs in ``out_dir``::

    datalist.json      kept items (image/mask paths rewritten relative to out_dir), same splits
    rejects.json       rejected items with reject_reason, reject_score, reject_checks, clean_scores
    rejects.csv        one row per rejected item: image, label, device, split, checks, score, reason
    summary.json       counts (total / per class / per device / per check), thresholds and how they were chosen
    rejects_grid.png   up to ``grid_size`` rejected images captioned with label and failed checks
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from busgen_monai.data.schema import atomic_write_text, iter_items, load_datalist, make_datalist, save_datalist

__all__ = ["clean_datalist", "rewrite_paths"]


def rewrite_paths(item: Mapping, src_dir: Path, dst_dir: Path) -> dict:
    """Make ``image``/``mask`` paths of ``item`` (relative to ``src_dir``) relative to ``dst_dir``."""
    out = dict(item)
    for key in ("image", "mask"):
        v = out.get(key)
        if isinstance(v, str) and v:
            p = Path(v) if os.path.isabs(v) else (src_dir / v)
            out[key] = os.path.relpath(p.resolve(), dst_dir.resolve())
    return out


def _counts(items: Sequence[Mapping], key: str) -> dict[str, int]:
    return dict(sorted(Counter(str(it.get(key))for it in items).items()))


def clean_datalist(
    generated: str | os.PathLike,
    out_dir: str | os.PathLike,
    judge: Any = None,
    *,
    threshold: float | None = None,
    target_precision: float | None = None,
    validation: str | os.PathLike | Mapping | None = None,
    checks: str | Sequence[str] = ("label",),
    grid_size: int = 32,
    cleaning_filter: Any = None,
    **filter_kwargs: Any,
) -> dict[str, Any]:
    """Run the cleaning filter over every split of a generated datalist and write the outputs listed in the
    module docstring. Returns the summary.

    Args:
        generated: the generated datalist (e.g. ``busgen_sample``'s ``datalist.json``).
        out_dir: output folder.
        judge: a :class:`~busgen_clean.judge.Judge` or its folder.
        threshold: label threshold (default 0.5 unless ``target_precision`` is given).
        target_precision, validation: choose the threshold for this precision on real validation data.
        checks: filter checks (see :class:`~busgen_clean.filter.CleaningFilter`).
        grid_size: rejected images shown in ``rejects_grid.png``.
        cleaning_filter: an already built filter (then ``judge``/``threshold``/``checks`` are ignored).
        filter_kwargs: more :class:`~busgen_clean.filter.CleaningFilter` arguments.
    """
    from .filter import CleaningFilter

    src = Path(generated).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_datalist(src, check_files=False)
    items = [dict(it) for _, _, it in iter_items(data)]
    if not items:
        raise ValueError(f"{src} has no items to clean")
    if cleaning_filter is None:
        if target_precision is not None and threshold is not None:
            raise ValueError("give either threshold or target_precision (with validation), not both")
        cleaning_filter = CleaningFilter(judge, 0.5 if threshold is None else threshold, checks,
                                         target_precision=target_precision, validation=validation, **filter_kwargs)
    kept, rejected = cleaning_filter(items, src.parent)
    kept = [rewrite_paths(it, src.parent, out) for it in kept]
    rejected = [rewrite_paths(it, src.parent, out) for it in rejected]

    clean = make_datalist(kept, name=f"{data.get('name', src.parent.name)}_clean",
                          description=f"{data.get('description', '')} | cleaned by busgen_clean".strip(" |"),
                          pathologies=data.get("pathologies"))
    if data.get("devices"):
        clean["devices"] = list(data["devices"])
    save_datalist(clean, out / "datalist.json")
    atomic_write_text(out / "rejects.json", json.dumps(rejected, indent=1, default=float))
    label_key = cleaning_filter.judge.label_key if cleaning_filter.needs_judge else "pathology"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", label_key, "device", "split", "checks", "reject_score", "label_prob", "reject_reason"])
    for r in rejected:
        w.writerow([r["image"], r.get(label_key), r.get("device"), r.get("split"), "|".join(r["reject_checks"]),
                    f"{r['reject_score']:.6g}", r["clean_scores"].get("label_prob"), r["reject_reason"]])
    atomic_write_text(out / "rejects.csv", buf.getvalue())

    per_class = {c: {"kept": _counts(kept, label_key).get(c, 0), "rejected": _counts(rejected, label_key).get(c, 0)}
                 for c in sorted(set(_counts(items, label_key)))}
    per_device = {d: {"kept": _counts(kept, "device").get(d, 0), "rejected": _counts(rejected, "device").get(d, 0)}
                  for d in sorted(set(_counts(items, "device")))}
    summary = {
        "generated": str(src), "total": len(items), "kept": len(kept), "rejected": len(rejected),
        "rejected_fraction": len(rejected) / len(items), "label_key": label_key,
        "per_class": per_class, "per_device": per_device,
        "failed_by_check": cleaning_filter.last_stats.get("failed_by_check", {}),
        "unjudged": cleaning_filter.last_stats.get("unjudged", 0),
        "settings": cleaning_filter.settings(),
        "judge": (repr(cleaning_filter.judge) if cleaning_filter.needs_judge else None),
        "outputs": ["datalist.json", "rejects.json", "rejects.csv", "summary.json"],
    }
    if rejected and grid_size > 0:
        from busgen_monai.data.io import read_image_rgb
        from busgen_monai.visualize import save_image_grid

        show = rejected[:grid_size]
        save_image_grid([read_image_rgb(out / r["image"]) for r in show], out / "rejects_grid.png",
                        labels=[f"{r.get(label_key)}: {','.join(r['reject_checks'])} {r['reject_score']:.2f}"
                                for r in show],
                        boxes=[r.get("boxes") or [] for r in show],
                        title=f"rejected {len(rejected)}/{len(items)} (label: failed checks, score)")
        summary["outputs"].append("rejects_grid.png")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=float))
    return summary
