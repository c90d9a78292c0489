"""Scaling curves: test AUC and test loss against the number of training images, real vs generated.

For every source (``real``, and ``generated`` when given), every k in ``ks`` and every repeat (seed), the
``bus_classifier`` bundle is trained on a class-stratified random subset of k training items of that
source (a fixed number of optimisation steps, so small k are not under-trained), then evaluated on one
fixed real test split. ``scaling.json`` holds every run and the per-(source, k) mean and standard
deviation; ``scaling.png`` plots AUC and test loss (cross-entropy) against k (log axis) for both sources.

The job is resumable: runs already in ``scaling.json`` are skipped when it is started again.

Command line (through the plugin)::

    busgen classify-scaling --real data/bus_bra.json --generated data/generated.json \\
        --ks 100,200,400,800 --repeats 3 --out runs/scaling --preset preset_cpu_tiny --iterations 300
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.utils.io import atomic_save_figure

__all__ = ["run_scaling", "plot_scaling", "summarize_runs", "main"]

logger = logging.getLogger(__name__)


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean / std / n of AUC and test loss per (source, k)."""
    groups: dict[tuple[str, int], list[Mapping]] = {}
    for r in runs:
        groups.setdefault((r["source"], int(r["k"])), []).append(r)
    out = []
    for (source, k), rs in sorted(groups.items()):
        auc = np.array([r["auc"] for r in rs], dtype=float)
        loss = np.array([r["test_loss"] for r in rs], dtype=float)
        out.append({"source": source, "k": k, "n_runs": len(rs),
                    "auc_mean": float(np.nanmean(auc)), "auc_std": float(np.nanstd(auc, ddof=1)) if len(rs) > 1 else 0.0,
                    "loss_mean": float(np.nanmean(loss)), "loss_std": float(np.nanstd(loss, ddof=1)) if len(rs) > 1 else 0.0,
                    "train_items": int(np.mean([r["train_items"] for r in rs]))})
    return out


