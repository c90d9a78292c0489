"""Build a reader study from a real and a generated datalist.

The study folder holds everything the server and the analysis need, and nothing a reader may see except the
images themselves::

    study/
      study.json        manifest (server side only): items with their truth and labels, reader codes, admin code,
                        each reader's image order, settings and where each image came from
      images/<id>.png   de-identified copies: opaque random id, grey 8-bit PNG re-encoded from pixels only
                        (no text/time/colour-profile chunks), same size and crop for both sides
      reader_codes.csv  reader name -> code, for the study coordinator to hand out (keep it private)

Why the images are re-made rather than copied: a file name (``bus_0001-l.png``, ``gen_0000007.png``), PNG text
chunks, a different size, bit depth or colour mode would each tell a reader (or the browser's "save image")
which side an image came from. Every image is read to pixels, converted to grey, cropped to the square window
the generator was trained on (the largest square centred on the lesion boxes, as the pretrain bundle's
validation preprocessing does) and resized with area averaging to one common size (default: the generated
images' size), then written without metadata.

Balanced and seeded: the same number of images is drawn from each side (pathologies balanced within a side
where the data allow), ids are random tokens drawn from the seed, and each reader sees all images in an order
of their own (seeded per reader).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import random
import secrets
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.utils.io import atomic_save_png, atomic_write_json, atomic_write_text

__all__ = ["build_study", "load_study", "square_window", "StudyError", "main"]

logger = logging.getLogger(__name__)
STUDY_VERSION = 1


class StudyError(ValueError):
    """A study folder or a build request that cannot work; the message names the file/option and the fix."""


def _items(datalist_path: Path, splits: Sequence[str] | None) -> list[dict]:
    from busgen_monai.data.schema import SPLITS, load_datalist

    data = load_datalist(datalist_path, check_files=False)
    base = Path(data["base_dir"])
    chosen = list(splits) if splits else [s for s in SPLITS if data.get(s)]
    out = []
    for split in chosen:
        for index, item in enumerate(data.get(split) or []):
            out.append({**item, "_path": str((base / item["image"]).resolve()), "_split": split, "_index": index})
    if not out:
        raise StudyError(f"{datalist_path}: no items in split(s) {chosen}; pick splits that hold images (--real-splits)")
    return out


def _draw(items: list[dict], n: int, rng: random.Random) -> list[dict]:
    """``n`` items, as balanced over pathology as the data allow (round robin over shuffled pathology groups)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        groups[str(it.get("pathology"))].append(it)
    for key in sorted(groups):
        rng.shuffle(groups[key])
    keys = sorted(groups)
    chosen: list[dict] = []
    while len(chosen) < n and any(groups[k] for k in keys):
        for k in keys:
            if groups[k] and len(chosen) < n:
                chosen.append(groups[k].pop())
    return chosen


