"""Privacy audit of a generated data set: does any generated image copy a training image?

``busgen audit-privacy GENERATED TRAINING --out DIR [--threshold 0.95 --ssim-threshold 0.8]``

Default thresholds: on BUS-BRA (real images compared at 160 px) the 284 test images against the 1,309 training
images reach at most cosine 0.862 / MS-SSIM 0.651, and the training images against each other (leave-one-out) at most
0.896 / 0.700, so distinct real images stay below 0.95 / 0.8 while near-copies score about 0.98-1.0 / 0.95-1.0.

Both sets are compared as the generator saw its data: non-square training images are cropped to the generator's
deterministic training window (the largest square that keeps every lesion box, as the pretrain bundle's crop;
centred without boxes) and both sets are box-filtered down to the generated resolution (``compare_size="auto"``),
so a 32 px generator is compared with 32 px versions of its training images, not with the full-size files.

For every generated image the audit finds its nearest training image

1. by **cosine similarity** in a feature space (default :class:`busgen_cpsample.features.RandomConvPixelFeatures`,
   training-free; see that module for what it can and cannot see), searched *exactly* over the whole training set
   with blocked matrix multiplies and a running top-k (:func:`busgen_cpsample.neighbours.topk_cosine`), and
2. by **MS-SSIM** (:class:`monai.metrics.MultiScaleSSIMMetric`) on greyscale images resized to ``ssim_size``
   (default 176 px, the smallest size at which MONAI's 5-scale MS-SSIM with an 11-pixel Gaussian window is
   defined). MS-SSIM is computed against *every* training image when ``n_generated * n_training <=
   brute_force_max_pairs`` (exact MS-SSIM nearest neighbour); otherwise only against the ``k`` nearest training
   images by cosine (``--k``, default 5), which is what makes the audit scale to tens of thousands of images. In that
   mode the MS-SSIM nearest neighbour is "the best of the k cosine candidates": a copy that the feature space does not
   rank among the k nearest is missed by MS-SSIM too.

It writes into ``DIR``:

- ``summary.json``: max / 99th / 95th percentile / median of both similarities, counts over the thresholds, the
  number of near-copies and pass/fail, the same statistics for the *training set against itself* (leave-one-out
  nearest neighbour of up to ``reference_max`` training images: how close distinct real images are; use it to
  choose thresholds), the feature extractor and MS-SSIM settings;
- ``nearest.csv``: per generated image its nearest training image by cosine and by MS-SSIM;
- ``histograms.png``: both similarity distributions (generated vs training leave-one-out) with the thresholds;
- ``top_pairs.png``: the ``top_pairs`` most similar (generated | nearest training) pairs.

A generated image is a *near-copy* when ``rule`` says so: ``either`` (default: cosine >= threshold or MS-SSIM >=
ssim_threshold), ``both``, ``cosine`` or ``ms_ssim``. The audit passes when there are at most ``max_near_copies``.
The CLI exits with 0 when it passes and 1 when it fails.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from busgen_monai.utils.io import atomic_save_figure

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_SSIM_THRESHOLD",
    "RULES",
    "image_paths",
    "image_records",
    "load_view",
    "load_gray",
    "extract_features",
    "ms_ssim_pairs",
    "similarity_stats",
    "run_audit",
    "main",
]

DEFAULT_THRESHOLD = 0.95
DEFAULT_SSIM_THRESHOLD = 0.8
RULES = ("either", "both", "cosine", "ms_ssim")
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ---------------------------------------------------------------------------------------------- inputs
def image_paths(source: Any, splits: Sequence[str] | None = None) -> tuple[list[Path], list[str]]:
    """Image files of a datalist (JSON path or dict with ``base_dir``), a folder (every image in it, sorted), or a
    list of paths. Returns ``(absolute paths, display names)`` (names relative to the datalist/folder)."""
    paths, names, _ = image_records(source, splits)
    return paths, names


def image_records(source: Any, splits: Sequence[str] | None = None) -> tuple[list[Path], list[str], list[Any]]:
    """As :func:`image_paths`, plus each image's lesion boxes (datalist items; ``None`` for folders and lists)."""
    from busgen_monai.data.schema import SPLITS, load_datalist

    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        return paths, [p.name for p in paths], [None] * len(paths)
    if isinstance(source, Mapping):
        data, base = source, Path(source.get("base_dir") or ".")
    else:
        src = Path(source)
        if src.is_dir():
            paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
            if not paths:
                raise ValueError(f"folder {src} holds no images ({', '.join(_IMAGE_SUFFIXES)})")
            return paths, [str(p.relative_to(src)) for p in paths], [None] * len(paths)
        data = load_datalist(src, check_files=False)
        base = Path(data["base_dir"])
    use = list(splits) if splits else list(SPLITS)
    unknown = [s for s in use if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; splits are {list(SPLITS)}")
    items = [it for s in use for it in data.get(s) or []]
    names = [it["image"] for it in items]
    if not names:
        raise ValueError(f"datalist {data.get('name', source)!r} has no items in split(s) {use}")
    paths = [Path(n) if os.path.isabs(n) else base / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {data.get('name', source)!r} do not exist, first: "
                                f"{missing[:3]}")
    return paths, names, [it.get("boxes") or [] for it in items]


def load_view(path: Path, boxes: Any = None, square: bool = True, compare_size: int | None = None,
              out_size: int | None = None, rgb: bool = False) -> np.ndarray:
    """One image as the audit compares it: greyscale (or RGB) uint8; cropped to the generator's square window
    (the largest square that keeps every box, as the pretrain bundle's deterministic crop; centred when there are
    no boxes) when ``square``; box-filtered down to ``compare_size`` (the resolution both sets are compared at);
    then resized to ``out_size`` (box filter down, bilinear up)."""
    from PIL import Image

    from busgen_monai.data.io import read_image_gray, read_image_rgb
    from busgen_monai.data.transforms import box_preserving_window

    arr = read_image_rgb(path) if rgb else read_image_gray(path)
    h, w = arr.shape[:2]
    if square and h != w:
        x0, y0, side = box_preserving_window(h, w, boxes or [], scale=1.0, min_scale=1.0)
        pad = np.zeros((side, side) + arr.shape[2:], dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        pad[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
        arr = pad
    im = Image.fromarray(arr)
    if compare_size is not None and im.size != (compare_size, compare_size) and compare_size < max(im.size):
        im = im.resize((compare_size, compare_size), Image.Resampling.BOX)
    if out_size is not None and im.size != (out_size, out_size):
        up = out_size > max(im.size)
        im = im.resize((out_size, out_size), Image.Resampling.BILINEAR if up else Image.Resampling.BOX)
    return np.array(im, dtype=np.uint8, copy=True)


class _GrayImages(torch.utils.data.Dataset):
    """Greyscale views (:func:`load_view`) at ``size`` x ``size``, as uint8 ``(1, size, size)``."""

    def __init__(self, paths: Sequence[Path], size: int, boxes: Sequence[Any] | None = None, square: bool = True,
                 compare_size: int | None = None) -> None:
        self.paths = list(paths)
        self.size = int(size)
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        self.square = bool(square)
        self.compare_size = compare_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        arr = load_view(self.paths[i], self.boxes[i], self.square, self.compare_size, self.size)
        return torch.from_numpy(arr)[None]


def _loader(paths: Sequence[Path], size: int, batch_size: int, num_workers: int, boxes: Sequence[Any] | None = None,
            square: bool = True, compare_size: int | None = None):
    return torch.utils.data.DataLoader(_GrayImages(paths, size, boxes, square, compare_size), batch_size=batch_size,
                                       shuffle=False, num_workers=num_workers)


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)


def load_gray(paths: Sequence[Path], size: int, batch_size: int = 64, num_workers: int = 0,
              progress: bool = False, desc: str = "load", boxes: Sequence[Any] | None = None, square: bool = True,
              compare_size: int | None = None) -> torch.Tensor:
    """``(N, 1, size, size)`` uint8 greyscale views (:func:`load_view`)."""
    out = []
    with _bar(len(paths), desc, progress) as bar:
        for batch in _loader(paths, size, batch_size, num_workers, boxes, square, compare_size):
            out.append(batch)
            bar.update(batch.shape[0])
    return torch.cat(out) if out else torch.empty(0, 1, size, size, dtype=torch.uint8)


@torch.no_grad()
def extract_features(paths: Sequence[Path], extractor: torch.nn.Module, load_size: int = 64, batch_size: int = 64,
                     num_workers: int = 0, device: str | torch.device = "cpu", progress: bool = False,
                     desc: str = "features", boxes: Sequence[Any] | None = None, square: bool = True,
                     compare_size: int | None = None) -> torch.Tensor:
    """Batched features ``(N, D)`` (float32, CPU) of greyscale views (:func:`load_view`) in ``[0, 1]`` at
    ``load_size``."""
    extractor = extractor.to(device).eval()
    out = []
    with _bar(len(paths), desc, progress) as bar:
        for batch in _loader(paths, load_size, batch_size, num_workers, boxes, square, compare_size):
            out.append(extractor(batch.to(device).float() / 255.0).float().cpu())
            bar.update(batch.shape[0])
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- MS-SSIM
def _ms_ssim_metric(scales: int, kernel_size: int):
    from monai.metrics import MultiScaleSSIMMetric

    if not 1 <= scales <= 5:
        raise ValueError(f"ssim_scales must be 1..5, got {scales}")
    w = np.asarray(_MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
    w = tuple((w / w.sum()).tolist())
    return MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel_size, weights=w,
                                reduction="none")


def _check_ssim_size(size: int, scales: int, kernel_size: int) -> None:
    div = max(1, scales - 1) ** 2  # MONAI's size rule for MultiScaleSSIMMetric
    if size // div <= kernel_size - 1:
        raise ValueError(f"ssim_size {size} is too small for {scales}-scale MS-SSIM with a {kernel_size}-pixel "
                         f"window (MONAI needs size // {div} > {kernel_size - 1}, i.e. size >= "
                         f"{(kernel_size - 1) * div + div}); raise --ssim-size or lower --ssim-scales/--ssim-kernel")


@torch.no_grad()
def ms_ssim_pairs(a: torch.Tensor, b: torch.Tensor, scales: int = 5, kernel_size: int = 11,
                  batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """MS-SSIM of aligned pairs ``a[i]`` vs ``b[i]``: uint8 or ``[0, 1]`` float ``(P, 1, S, S)`` -> ``(P,)``."""
    if a.shape != b.shape:
        raise ValueError(f"ms_ssim_pairs: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    _check_ssim_size(a.shape[-1], scales, kernel_size)
    metric = _ms_ssim_metric(scales, kernel_size)
    out = []
    for i in range(0, a.shape[0], batch_size):
        x = a[i:i + batch_size].to(device).float()
        y = b[i:i + batch_size].to(device).float()
        if a.dtype == torch.uint8:
            x, y = x / 255.0, y / 255.0
        out.append(metric(x, y).reshape(-1).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


# ---------------------------------------------------------------------------------------------- stats / plots
def similarity_stats(values: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
    """max / p99 / p95 / median / mean (and the count at or over ``threshold``)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    out = {"n": int(v.size), "max": float(v.max()), "p99": float(np.percentile(v, 99)),
           "p95": float(np.percentile(v, 95)), "median": float(np.median(v)), "mean": float(v.mean()),
           "min": float(v.min())}
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["count_over_threshold"] = int((v >= threshold).sum())
    return out


def _plot_histograms(path: Path, gen_cos, ref_cos, gen_ssim, ref_ssim, threshold, ssim_threshold, title) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, gen, ref, thr, name in ((axes[0], gen_cos, ref_cos, threshold, "cosine similarity (features)"),
                                    (axes[1], gen_ssim, ref_ssim, ssim_threshold, "MS-SSIM")):
        lo = float(min(np.min(gen), np.min(ref) if len(ref) else np.min(gen), thr)) - 0.02
        bins = np.linspace(max(lo, -1.0), 1.0, 41)
        ax.hist(gen, bins=bins, alpha=0.7, label=f"generated -> nearest training (n={len(gen)})", color="tab:red")
        if len(ref):
            ax.hist(ref, bins=bins, alpha=0.5, label=f"training -> nearest other training (n={len(ref)})",
                    color="tab:blue")
        ax.axvline(thr, color="k", linestyle="--", linewidth=1, label=f"threshold {thr:g}")
        ax.set_xlabel(f"nearest-neighbour {name}")
        ax.set_ylabel("images")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return atomic_save_figure(fig, path, format="png", dpi=110)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------- the audit
def run_audit(
    generated: Any,
    training: Any,
    out_dir: str | os.PathLike,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    ssim_threshold: float = DEFAULT_SSIM_THRESHOLD,
    rule: str = "either",
    max_near_copies: int = 0,
    k: int = 5,
    top_pairs: int = 16,
    ssim_size: int = 176,
    ssim_scales: int = 5,
    ssim_kernel: int = 11,
    brute_force_max_pairs: int = 4096,
    reference_max: int = 1000,
    feature_extractor: torch.nn.Module | None = None,
    load_size: int = 64,
    compare_size: int | str | None = "auto",
    square: bool = True,
    generated_splits: Sequence[str] | None = None,
    training_splits: Sequence[str] | None = ("training",),
    batch_size: int = 64,
    num_workers: int = 0,
    query_block: int = 1024,
    ref_block: int = 8192,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Run the privacy audit (see the module docstring) and return the summary (also written to ``summary.json``).

    Args:
        generated, training: datalist JSON paths (or dicts), image folders, or lists of image paths.
        out_dir: output folder.
        threshold, ssim_threshold: near-copy thresholds for cosine similarity and MS-SSIM.
        rule: ``either``, ``both``, ``cosine`` or ``ms_ssim``.
        max_near_copies: the audit passes with at most this many near-copies.
        k: cosine candidates per generated image for MS-SSIM (when not brute force).
        top_pairs: pairs shown in ``top_pairs.png``.
        ssim_size, ssim_scales, ssim_kernel: MS-SSIM settings (greyscale, resized to ``ssim_size``).
        brute_force_max_pairs: compute MS-SSIM against every training image when ``N * M`` is at most this.
        reference_max: training images used as queries for the leave-one-out reference distribution (0: none).
        feature_extractor: ``(B, 1, H, W)`` in ``[0, 1]`` -> ``(B, D)``; default
            :class:`~busgen_cpsample.features.RandomConvPixelFeatures` (a ``parts`` attribute, if present, is used
            by :class:`~busgen_cpsample.neighbours.FeatureSpace`).
        load_size: images are loaded at this size for the feature extractor.
        compare_size: both sets are first box-filtered down to this resolution, so a generator that samples at
            32 px is compared with its training images as it saw them (32 px), not at their file resolution;
            ``"auto"`` (default): the generated images' size; ``None``: no common resolution.
        square: crop non-square images to the generator's training window (largest square keeping every box;
            centred without boxes), as the pretrain bundle's deterministic crop does.
        generated_splits, training_splits: datalist splits to read (generated default: all).
        batch_size, num_workers: image loading / feature batches.
        query_block, ref_block: blocks of the nearest-neighbour search.
        device: torch device for features, search and MS-SSIM.
        seed: seed of the reference subsample.
        progress: progress bars.
        plots: write the PNGs.
    """
    from .features import RandomConvPixelFeatures
    from .neighbours import FeatureSpace, topk_cosine

    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    _check_ssim_size(ssim_size, ssim_scales, ssim_kernel)
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen_paths, gen_names, gen_boxes = image_records(generated, generated_splits)
    train_paths, train_names, train_boxes = image_records(training, training_splits)
    n, m = len(gen_paths), len(train_paths)
    if m < 2:
        raise ValueError(f"the training set needs at least 2 images, got {m}")
    if compare_size == "auto":
        compare_size = int(min(load_view(gen_paths[0], gen_boxes[0], square).shape[:2]))
    elif compare_size is not None:
        compare_size = int(compare_size)
    view = {"square": square, "compare_size": compare_size}
    extractor = feature_extractor if feature_extractor is not None else RandomConvPixelFeatures()

    # 1. features and exact cosine nearest neighbours
    f_train = extract_features(train_paths, extractor, load_size, batch_size, num_workers, device, progress,
                               "features (training)", boxes=train_boxes, **view)
    f_gen = extract_features(gen_paths, extractor, load_size, batch_size, num_workers, device, progress,
                             "features (generated)", boxes=gen_boxes, **view)
    space = FeatureSpace(getattr(extractor, "parts", None)).fit(f_train)
    z_train, z_gen = space.transform(f_train), space.transform(f_gen)
    kk = min(k, m)
    cos_v, cos_i = topk_cosine(z_gen, z_train, kk, query_block, ref_block, device=device)

    # reference: training -> nearest other training image (leave-one-out), on a seeded subsample
    rng = np.random.default_rng(seed)
    n_ref = min(int(reference_max), m)
    ref_idx = torch.from_numpy(np.sort(rng.choice(m, n_ref, replace=False))) if n_ref else torch.empty(0).long()
    k_ref = min(k, m - 1)
    if n_ref:
        ref_v, ref_i = topk_cosine(z_train[ref_idx], z_train, k_ref, query_block, ref_block, exclude=ref_idx,
                                   device=device)
    else:
        ref_v, ref_i = torch.empty(0, k_ref), torch.empty(0, k_ref, dtype=torch.long)

    # 2. MS-SSIM: brute force when small, otherwise against the k cosine candidates
    brute = n * m <= int(brute_force_max_pairs)
    g_thumbs = load_gray(gen_paths, ssim_size, batch_size, num_workers, progress, "MS-SSIM thumbnails (generated)",
                         boxes=gen_boxes, **view)
    need = torch.arange(m) if brute else torch.unique(torch.cat([cos_i.reshape(-1), ref_i.reshape(-1),
                                                                  ref_idx]))
    t_thumbs_sub = load_gray([train_paths[int(j)] for j in need], ssim_size, batch_size, num_workers, progress,
                             "MS-SSIM thumbnails (training)", boxes=[train_boxes[int(j)] for j in need], **view)
    pos = torch.full((m,), -1, dtype=torch.long)
    pos[need] = torch.arange(need.numel())

    def thumbs_of(idx: torch.Tensor) -> torch.Tensor:
        return t_thumbs_sub[pos[idx]]

    cand = torch.arange(m).expand(n, m) if brute else cos_i
    ssim_all = torch.empty(cand.shape, dtype=torch.float32)
    block = max(1, 512 // cand.shape[1])
    with _bar(n, "MS-SSIM (generated)", progress) as bar:
        for g0 in range(0, n, block):
            rows = cand[g0:g0 + block]
            a = g_thumbs[g0:g0 + block].repeat_interleave(rows.shape[1], dim=0)
            b = thumbs_of(rows.reshape(-1))
            ssim_all[g0:g0 + block] = ms_ssim_pairs(a, b, ssim_scales, ssim_kernel, device=device).view(rows.shape)
            bar.update(rows.shape[0])
    best = ssim_all.argmax(1)
    gen_ssim = ssim_all.gather(1, best[:, None]).reshape(-1)
    gen_ssim_idx = cand.gather(1, best[:, None]).reshape(-1)
    if n_ref:
        r_thumbs = thumbs_of(ref_idx)
        a = r_thumbs.repeat_interleave(k_ref, dim=0)
        b = thumbs_of(ref_i.reshape(-1))
        ref_ssim = ms_ssim_pairs(a, b, ssim_scales, ssim_kernel, device=device).view(n_ref, k_ref).max(1).values
    else:
        ref_ssim = torch.empty(0)

    # 3. near-copies, summary, files
    gen_cos = cos_v[:, 0].numpy().astype(np.float64)
    gen_ssim_np = gen_ssim.numpy().astype(np.float64)
    over_cos = gen_cos >= threshold
    over_ssim = gen_ssim_np >= ssim_threshold
    near = {"either": over_cos | over_ssim, "both": over_cos & over_ssim, "cosine": over_cos,
            "ms_ssim": over_ssim}[rule]
    n_near = int(near.sum())
    passed = n_near <= int(max_near_copies)
    describe = extractor.describe() if hasattr(extractor, "describe") else {"name": type(extractor).__name__}
    summary: dict[str, Any] = {
        "passed": bool(passed),
        "near_copies": n_near,
        "max_near_copies": int(max_near_copies),
        "rule": rule,
        "n_generated": n,
        "n_training": m,
        "cosine": similarity_stats(gen_cos, threshold),
        "ms_ssim": similarity_stats(gen_ssim_np, ssim_threshold),
        "reference_training_loo": {
            "n": int(n_ref),
            "cosine": similarity_stats(ref_v[:, 0].numpy() if n_ref else np.empty(0)),
            "ms_ssim": similarity_stats(ref_ssim.numpy()),
            "note": "each of up to reference_max training images against its nearest *other* training image",
        },
        "views": {"compare_size": compare_size, "square_crop": bool(square)},
        "features": {"extractor": describe, "space": [list(p) for p in space.parts], "load_size": int(load_size),
                     "note": "cosine = sum_k w_k cos_k over parts, each centred on the training mean"},
        "ms_ssim_settings": {"size": int(ssim_size), "scales": int(ssim_scales), "kernel_size": int(ssim_kernel),
                             "mode": "brute_force" if brute else f"top{kk}_cosine_candidates",
                             "pairs": int(cand.numel())},
        "thresholds": {"cosine": float(threshold), "ms_ssim": float(ssim_threshold)},
        "seconds": round(time.time() - t_start, 2),
    }
    from busgen_monai.data.schema import atomic_write_text

    rows_csv = io.StringIO()
    w = csv.writer(rows_csv)
    w.writerow(["generated", "nearest_training_cosine", "cosine", "nearest_training_ms_ssim", "ms_ssim", "near_copy"])
    for i in range(n):
        w.writerow([gen_names[i], train_names[int(cos_i[i, 0])], f"{gen_cos[i]:.6f}",
                    train_names[int(gen_ssim_idx[i])], f"{gen_ssim_np[i]:.6f}", int(near[i])])
    atomic_write_text(out / "nearest.csv", rows_csv.getvalue())
    if plots:
        title = (f"privacy audit: {n_near} near-copies ({rule}: cosine >= {threshold:g} / MS-SSIM >= "
                 f"{ssim_threshold:g}) - {'PASS' if passed else 'FAIL'}")
        summary["histograms"] = str(_plot_histograms(out / "histograms.png", gen_cos, ref_v[:, 0].numpy() if n_ref
                                                     else np.empty(0), gen_ssim_np, ref_ssim.numpy(), threshold,
                                                     ssim_threshold, title))
        order = np.argsort(-gen_cos, kind="stable")[: max(0, int(top_pairs))]
        if len(order):
            from busgen_monai.visualize import save_image_grid

            images, labels = [], []
            show = max(64, compare_size or 0)
            for i in order:
                j = int(cos_i[i, 0])
                images += [load_view(gen_paths[i], gen_boxes[i], square, compare_size, show, rgb=True),
                           load_view(train_paths[j], train_boxes[j], square, compare_size, show, rgb=True)]
                hit = (cand[i] == j).nonzero()
                ssim_ij = float(ssim_all[i][hit[0]].max()) if len(hit) else float("nan")
                labels += [f"gen {Path(gen_names[i]).stem[-12:]}\ncos {gen_cos[i]:.3f} ms-ssim {ssim_ij:.3f}",
                           f"train {Path(train_names[j]).stem[-12:]}"]
            summary["top_pairs"] = str(save_image_grid(images, out / "top_pairs.png", labels=labels, ncols=8,
                                                       title="most similar pairs: generated | nearest training "
                                                             f"(cosine), compared at {compare_size or 'file'} px"))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------------------------- CLI
class PrivacyAuditFailed(RuntimeError):
    """The audit found more near copies of training images than allowed (``max_near_copies``)."""


def require_passed(summary: dict[str, Any], fail: bool = True) -> dict[str, Any]:
    """Raise :class:`PrivacyAuditFailed` when the audit did not pass (so ``python -m monai.bundle run`` exits
    non-zero, as the ``busgen audit-privacy`` command does); ``fail=False`` only reports. Returns ``summary``."""
    if fail and not summary.get("passed", False):
        raise PrivacyAuditFailed(
            f"privacy audit FAILED: {summary.get('near_copies')} generated image(s) are near copies of training images "
            f"(allowed {summary.get('max_near_copies', 0)}); see {summary.get('report', 'the audit folder')} - do not "
            "share this generated set; sample with the CPSampling guard or adapt with more data")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="busgen audit-privacy",
        description="Privacy audit: nearest training image of every generated image by feature cosine similarity "
                    "and MS-SSIM; histograms, top pairs, summary.json, pass/fail. Exit code 0 = pass, 1 = fail.")
    p.add_argument("generated", help="generated datalist JSON (all splits) or image folder")
    p.add_argument("training", help="training datalist JSON (split 'training') or image folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"cosine near-copy threshold (default {DEFAULT_THRESHOLD})")
    p.add_argument("--ssim-threshold", type=float, default=DEFAULT_SSIM_THRESHOLD,
                   help=f"MS-SSIM near-copy threshold (default {DEFAULT_SSIM_THRESHOLD})")
    p.add_argument("--rule", choices=RULES, default="either", help="what makes a near-copy (default: either)")
    p.add_argument("--max-near-copies", type=int, default=0, help="pass with at most this many (default 0)")
    p.add_argument("--k", type=int, default=5, help="cosine candidates per image for MS-SSIM (default 5)")
    p.add_argument("--top-pairs", type=int, default=16, help="pairs in top_pairs.png (default 16)")
    p.add_argument("--ssim-size", type=int, default=176, help="MS-SSIM image size (default 176)")
    p.add_argument("--ssim-scales", type=int, default=5, help="MS-SSIM scales 1..5 (default 5)")
    p.add_argument("--ssim-kernel", type=int, default=11, help="MS-SSIM Gaussian window (default 11)")
    p.add_argument("--brute-force-max-pairs", type=int, default=4096,
                   help="MS-SSIM against every training image when N*M <= this (default 4096)")
    p.add_argument("--reference-max", type=int, default=1000,
                   help="training images in the leave-one-out reference distribution (default 1000)")
    p.add_argument("--generated-splits", default=None, help="comma list of splits of the generated datalist")
    p.add_argument("--training-splits", default="training", help="comma list of splits of the training datalist")
    p.add_argument("--features-seed", type=int, default=0, help="seed of the random-convolution features")
    p.add_argument("--compare-size", default="auto",
                   help="common resolution of both sets: 'auto' (the generated size), 'none', or pixels")
    p.add_argument("--no-square-crop", action="store_true",
                   help="do not crop non-square images to the generator's square training window")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .features import RandomConvPixelFeatures

    args = build_parser().parse_args(argv)
    split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)  # noqa: E731
    summary = run_audit(
        args.generated, args.training, args.out, threshold=args.threshold, ssim_threshold=args.ssim_threshold,
        rule=args.rule, max_near_copies=args.max_near_copies, k=args.k, top_pairs=args.top_pairs,
        ssim_size=args.ssim_size, ssim_scales=args.ssim_scales, ssim_kernel=args.ssim_kernel,
        brute_force_max_pairs=args.brute_force_max_pairs, reference_max=args.reference_max,
        feature_extractor=RandomConvPixelFeatures(seed=args.features_seed),
        compare_size=None if args.compare_size == "none" else (args.compare_size if args.compare_size == "auto"
                                                                else int(args.compare_size)),
        square=not args.no_square_crop,
        generated_splits=split(args.generated_splits), training_splits=split(args.training_splits),
        batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        progress=not args.no_progress)
    c, s, r = summary["cosine"], summary["ms_ssim"], summary["reference_training_loo"]
    print(f"privacy audit: {summary['n_generated']} generated vs {summary['n_training']} training images")
    print(f"  cosine   max {c['max']:.4f}  p99 {c['p99']:.4f}  p95 {c['p95']:.4f}  >= {c['threshold']:g}: "
          f"{c['count_over_threshold']}   (training LOO max {r['cosine'].get('max', float('nan')):.4f})")
    print(f"  MS-SSIM  max {s['max']:.4f}  p99 {s['p99']:.4f}  p95 {s['p95']:.4f}  >= {s['threshold']:g}: "
          f"{s['count_over_threshold']}   (training LOO max {r['ms_ssim'].get('max', float('nan')):.4f})")
    print(f"  near-copies ({summary['rule']}): {summary['near_copies']}  ->  "
          f"{'PASS' if summary['passed'] else 'FAIL'}   ({Path(args.out) / 'summary.json'})")
    return 0 if summary["passed"] else 1
