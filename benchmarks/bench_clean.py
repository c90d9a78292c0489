"""Benchmark of busgen-clean on CPU: does cleaning generated data help a downstream classifier?

Steps (all on the busgen phantom, at the ``tiny`` preset's 32 px):

1. real phantom: a training/validation set (``--n-real``) and a separate real test set (``--n-test``, its own seed);
2. pretrain the ``tiny`` conditional diffusion model briefly on the real training split (``busgen_pretrain``
   bundle) and generate ``--n-gen`` labelled images with it (``busgen_sample`` bundle);
3. train the cleaning judge on the real training split and clean the generated set (label check; threshold
   given or chosen for ``--target-precision`` on the real validation split);
4. train the same small classifier (busgen_clean's MONAI ResNet on whole images, ``--clf-seeds`` ensemble) on
   (a) the cleaned set, (b) a uniform random subset of the uncleaned set of the same size (what a user without a
   cleaner would get) and (c) a random uncleaned subset with the cleaned set's class counts (cleaning also
   changes the class balance: (c) separates that effect from the removal of mislabelled images);
5. evaluate both on the real test set: AUROC with patient-level bootstrap 95 % CIs (1,000 replicates) and the
   DeLong tests of (a) vs (b) and (a) vs (c); a classifier trained on the real training split is shown for reference.

Usage::

    .venv/bin/python benchmarks/bench_clean.py                     # ~6-10 min on a shared 2-core CPU
    .venv/bin/python benchmarks/bench_clean.py --checkpoint runs/demo/pretrain/model.pt   # skip pretraining
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_clean")
    p.add_argument("--n-real", type=int, default=400)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--n-gen", type=int, default=320)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=40)
    p.add_argument("--checkpoint", help="use this generator instead of pretraining one")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--target-precision", type=float, help="choose the threshold on real validation data instead")
    p.add_argument("--judge-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clf-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clf-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    from busgen_monai.bundle_run import run_bundle
    from busgen_monai.data.phantom import write_dataset
    from busgen_monai.data.schema import iter_items, load_datalist
    from busgen_monai.evaluation import auroc, bootstrap_ci, delong_test
    from busgen_monai.inferers import export_generator, resolve_checkpoint

    from busgen_clean.judge import read_split_items, train_judge
    from busgen_clean.report import clean_datalist

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings = {}
    real = write_dataset(out / "real", n=args.n_real, seed=100, size=(args.size, args.size))
    test = write_dataset(out / "real_test", n=args.n_test, seed=200, size=(args.size, args.size),
                         split_fractions=(0.0, 0.0, 1.0))
    timings["phantom"] = time.time() - t0

    # --- generator
    t = time.time()
    if args.checkpoint:
        model = Path(args.checkpoint)
    else:
        pre = out / "pretrain"
        if not (pre / "model.pt").is_file():
            run_bundle("busgen_pretrain", "train", datalist=str(real), output_dir=str(pre), preset_name="tiny",
                       max_epochs=args.pretrain_epochs, num_workers=0, progress_bar=False,
                       checkpoint_interval=500, sample_interval=args.pretrain_epochs, val_interval=1000)
            export_generator(resolve_checkpoint(pre / "models"), pre / "model.pt")
        model = pre / "model.pt"
    timings["pretrain"] = time.time() - t
    t = time.time()
    gen = out / "generated"
    if not (gen / "datalist.json").is_file():
        run_bundle("busgen_sample", "inference", checkpoint=str(model), preset_name="tiny", datalist=str(real),
                   output_dir=str(gen), num_images=args.n_gen, num_inference_steps=20, chunk_size=16, progress=False)
    timings["generate"] = time.time() - t

    # --- judge + cleaning
    t = time.time()
    judge = train_judge(real, out / "judge", seeds=args.judge_seeds, epochs=30, image_size=args.size)
    timings["judge"] = time.time() - t
    t = time.time()
    summary = clean_datalist(gen / "datalist.json", out / "cleaned", judge,
                             threshold=None if args.target_precision else args.threshold,
                             target_precision=args.target_precision, validation=str(real) if args.target_precision
                             else None)
    timings["clean"] = time.time() - t

    # --- downstream: cleaned vs same-size random uncleaned subset
    gen_data = load_datalist(gen / "datalist.json", check_files=False)
    all_gen = [dict(it, image=str((gen / it["image"]).resolve())) for _, _, it in iter_items(gen_data)]
    clean_data = load_datalist(out / "cleaned" / "datalist.json", check_files=False)
    cleaned = [dict(it, image=str((out / "cleaned" / it["image"]).resolve())) for _, _, it in iter_items(clean_data)]
    k = len(cleaned)
    subset = random.Random(0).sample(all_gen, k)
    # a second control with the cleaned set's class counts (cleaning also changes the class balance)
    rng = random.Random(1)
    matched = []
    for c in ("benign", "malignant"):
        pool = [it for it in all_gen if it["pathology"] == c]
        matched += rng.sample(pool, min(len(pool), sum(it["pathology"] == c for it in cleaned)))

    def as_datalist(items, name):
        return {"schema_version": 1, "name": name, "pathologies": ["benign", "malignant"],
                "training": [dict(it, split="training") for it in items], "validation": [], "test": []}

    real_train = [dict(it, image=str((real.parent / it["image"]).resolve()))
                  for it in read_split_items(real, ["training"])[0]]
    test_items, test_base, _ = read_split_items(test)
    y = np.array([it["pathology"] == "malignant" for it in test_items])
    groups = [it["patient_id"] for it in test_items]
    results, scores = {}, {}
    t = time.time()
    arms = (("cleaned", cleaned), ("uncleaned_subset", subset), ("uncleaned_class_matched", matched),
            ("real_reference", real_train))
    for name, items in arms:
        clf = train_judge(as_datalist(items, name), None, seeds=args.clf_seeds, epochs=args.clf_epochs,
                          image_size=args.size, crop="image", classes=["benign", "malignant"],
                          train_splits=("training",), val_splits=())
        s = clf.predict_proba(test_items, test_base)[:, 1]
        scores[name] = s
        ci = bootstrap_ci(auroc, y, s, groups=groups, n_boot=1000, seed=0)
        counts = {c: sum(it["pathology"] == c for it in items) for c in ("benign", "malignant")}
        results[name] = {"n_train": len(items), "class_counts": counts, "auroc": float(auroc(y, s)),
                         "ci95": [float(ci.lower), float(ci.upper)]}
    timings["downstream"] = time.time() - t
    _, _, _, p_value, _ = delong_test(y, scores["cleaned"], scores["uncleaned_subset"])
    _, _, _, p_matched, _ = delong_test(y, scores["cleaned"], scores["uncleaned_class_matched"])
    # how many of the generated labels does the judge doubt, per class
    report = {
        "generated": len(all_gen), "kept": summary["kept"], "rejected": summary["rejected"],
        "per_class": summary["per_class"], "label_threshold": summary["settings"]["label_threshold"],
        "judge_validation": judge.meta.get("validation"), "downstream_on_real_test": results,
        "delong_cleaned_vs_uncleaned_p": float(p_value),
        "delong_cleaned_vs_class_matched_p": float(p_matched), "n_test": len(test_items),
        "seconds": {k_: round(v, 1) for k_, v in timings.items()}, "total_seconds": round(time.time() - t0, 1),
    }
    (out / "bench_clean.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    a, b = results["cleaned"], results["uncleaned_subset"]
    print(f"\nAUROC on real test (n={len(test_items)}): cleaned {a['auroc']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]"
          f" vs uncleaned subset {b['auroc']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] (n_train={k} each); "
          f"DeLong p = {p_value:.3g}; class-matched uncleaned {results['uncleaned_class_matched']['auroc']:.3f} "
          f"(p = {p_matched:.3g}); real-data reference {results['real_reference']['auroc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