def square_window(height: int, width: int, boxes: Any) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of the largest square that holds every (normalised ``[x1, y1, x2, y2]``) box, centred
    between its extreme positions: the window of the pretrain bundle's validation preprocessing
    (``busgen_monai.data.transforms.box_preserving_window(h, w, boxes, scale=1, position=(0.5, 0.5),
    min_scale=1)``, which the tests use as the oracle). Restated here so that building a study does not import
    torch (about 15 s on a busy machine)."""
    arr = np.asarray(boxes if boxes is not None else [], dtype=np.float64).reshape(-1, 4)
    smax = min(height, width)
    u = None
    need = 0
    if len(arr):
        ux1, uy1 = math.floor(arr[:, 0].min() * width + 1e-6), math.floor(arr[:, 1].min() * height + 1e-6)
        ux2, uy2 = math.ceil(arr[:, 2].max() * width - 1e-6), math.ceil(arr[:, 3].max() * height - 1e-6)
        need = max(ux2 - ux1, uy2 - uy1, 1)
        u = (ux1, uy1, ux2, uy2)
    side = max(need, smax, 1)

    def axis(extent: int, u1: int | None, u2: int | None) -> int:
        lo, hi = min(0, extent - side), max(0, extent - side)
        if u1 is not None:
            lo, hi = max(u2 - side, lo), min(u1, hi)
        if lo > hi:
            lo = hi = int(round((u1 + u2 - side) / 2))
        return int(round(lo + 0.5 * (hi - lo)))

    if u is None:
        return axis(width, None, None), axis(height, None, None), side
    return axis(width, u[0], u[2]), axis(height, u[1], u[3]), side


def _harmonise(path: str, boxes: Any, size: int | None) -> np.ndarray:
    """Grey uint8 array: the square window around the lesion boxes, area-resized to ``size`` x ``size``."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        grey = np.asarray(im.convert("L"))
    if size is None:
        return grey
    h, w = grey.shape
    x0, y0, side = square_window(h, w, boxes)
    canvas = np.zeros((side, side), dtype=np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = grey[sy0:sy1, sx0:sx1]
    out = Image.fromarray(canvas).resize((size, size), Image.Resampling.BOX) if side != size else Image.fromarray(canvas)
    return np.asarray(out)


def _default_size(generated: list[dict]) -> int:
    from PIL import Image

    sizes = set()
    for it in generated[:32]:
        with Image.open(it["_path"]) as im:
            sizes.add(im.size)
    sq = sorted({min(s) for s in sizes})
    return sq[0]


def _reader_names(readers: int | Sequence[str]) -> list[str]:
    if isinstance(readers, int):
        if readers < 1:
            raise StudyError(f"--readers must be >= 1; got {readers}")
        return [f"reader{i + 1:02d}" for i in range(readers)]
    names = [str(r).strip() for r in readers if str(r).strip()]
    if len(set(names)) != len(names) or not names:
        raise StudyError(f"reader names must be unique and non-empty; got {list(readers)}")
    return names


def build_study(
    real_datalist: str | Path,
    generated_datalist: str | Path,
    out: str | Path,
    *,
    n_per_side: int = 50,
    seed: int = 0,
    size: int | str | None = "auto",
    readers: int | Sequence[str] = 3,
    real_splits: Sequence[str] | None = ("test",),
    generated_splits: Sequence[str] | None = None,
    reader_codes: Sequence[str] | None = None,
    admin_code: str | None = None,
    force: bool = False,
) -> dict:
    """Build the study folder ``out``; returns a summary (no codes in it).

    Args:
        real_datalist, generated_datalist: busgen datalists.
        out: new study folder (refused when it already holds a study, unless ``force``).
        n_per_side: images drawn from each side (fewer when a side has fewer; both sides get the same number).
        seed: draws, ids and reading orders.
        size: common square size in pixels; "auto" = the generated images' size; None keeps every image as is
            (grey conversion only; readers may then tell the sides by size).
        readers: number of readers or their names.
        real_splits: splits of the real datalist to draw from (default: test, images the generator never saw;
            None = every split).
        generated_splits: splits of the generated datalist (default: all).
        reader_codes, admin_code: codes to use (default: random, 8 and 12 characters).
        force: rebuild over an existing study folder; refused while it holds an answers database.
    """
    out = Path(out)
    if (out / "study.json").exists() and not force:
        raise StudyError(f"{out} already holds a study (study.json); choose a new folder or pass --force")
    if any(out.glob("answers.sqlite*")):
        raise StudyError(f"{out} holds readers' answers (answers.sqlite); a rebuild would orphan them: move the "
                         "database away first (or build into a new folder)")
    real = _items(Path(real_datalist), real_splits)
    gen = _items(Path(generated_datalist), generated_splits)
    n = min(int(n_per_side), len(real), len(gen))
    if n < 1:
        raise StudyError("need at least one image on each side")
    if n < n_per_side:
        logger.warning("only %d images per side available (asked for %d)", n, n_per_side)
    rng = random.Random(seed)
    chosen = [("real", it) for it in _draw(real, n, rng)] + [("generated", it) for it in _draw(gen, n, rng)]
    rng.shuffle(chosen)
    if size == "auto":
        size = _default_size(gen)
    size = None if size is None else int(size)
    names = _reader_names(readers)
    if reader_codes is not None and len(reader_codes) != len(names):
        raise StudyError(f"{len(reader_codes)} reader codes for {len(names)} readers")
    codes = list(reader_codes) if reader_codes is not None else [secrets.token_hex(4) for _ in names]
    if len(set(codes)) != len(codes):
        raise StudyError("reader codes must be unique")
    admin = admin_code or secrets.token_hex(6)
    if admin in codes:
        raise StudyError("the admin code must differ from every reader code")

    (out / "images").mkdir(parents=True, exist_ok=True)
    ids: set[str] = set()
    items = []
    for truth, it in chosen:
        image_id = f"{rng.getrandbits(48):012x}"
        while image_id in ids:
            image_id = f"{rng.getrandbits(48):012x}"
        ids.add(image_id)
        pixels = _harmonise(it["_path"], it.get("boxes"), size)
        atomic_save_png(pixels, out / "images" / f"{image_id}.png")
        items.append({
            "id": image_id,
            "truth": truth,
            "pathology": it.get("pathology"),
            "birads": it.get("birads"),
            "device": it.get("device"),
            "source": {"datalist": str(Path(real_datalist if truth == "real" else generated_datalist).resolve()),
                       "split": it["_split"], "index": it["_index"]},
        })
    for stale in (out / "images").glob("*.png"):  # left by an earlier build (--force)
        if stale.stem not in ids:
            stale.unlink()
    order_ids = [it["id"] for it in items]
    reader_entries = []
    for r, (name, code) in enumerate(zip(names, codes)):
        order = list(order_ids)
        random.Random(f"{seed}:{r}").shuffle(order)
        reader_entries.append({"name": name, "code": code, "order": order})
    pathologies = sorted({str(it["pathology"]) for it in items if it["pathology"] is not None})
    study = {
        "version": STUDY_VERSION,
        "seed": seed,
        "size": size,
        "n_per_side": n,
        "pathologies": pathologies,
        "birads_values": ["2", "3", "4", "4a", "4b", "4c", "5"],
        "admin_code": admin,
        "readers": reader_entries,
        "items": items,
        "inputs": {"real": str(Path(real_datalist).resolve()), "generated": str(Path(generated_datalist).resolve()),
                   "real_splits": list(real_splits) if real_splits else None,
                   "generated_splits": list(generated_splits) if generated_splits else None},
    }
    atomic_write_json(out / "study.json", study)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["reader", "code"])
    writer.writerows([[r["name"], r["code"]] for r in reader_entries] + [["ADMIN", admin]])
    atomic_write_text(out / "reader_codes.csv", buf.getvalue())
    return {"study": str(out), "images": len(items), "per_side": n, "size": size, "readers": names}


