"""Benchmark of the busgen-classify bundle on BUS-BRA (CPU-sized).

1. builds the BUS-BRA datalist (patient-wise 70/15/15 split, seed 0);
2. trains the CPU preset (``preset_cpu_tiny``: 0.3 M-parameter ResNet, 64 px, lesion-box crop) and
   times it;
3. evaluates the best checkpoint on the test split: AUROC with a 95 % CI from 1,000 bootstrap
   replicates over patients, plus the full clinical report (``<out>/train/eval/report.html``);
4. draws a small scaling curve (test AUC and loss against the number of training images), real
   BUS-BRA vs a generated datalist (``--generated``) or, when none is given, the busgen phantom as a
   stand-in for generated data;
5. writes ``<out>/bench_classify.json`` and prints a summary.

Run from the repository root (``runs/`` is git-ignored)::

    .venv/bin/python benchmarks/bench_classify.py --out runs/bench_classify
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUS_BRA = Path(os.environ.get("BUSGEN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bus_bra"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bus-bra", default=str(DEFAULT_BUS_BRA), help="BUS-BRA folder (bus_data.csv, Images/, Masks/)")
    p.add_argument("--out", default="runs/bench_classify")
    p.add_argument("--preset", default="preset_cpu_tiny")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--ks", default="50,100,200,400,800", help="scaling-curve training-set sizes ('' skips the curve)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--iterations", type=int, default=150, help="optimisation steps per scaling run")
    p.add_argument("--generated", default=None, help="generated datalist for the scaling curve (default: phantom stand-in)")
    args = p.parse_args()

    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.schema import save_datalist, summarize_datalist
    from busgen_classify.scaling import run_scaling
    from busgen_classify.workflow import evaluate, train

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = load_bus_bra(args.bus_bra, relative_to=out)
    data.pop("load_report", None)
    data.pop("unknown_devices", None)
    datalist = save_datalist(data, out / "bus_bra.json")
    splits = summarize_datalist(data)["splits"]

    t0 = time.time()
    res = train([args.preset], datalists=[str(datalist)], output_dir=str(out / "train"), max_epochs=args.epochs,
                progress_bar=False)
    train_s = time.time() - t0
    t0 = time.time()
    rep = evaluate([args.preset], datalists=[str(datalist)], output_dir=str(out / "train"), n_bootstrap=args.n_boot,
                   progress_bar=False)
    eval_s = time.time() - t0
    r = rep["results"]
    result = {
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_1min": os.getloadavg()[0]},
        "data": {"bus_bra_splits": splits},
        "setting": {"preset": args.preset, "epochs": args.epochs, "iterations": res["summary"].get("iterations"),
                    "lesion_crop": True},
        "train_seconds": round(train_s, 1),
        "evaluate_seconds": round(eval_s, 1),
        "best_val_auc": res["summary"].get("best_val_metric"),
        "best_val_epoch": res["summary"].get("best_val_epoch"),
        "test_auroc": r["auroc"],
        "test_auprc": r["auprc"],
        "test_sensitivity_at_0.5": r["at_threshold"]["sensitivity"],
        "test_specificity_at_0.5": r["at_threshold"]["specificity"],
        "test_sensitivity_at_specificity_0.9": r["at_matched_specificity"]["sensitivity"],
        "report": rep["files"]["html"],
    }
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if ks:
        gen = args.generated
        label = "generated"
        if gen is None:
            from busgen_monai.data.phantom import write_dataset

            gen = str(write_dataset(out / "phantom", n=max(ks) + max(ks) // 2, seed=0, size=(128, 128)))
            label = "phantom (stand-in for generated data)"
        t0 = time.time()
        sc = run_scaling(datalist, out / "scaling", ks=ks, generated_datalist=gen, repeats=args.repeats,
                         presets=[args.preset], iterations=args.iterations,
                         title=f"BUS-BRA test split: real vs {label}")
        result["scaling"] = {"generated_source": label, "seconds": round(time.time() - t0, 1),
                             "summary": sc["summary"], "plot": sc["plot"]}
    (out / "bench_classify.json").write_text(json.dumps(result, indent=2) + "\n")

    auc = r["auroc"]
    print(f"BUS-BRA test AUROC {auc['estimate']:.3f} (95% CI {auc['lower']:.3f}-{auc['upper']:.3f}, "
          f"{args.n_boot} bootstrap replicates over {auc['n_units']} patients)")
    print(f"training: {result['setting']['iterations']} iterations ({args.epochs} epochs) in {train_s:.1f} s; "
          f"evaluation + report {eval_s:.1f} s; 1-min load average {result['machine']['load_average_1min']:.1f}")
    if ks:
        for row in result["scaling"]["summary"]:
            print(f"  scaling {row['source']:>9} k={row['k']:<5} AUC {row['auc_mean']:.3f}  loss {row['loss_mean']:.3f}")
        print(f"scaling plot: {result['scaling']['plot']}")
    print(f"report: {result['report']}\nsummary: {out / 'bench_classify.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
