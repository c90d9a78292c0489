"""``busgen clean`` and ``busgen clean-train-judge`` (plugin sub-commands; also ``python -m busgen_clean.cli``).

::

    busgen clean-train-judge REAL_DATALIST --out JUDGE_DIR [--seeds 0 1 2 --epochs 30 --label-key pathology]
    busgen clean GENERATED_DATALIST --judge JUDGE_DIR --out OUT [--threshold T |
                 --target-precision P --validation REAL_DATALIST] [--checks label,blank,visibility,ood | all]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "train_judge_main", "build_parser", "build_train_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="busgen clean", description="Remove generated images whose content disagrees "
                                "with their label (and, optionally, blank / invisible-lesion / out-of-distribution "
                                "images). Writes OUT/datalist.json, rejects.json, rejects.csv, summary.json and "
                                "rejects_grid.png.")
    p.add_argument("generated", help="generated datalist (e.g. the sample bundle's datalist.json)")
    p.add_argument("--judge", help="judge folder (from `busgen clean-train-judge`); needed by the label/ood checks")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="reject when p(label) < T (default 0.5)")
    g.add_argument("--target-precision", type=float,
                   help="choose the threshold for this precision of kept labels (needs --validation)")
    p.add_argument("--validation", help="real labelled datalist whose validation split calibrates --target-precision")
    p.add_argument("--wrong-fraction", type=float, default=0.5,
                   help="assumed share of wrong labels when choosing the threshold (default 0.5, pessimistic)")
    p.add_argument("--checks", default="label", help="comma-separated: label,blank,visibility,ood, or 'all' "
                   "(default: label)")
    p.add_argument("--ood-threshold", type=float, help="override the judge's Mahalanobis distance limit")
    p.add_argument("--visibility-floor", type=float, help="override the judge's minimum box contrast")
    p.add_argument("--grid-size", type=int, default=32, help="rejected images in rejects_grid.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.target_precision is not None and not args.validation:
        print("busgen clean: --target-precision needs --validation REAL_DATALIST", file=sys.stderr)
        return 2
    checks = "all" if args.checks.strip() == "all" else [c.strip() for c in args.checks.split(",") if c.strip()]
    from .report import clean_datalist

    try:
        summary = clean_datalist(args.generated, args.out, args.judge, threshold=args.threshold,
                                 target_precision=args.target_precision, validation=args.validation, checks=checks,
                                 grid_size=args.grid_size, wrong_fraction=args.wrong_fraction,
                                 ood_threshold=args.ood_threshold, visibility_floor=args.visibility_floor)
    except (ValueError, FileNotFoundError) as err:
        print(f"busgen clean: {err}", file=sys.stderr)
        return 2
    s = summary["settings"]
    thr = f", label threshold {s['label_threshold']:.3f}" if "label_threshold" in s else ""
    print(f"kept {summary['kept']} / {summary['total']}, rejected {summary['rejected']}{thr} -> {args.out}")
    print(json.dumps({"per_class": summary["per_class"], "failed_by_check": summary["failed_by_check"]}))
    return 0


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="busgen clean-train-judge",
                                description="Train the cleaning judge (an ensemble of small MONAI ResNets) on real "
                                            "labelled data; calibrates the OOD and visibility checks.")
    p.add_argument("datalist", help="real labelled datalist (training split trains, validation split calibrates)")
    p.add_argument("--out", required=True, help="judge folder to write")
    p.add_argument("--label-key", default="pathology", help="datalist key to judge (default: pathology)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one network per seed (ensemble)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--crop", choices=("box", "image"), default="box",
                   help="judge the region around the boxes (default) or the whole image")
    p.add_argument("--margin", type=float, default=0.5, help="context around the box, fraction of its size")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ood-percentile", type=float, default=99.0)
    p.add_argument("--progress", action="store_true")
    return p


def train_judge_main(argv: Sequence[str] | None = None) -> int:
    args = build_train_parser().parse_args(argv)
    from .judge import train_judge

    try:
        judge = train_judge(args.datalist, args.out, label_key=args.label_key, seeds=args.seeds, epochs=args.epochs,
                            image_size=args.image_size, crop=args.crop, margin=args.margin, lr=args.lr,
                            batch_size=args.batch_size, ood_percentile=args.ood_percentile, progress=args.progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"busgen clean-train-judge: {err}", file=sys.stderr)
        return 2
    print(f"{judge} -> {args.out}; validation: {judge.meta.get('validation')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
