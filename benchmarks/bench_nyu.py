"""Benchmark of the busgen-nyu bundle (NYU-style breast-level classifier) on BUS-BRA, CPU-sized.

1. builds the BUS-BRA datalist (patient-wise 70/15/15 split stratified by pathology, seed 0: the split the shipped
   generator was trained on, so its validation and test patients are unseen) and groups images into breasts by
   patient (BUS-BRA has one lesion per patient; its ``Side`` column names the half of a dual-view capture);
2. trains the model on the real training breasts (ResNet-18 trunk, first three stages, 64 px grey input without
   the stem max-pool: 8 x 8 saliency maps as in the paper; breast-level labels only), selects the checkpoint on the
   validation breasts' malignant AUROC, and evaluates it on the test breasts: breast-level AUROC / AUPRC with 95 %
   patient-bootstrap CIs, operating points, localisation against the BUS-BRA lesion masks (pointing game, Dice;
   masks never used for training), and the hybrid reader model (BI-RADS as the reader) with DeLong tests;
3. with ``--generated`` (a generated datalist, e.g. from ``busgen sample``; its images are 64 px, so everything
   runs at 64 px), trains the same model on generated breasts (one image per breast), selects on the same real
   validation breasts and evaluates on the same real test breasts; DeLong test real-trained vs generated-trained;
4. writes ``<out>/bench_nyu.json`` and, with ``--results-md``, a Markdown summary.

Run from the repository root (``runs/`` is git-ignored); about 20 minutes on one CPU thread::

    busgen sample runs/nyu_gen --n 1309 --seed 0   # optional (~30 min); the committed results used the 1,309 images
                                                   # (seed 0) of the fidelity benchmark
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_nyu.py --out runs/bench_nyu \\
        --generated runs/nyu_gen/datalist.json --results-md docs/benchmarks/bench_nyu_results.md
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

SETTINGS = {"backbone": "resnet18", "n_stages": 3, "no_max_pool": True, "image_size": [64, 64], "top_t": 0.05,
            "beta": 0.01, "batch_size": 16, "learning_rate": 0.001, "weight_decay": 0.0001, "attention_hidden": 128,
            "max_images": 8, "progress_bar": False, "group_by": "patient"}


def _ci(d: dict) -> str:
    if d.get("lower") is None:
        return f"{d['estimate']:.3f}"
    return f"{d['estimate']:.3f} ({d['lower']:.3f}-{d['upper']:.3f})"


def run_one(name: str, train_lists: list[str], val_lists: list[str], test_lists: list[str], out: Path, epochs: int,
            n_boot: int) -> dict:
    from busgen_nyu.data import breast_counts, load_breasts
    from busgen_nyu.workflow import evaluate, train

    common = dict(SETTINGS, train_datalists=train_lists, val_datalists=val_lists, datalists=test_lists)
    t0 = time.time()
    res = train([], output_dir=str(out / name), max_epochs=epochs, early_stop_patience=max(2, epochs // 2), **common)
    train_s = time.time() - t0
    t1 = time.time()
    rep = evaluate([], output_dir=str(out / name), n_bootstrap=n_boot, **common)
    eval_s = time.time() - t1
    return {"train_breasts": breast_counts(load_breasts(train_lists, "training", group_by="patient", validate=False)),
            "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1), "summary": res["summary"],
            "results": rep["results"], "report": rep["files"]["html"], "breasts_csv": rep["files"]["breasts"]}


def _scores(path: str) -> dict[str, tuple[int, float]]:
    import csv

    with open(path, newline="") as fh:
        return {r["breast_id"]: (int(r["label_malignant"]), float(r["prob_malignant"])) for r in csv.DictReader(fh)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bus-bra", default=str(DEFAULT_BUS_BRA), help="BUS-BRA folder (bus_data.csv, Images/, Masks/)")
    p.add_argument("--out", default="runs/bench_nyu")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--generated", default=None, help="generated datalist (training split used) for the second model")
    p.add_argument("--results-md", default=None, help="also write a Markdown summary here")
    p.add_argument("--report-only", action="store_true", help="rewrite --results-md from <out>/bench_nyu.json")
    args = p.parse_args()
    if args.report_only:
        write_markdown(json.loads((Path(args.out) / "bench_nyu.json").read_text()), args)
        return 0

    import numpy as np

    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.schema import save_datalist
    from busgen_monai.evaluation import delong_test
    from busgen_monai.utils.io import atomic_write_json
    from busgen_nyu.data import breast_counts, load_breasts

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = load_bus_bra(args.bus_bra, relative_to=out)
    data.pop("load_report", None)
    data.pop("unknown_devices", None)
    real = str(save_datalist(data, out / "bus_bra.json"))
    counts = {s: breast_counts(load_breasts(real, s, group_by="patient")) for s in ("training", "validation", "test")}
    payload: dict = {"settings": SETTINGS, "epochs": args.epochs, "bootstrap_replicates": args.n_boot,
                     "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                     "torch": torch.__version__, "bus_bra_breasts": counts, "models": {}}
    payload["models"]["real"] = run_one("real", [real], [real], [real], out, args.epochs, args.n_boot)
    atomic_write_json(out / "bench_nyu.json", payload, indent=2)
    if args.generated:
        payload["generated_datalist"] = str(args.generated)
        payload["models"]["generated"] = run_one("generated", [args.generated], [real], [real], out, args.epochs, args.n_boot)
        a, b = _scores(payload["models"]["real"]["breasts_csv"]), _scores(payload["models"]["generated"]["breasts_csv"])
        ids = sorted(a)
        y = np.asarray([a[i][0] for i in ids])
        auc_a, auc_b, z, pval, _ = delong_test(y, [a[i][1] for i in ids], [b[i][1] for i in ids])
        payload["real_vs_generated_delong"] = {"auroc_real": auc_a, "auroc_generated": auc_b, "z": z, "p_value": pval}
    atomic_write_json(out / "bench_nyu.json", payload, indent=2)

    write_markdown(payload, args)
    return 0


def _relative(obj):
    """Absolute paths under the repository root -> relative (no machine paths in the committed results)."""
    if isinstance(obj, dict):
        return {k: _relative(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(ROOT) + os.sep):
        return os.path.relpath(obj, ROOT)
    return obj


def write_markdown(payload: dict, args) -> None:
    from busgen_monai.utils.io import atomic_write_json, atomic_write_text

    counts = payload["bus_bra_breasts"]
    lines = ["# Benchmark: NYU-style breast-level classifier (busgen-nyu) on BUS-BRA", "",
             "Command (from the repository root, one CPU thread):", "",
             "```bash", "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_nyu.py --out runs/bench_nyu "
             + (f"--generated {payload['generated_datalist']} " if payload.get("generated_datalist") else "") + "--results-md docs/benchmarks/bench_nyu_results.md",
             "```", "",
             f"Data: BUS-BRA (Gomez-Flores et al., Med. Phys. 2023), patient-wise 70/15/15 split (seed 0), breasts = "
             f"patients (1-2 images each). Breasts: training {counts['training']['breasts']}, validation "
             f"{counts['validation']['breasts']}, test {counts['test']['breasts']} "
             f"({counts['test'].get('malignant', 0)} malignant). Model: ResNet-18 trunk (3 stages), 64 px grey, "
             f"8 x 8 saliency maps, top-t {SETTINGS['top_t']}, beta {SETTINGS['beta']}, Adam lr {SETTINGS['learning_rate']}, "
             f"at most {payload['epochs']} epochs (early stopping on the validation malignant AUROC), {payload['threads']} thread(s), "
             f"{payload['bootstrap_replicates']} patient-bootstrap replicates. CPU budget: deliberately small (this is a "
             "smoke-scale run, far from the paper's 288,767 exams and 30-run random search).", "",
             "| model | train s | breast AUROC (95 % CI) | AUPRC | sens / spec at 0.5 | pointing game (tol.) | strict | Dice (0.5 x max) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in payload["models"].items():
        r = m["results"]
        loc = r.get("localisation", {})
        op = r["at_threshold"]
        lines.append(f"| trained on {name} | {m['train_seconds']:.0f} | {_ci(r['breast_auroc (malignant)'])} | "
                     f"{_ci(r['breast_auprc (malignant)'])} | {op['sensitivity']['estimate']:.2f} / {op['specificity']['estimate']:.2f} | "
                     f"{_ci(loc['pointing_game']) if loc else '-'} | "
                     f"{_ci(loc['pointing_game_strict (peak inside the mask)']) if loc else '-'} | "
                     f"{_ci(loc['dice (saliency >= 0.5 x its maximum)']) if loc else '-'} |")
    lines += ["", "Hybrid reader model (reader = BUS-BRA BI-RADS; hybrid = mean of the standardised AI score and BI-RADS; "
              "AUROC with DeLong 95 % CI; DeLong two-sided p):", "",
              "| model | AI | reader | hybrid | p hybrid vs reader | p hybrid vs AI | p AI vs reader |", "|---|---|---|---|---|---|---|"]
    for name, m in payload["models"].items():
        h = m["results"].get("hybrid_reader_model", {})
        if "auroc_ai" not in h:
            continue
        lines.append(f"| trained on {name} | {_ci(h['auroc_ai'])} | {_ci(h['auroc_reader'])} | {_ci(h['auroc_hybrid'])} | "
                     f"{h['delong hybrid vs reader']['p_value']:.3g} | {h['delong hybrid vs ai']['p_value']:.3g} | "
                     f"{h['delong ai vs reader']['p_value']:.3g} |")
    if "real_vs_generated_delong" in payload:
        d = payload["real_vs_generated_delong"]
        lines += ["", f"Real-trained vs generated-trained on the same test breasts: AUROC {d['auroc_real']:.3f} vs "
                  f"{d['auroc_generated']:.3f}, DeLong z = {d['z']:.2f}, p = {d['p_value']:.3g}."]
    lines += ["", "Notes:", "",
              "- BUS-BRA's BI-RADS is the recorded clinical assessment of each lesion, not an independent reader study; "
              "the hybrid rows demonstrate the analysis, they are not a reader-study result.",
              "- The threshold 0.5 is not calibrated (the two models sit on opposite sides of it); operating points at "
              "90 % specificity, the benign AUROC, image-level AUROC and per-class localisation are in the JSON.",
              "- Localisation: the pointing game uses the peak of the saliency map of the image's own pathology class, "
              "hit when within 15 px at 224 px (Zhang et al., ECCV 2016; 4.3 px at 64 px) of the BUS-BRA lesion mask; "
              "strict = inside the mask; Dice of the map thresholded at half its maximum. Masks never enter training.",
              "- Generated breasts hold one image each (the generator draws independent lesions); checkpoint selection "
              "for both models uses the same real validation breasts, evaluation the same real test breasts.",
              f"- Wall time on a shared 2-core machine: {sum(m['train_seconds'] + m['eval_seconds'] for m in payload['models'].values()):.0f} s "
              "for training and evaluation of all models.",
              f"- Full numbers: `{Path(args.results_md).with_suffix('.json').as_posix() if args.results_md else 'bench_nyu.json'}`; "
              "HTML reports under `<out>/<model>/eval/`.", ""]
    text = "\n".join(lines)
    print(text)
    if args.results_md:
        atomic_write_text(Path(args.results_md), text)
        atomic_write_json(Path(args.results_md).with_suffix(".json"), _relative(payload), indent=2)


if __name__ == "__main__":
    raise SystemExit(main())
