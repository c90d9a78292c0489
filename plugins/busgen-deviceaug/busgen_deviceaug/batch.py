"""``busgen device-augment DATALIST BANK OUT``: the device-augmented copy of a whole datalist.

Every image of the chosen splits is translated into every target style of the bank (its own device is
skipped unless ``--include-same-device``) and written as a PNG under ``OUT/images/``; ``OUT/datalist.json``
lists the translated items with the same boxes, mask, labels, patient/study ids and split as their original,
``device`` = the target, ``device_translated_from`` = the original device and provenance::

    {"source": "device_cyclegan", "target_device": ..., "generator_sha256": ...,
     "translated_from": {"image": <original, relative to OUT>, "device": ..., "split": ..., "index": ...,
                         "provenance": <original provenance>}}

``--include-originals`` also lists the original items (paths made relative to OUT), giving a ready-to-train
augmented datalist. The job is resumable (existing output PNGs are kept, ``--force`` rewrites them), shows a
progress bar, and records unreadable images in ``OUT/rejects.json`` instead of stopping.

Images are translated at the translator's training size and resized back to their own size, so boxes and
masks stay valid.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.utils.io import atomic_save_png

__all__ = ["augment_datalist", "main"]


def _rel(path: str | os.PathLike, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), start.resolve())


def augment_datalist(
    datalist: str | os.PathLike,
    bank: Any,
    out_dir: str | os.PathLike,
    targets: Sequence[str] | None = None,
    splits: Sequence[str] = ("training", "validation", "test"),
    include_same_device: bool = False,
    include_originals: bool = False,
    force: bool = False,
    torch_device: str = "cpu",
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the device-augmented copy of ``datalist`` (see the module docstring).

    Args:
        datalist: the input datalist JSON.
        bank: a :class:`~busgen_deviceaug.bank.TranslatorBank` or its folder.
        out_dir: output folder (``images/``, ``datalist.json``, ``rejects.json``).
        targets: target devices (default: every device of the bank).
        splits: splits to augment.
        include_same_device: also "translate" images already of a target device.
        include_originals: list the original items in the output datalist too.
        force: rewrite existing output images.
        torch_device: where the generators run.
        limit: only the first ``limit`` items (quick looks).
        progress: show a tqdm progress bar.

    Returns:
        a report: ``{"datalist": path, "written": n, "skipped_existing": n, "rejected": n, "items": n}``.
    """
    import torch
    from tqdm.auto import tqdm

    from busgen_monai.data.io import read_image_rgb
    from busgen_monai.data.schema import atomic_write_text, iter_items, load_datalist, make_datalist, save_datalist

    from .bank import TranslatorBank, safe_name

    bank = bank if isinstance(bank, TranslatorBank) else TranslatorBank(bank)
    targets = list(targets) if targets else bank.devices
    missing = [t for t in targets if t not in bank]
    if missing:
        raise ValueError(f"target device(s) {missing} not in bank {bank.root}; it has {bank.devices}")
    src_path = Path(datalist).resolve()
    data = load_datalist(src_path, check_files=False)
    base = Path(data["base_dir"])
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    hashes = {t: bank.generator_hash(t) for t in targets}

    work = [(s, i, it) for s, i, it in iter_items(data) if s in splits]
    if limit is not None:
        work = work[: int(limit)]
    total = sum(sum(1 for t in targets if include_same_device or t != it.get("device")) for _, _, it in work)
    new_items: list[dict] = []
    rejects: list[dict] = []
    written = skipped = 0
    bar = tqdm(total=total, desc="device-augment", unit="img", disable=not progress)
    for split, index, item in work:
        src_img = Path(item["image"]) if os.path.isabs(item["image"]) else base / item["image"]
        src_mask = None
        if item.get("mask"):
            src_mask = Path(item["mask"]) if os.path.isabs(item["mask"]) else base / item["mask"]
        jobs = [t for t in targets if include_same_device or t != item.get("device")]
        if not src_img.is_file():
            rejects.append({"split": split, "index": index, "image": str(item["image"]), "target": None,
                            "reason": f"image {src_img} does not exist"})
            bar.update(len(jobs))
            continue
        if include_originals:
            orig = dict(item, image=_rel(src_img, out))
            if src_mask is not None:
                orig["mask"] = _rel(src_mask, out)
            new_items.append(orig)
        x = None
        stem = f"{split}_{index:06d}_{safe_name(Path(item['image']).stem)}"
        for target in jobs:
            rel = Path("images") / safe_name(target) / f"{stem}.png"
            dst = out / rel
            try:
                if force or not dst.is_file():
                    if x is None:
                        rgb = read_image_rgb(src_img)
                        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1.0
                    y = bank.translate(x, target, torch_device=torch_device)[0]
                    arr = ((y.cpu().numpy().transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
                    if not bank.is_color(target):
                        arr = arr[..., 0]
                    atomic_save_png(arr, dst)
                    written += 1
                else:
                    skipped += 1
            except (OSError, ValueError) as err:
                rejects.append({"split": split, "index": index, "image": str(item["image"]), "target": target,
                                "reason": f"{type(err).__name__}: {err}"})
                bar.update(1)
                continue
            new = dict(item)
            new.update({
                "image": rel.as_posix(),
                "device": target,
                "device_translated_from": item.get("device", "unknown"),
                "provenance": {
                    "source": "device_cyclegan",
                    "target_device": target,
                    "generator_sha256": hashes[target],
                    "bank": bank.root.name,
                    "translated_from": {"image": _rel(src_img, out), "device": item.get("device", "unknown"),
                                        "split": split, "index": index, "provenance": item.get("provenance", {})},
                },
            })
            if src_mask is not None:
                new["mask"] = _rel(src_mask, out)
            new_items.append(new)
            bar.update(1)
    bar.close()
    out_data = make_datalist(new_items, name=f"{data.get('name', 'datalist')}_device_augmented",
                             description=f"device-augmented copy of {src_path.name} with translators to "
                             f"{', '.join(targets)} (busgen-deviceaug)",
                             pathologies=data.get("pathologies"))
    out_path = save_datalist(out_data, out / "datalist.json")
    atomic_write_text(out / "rejects.json", json.dumps(rejects, indent=1) + "\n")
    return {"datalist": str(out_path), "written": written, "skipped_existing": skipped, "rejected": len(rejects),
            "items": len(new_items)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="busgen device-augment",
        description="Write the device-augmented copy of a datalist: each image in every target style of the "
        "translator bank, as PNGs + a new datalist (same boxes/labels, device = target, provenance). Resumable.")
    p.add_argument("datalist", help="input datalist JSON")
    p.add_argument("bank", help="translator bank folder (bank.json), from `busgen device-bank`")
    p.add_argument("out", help="output folder")
    p.add_argument("--targets", default=None, help="comma list of target devices (default: all in the bank)")
    p.add_argument("--splits", default="training,validation,test", help="splits to augment (default: all)")
    p.add_argument("--include-same-device", action="store_true", help="also translate images already of a target")
    p.add_argument("--include-originals", action="store_true", help="list the original items in the output too")
    p.add_argument("--force", action="store_true", help="rewrite existing output images")
    p.add_argument("--torch-device", default="cpu", help="torch device for the generators (default cpu)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    report = augment_datalist(args.datalist, args.bank, args.out,
                              targets=args.targets.split(",") if args.targets else None,
                              splits=[s.strip() for s in args.splits.split(",") if s.strip()],
                              include_same_device=args.include_same_device, include_originals=args.include_originals,
                              force=args.force, torch_device=args.torch_device, limit=args.limit,
                              progress=not args.no_progress)
    print(json.dumps(report, indent=1))
    return 0