def load_study(folder: str | Path) -> dict:
    """Read ``folder/study.json`` with a clear error when it is missing or malformed."""
    path = Path(folder) / "study.json"
    if not path.is_file():
        raise StudyError(f"{path} does not exist; build the study first: busgen reader-study build --real ... --out {folder}")
    try:
        study = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StudyError(f"{path} is not valid JSON ({err}); rebuild the study") from err
    for key in ("items", "readers", "admin_code"):
        if key not in study:
            raise StudyError(f"{path} has no {key!r}; rebuild the study with this version")
    return study


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, help="real datalist (e.g. BUS-BRA from `busgen datalist build`)")
    p.add_argument("--generated", required=True, help="generated datalist (e.g. from `busgen sample`)")
    p.add_argument("--out", required=True, help="new study folder")
    p.add_argument("--n", type=int, default=50, help="images per side (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="auto", help="common square size in px, 'auto' (generated size) or 'none'")
    p.add_argument("--readers", default="3", help="number of readers or comma list of names (default 3)")
    p.add_argument("--real-splits", default="test", help="comma list of real splits, or 'all' (default test)")
    p.add_argument("--generated-splits", default="all")
    p.add_argument("--force", action="store_true")


def run_from_args(args: argparse.Namespace) -> int:
    readers: int | list[str] = int(args.readers) if args.readers.isdigit() else args.readers.split(",")
    size: Any = None if str(args.size).lower() == "none" else ("auto" if args.size == "auto" else int(args.size))
    splits = None if args.real_splits == "all" else args.real_splits.split(",")
    gsplits = None if args.generated_splits == "all" else args.generated_splits.split(",")
    summary = build_study(args.real, args.generated, args.out, n_per_side=args.n, seed=args.seed, size=size,
                          readers=readers, real_splits=splits, generated_splits=gsplits, force=args.force)
    print(json.dumps(summary))
    print(f"reader and admin codes: {Path(args.out) / 'reader_codes.csv'} (hand each reader their own code)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="busgen reader-study build")
    add_arguments(p)
    return run_from_args(p.parse_args(argv))