def plot_scaling(path: str | os.PathLike, summary: Sequence[Mapping[str, Any]], title: str = "Scaling curve") -> Path:
    """Two panels (test AUC, test loss) against the number of training images, one line per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    sources = sorted({s["source"] for s in summary}, key=lambda s: (s != "real", s))
    for src in sources:
        rows = sorted((s for s in summary if s["source"] == src), key=lambda s: s["k"])
        ks = [r["train_items"] for r in rows]
        for ax, m in zip(axes, ("auc", "loss")):
            ax.errorbar(ks, [r[f"{m}_mean"] for r in rows], yerr=[r[f"{m}_std"] for r in rows], marker="o",
                        capsize=3, label=f"{src} (n runs {max(r['n_runs'] for r in rows)})")
    ticks = sorted({int(s["train_items"]) for s in summary})
    for ax, ylabel in zip(axes, ("Test AUROC", "Test loss (cross-entropy)")):
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("Training images")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].axhline(0.5, color="grey", linestyle=":", linewidth=1)
    fig.suptitle(title + " (mean \u00b1 SD over repeats; fixed real test split)", fontsize=10)
    fig.tight_layout()
    try:
        return atomic_save_figure(fig, path, format="png", dpi=120)
    finally:
        plt.close(fig)


def _steps_per_epoch(k: int, batch_size: int) -> int:
    return max(1, k // batch_size) if k > batch_size else 1


def run_scaling(
    real_datalist: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    ks: Sequence[int] = (50, 100, 200, 400),
    generated_datalist: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    test_datalist: str | os.PathLike | None = None,
    test_split: str = "test",
    repeats: int = 1,
    seed: int = 0,
    presets: Sequence[str] = ("preset_cpu_tiny",),
    iterations: int = 200,
    overrides: Mapping[str, Any] | None = None,
    keep_checkpoints: bool = False,
    title: str = "Scaling curve",
) -> dict[str, Any]:
    """Train on k items for every k in ``ks`` (``repeats`` seeds each) from the real and the generated
    datalist(s), evaluate each model on the fixed real test split, and write ``scaling.json`` and
    ``scaling.png`` into ``out_dir``.

    Args:
        real_datalist: real datalist(s) (their ``training`` split is subsampled).
        out_dir: output folder (per-run bundle outputs go to ``out_dir/runs/``).
        ks: training-set sizes.
        generated_datalist: generated datalist(s) (optional; their ``training`` split is subsampled).
        test_datalist: datalist of the fixed test split (default: the first real datalist).
        test_split: its split name.
        repeats: runs per (source, k), with seeds ``seed, seed + 1, ...``.
        seed: first seed.
        presets: bundle presets merged after ``train.json`` (default ``preset_cpu_tiny``).
        iterations: optimisation steps per run (epochs = ceil(iterations / steps per epoch)).
        overrides: further bundle overrides (``label_key``, ``classes``, ``image_size``, ...).
        keep_checkpoints: keep each run's ``models/`` folder.
        title: plot title.

    Returns:
        ``{"runs": [...], "summary": [...], "json": path, "plot": path}``.
    """
    from .data import load_items
    from .evaluate import cross_entropy, predict
    from .workflow import run_bundle

    from busgen_monai.evaluation import auroc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "scaling.json"
    real = [str(p) for p in ([real_datalist] if isinstance(real_datalist, (str, os.PathLike)) else real_datalist)]
    sources: dict[str, list[str]] = {"real": real}
    if generated_datalist:
        gen = [generated_datalist] if isinstance(generated_datalist, (str, os.PathLike)) else generated_datalist
        sources["generated"] = [str(p) for p in gen]
    test_dl = str(test_datalist or real[0])
    base = dict(overrides or {})
    previous = json.loads(json_path.read_text()).get("runs", []) if json_path.is_file() else []
    done = {(r["source"], int(r["k"]), int(r["seed"])): r for r in previous}
    runs: list[dict] = list(previous)
    test_ds = None
    classes = None
    batch_size = int(_config_value("batch_size", presets, base))
    for source, datalists in sources.items():
        for k in ks:
            for rep in range(int(repeats)):
                s = int(seed) + rep
                if (source, int(k), s) in done:
                    continue
                run_dir = out / "runs" / f"{source}_k{k}_s{s}"
                epochs = max(1, math.ceil(iterations / _steps_per_epoch(int(k), batch_size)))
                ov = {**base, "train_datalists": datalists, "val_datalists": [test_dl], "train_limit": int(k),
                      "seed": s, "output_dir": str(run_dir), "max_epochs": epochs,
                      "val_interval": epochs + 1, "early_stop_patience": 0, "progress_bar": False,
                      "validate#dataset#cache_rate": 0.0, "train#late_handlers": []}
                t0 = time.time()
                wf = run_bundle(["train", *presets], ov)
                net = wf.parser.get_parsed_content("network")
                n_train = len(wf.parser.get_parsed_content("train#items"))
                if test_ds is None:
                    from monai.data import CacheDataset

                    classes = wf.parser.get_parsed_content("classes")
                    items = load_items([test_dl], test_split, label_key=wf.parser.get_parsed_content("label_key"),
                                       classes=classes, label_map=wf.parser.get_parsed_content("label_map"))
                    test_ds = CacheDataset(items, wf.parser.get_parsed_content("validate#preprocessing"),
                                           progress=False)
                pred = predict(net, test_ds, features=False)
                pos = len(classes) - 1
                y = (pred["labels"] == pos).astype(int)
                row = {"source": source, "k": int(k), "seed": s, "train_items": n_train,
                       "auc": auroc(y, pred["probs"][:, pos]), "test_loss": cross_entropy(pred["probs"], pred["labels"]),
                       "epochs": epochs, "iterations": int(wf.parser.get_parsed_content("train#trainer").state.iteration),
                       "seconds": round(time.time() - t0, 2)}
                logger.info("scaling: %s", row)
                runs.append(row)
                if not keep_checkpoints:
                    shutil.rmtree(run_dir / "models", ignore_errors=True)
                _write(json_path, runs, test_dl, test_split, presets, iterations, base)
    summary = summarize_runs(runs)
    _write(json_path, runs, test_dl, test_split, presets, iterations, base)
    plot = plot_scaling(out / "scaling.png", summary, title=title)
    return {"runs": runs, "summary": summary, "json": str(json_path), "plot": str(plot)}


def _config_value(key: str, presets: Sequence[str], overrides: Mapping[str, Any]) -> Any:
    """A plain config value after merging ``train.json``, the presets and the overrides."""
    from monai.bundle import ConfigParser

    from .workflow import config_files

    parser = ConfigParser()
    parser.read_config(config_files(["train", *presets]))
    parser.update(dict(overrides))
    return parser.get_parsed_content(key)


def _write(path: Path, runs, test_dl, test_split, presets, iterations, overrides) -> None:
    from .engine import write_json

    write_json(path, {"test_datalist": test_dl, "test_split": test_split, "presets": list(presets),
                      "iterations": iterations, "overrides": {k: v for k, v in overrides.items()},
                      "runs": runs, "summary": summarize_runs(runs)})


def main(argv: Sequence[str] | None = None) -> int:
    """``busgen classify-scaling``: see the module docstring."""
    p = argparse.ArgumentParser(prog="busgen classify-scaling",
                                description="Test AUC and loss against the number of training images, real vs generated.")
    p.add_argument("--real", required=True, action="append", help="real datalist (repeat to concatenate several)")
    p.add_argument("--generated", action="append", default=None, help="generated datalist (repeatable)")
    p.add_argument("--test", default=None, help="datalist holding the fixed real test split (default: first --real)")
    p.add_argument("--test-split", default="test")
    p.add_argument("--ks", default="50,100,200,400", help="comma list of training-set sizes")
    p.add_argument("--repeats", type=int, default=1, help="runs (seeds) per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", action="append", default=None, help="bundle preset(s) (default preset_cpu_tiny)")
    p.add_argument("--iterations", type=int, default=200, help="optimisation steps per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override (JSON values)")
    p.add_argument("--out", required=True, help="output folder (scaling.json, scaling.png)")
    p.add_argument("--keep-checkpoints", action="store_true")
    args = p.parse_args(list(argv) if argv is not None else None)
    from .export import _parse_set

    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    res = run_scaling(args.real, args.out, ks=ks, generated_datalist=args.generated, test_datalist=args.test,
                      test_split=args.test_split, repeats=args.repeats, seed=args.seed,
                      presets=args.preset or ["preset_cpu_tiny"], iterations=args.iterations,
                      overrides=_parse_set(args.set), keep_checkpoints=args.keep_checkpoints)
    for row in res["summary"]:
        print(f"{row['source']:>9}  k={row['k']:<6} AUC {row['auc_mean']:.3f} +- {row['auc_std']:.3f}   "
              f"loss {row['loss_mean']:.3f} +- {row['loss_std']:.3f}   ({row['n_runs']} run(s))")
    print(f"wrote {res['json']} and {res['plot']}")
    return 0
