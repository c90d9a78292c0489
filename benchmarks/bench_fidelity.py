"""Fidelity of a BUS-BRA generator: does a classifier trained on its images match one trained on real images?

BUSGen's central claim (Yu et al., "A foundation generative model for breast ultrasound image analysis", Nature
Biomedical Engineering 2026) is that a downstream model trained on generated breast ultrasound does as well as one
trained on real images, and better on real + generated. This benchmark measures it on BUS-BRA (Gomez-Flores et al.,
"BUS-BRA: a breast ultrasound dataset for assessing computer-aided diagnosis systems", Medical Physics 2023,
doi 10.5281/zenodo.7730709) with the project's own pieces: the BUS-BRA loader (patient-wise 70/15/15 split, seed 0),
the generator (``--checkpoint``, default the shipped ``bundles/busgen_sample/models/model.pt``), the classifier
bundle ``bus_classifier`` (plugin busgen-classify, ``preset_cpu_tiny``: 0.3 M-parameter ResNet) run through
``busgen_monai.bundle_run.run_bundle``, the cleaning plugin and the cpsample privacy audit.

Full scale (the numbers of issue 14, a few hours on a 2-core CPU; resumable - re-run the same command after an
interruption, finished parts are skipped)::

    .venv/bin/python benchmarks/bench_fidelity.py --out runs/bench_fidelity

Tiny smoke run (minutes)::

    .venv/bin/python benchmarks/bench_fidelity.py --checkpoint /tmp/model.pt --n-real-max 60 --seeds 1 \
        --epochs 1 --steps 4 --settings crop --no-4x --judge-epochs 2 --n-boot 200 --out runs/bench_fidelity_tiny

What each number means (all on the held-out BUS-BRA test split, never seen by the generator or any classifier):

* **Arms** (same network, image size ``--image-size``, optimiser and budget: ``--epochs`` epochs of ``n_real``
  class-balanced draws each, no early stopping; the checkpoint with the best real-validation AUROC is tested, or the
  last one with ``--select final``): ``real`` = (a) the real training split (capped at ``--n-real-max``);
  ``gen_1x`` = (b) generated only, as many as real, pathology-balanced, devices following the training split's mix,
  boxes from the box prior fitted on it; ``gen_4x`` = (b') 4x as many; ``real+gen`` = (c) real + the ``gen_1x`` set.
  One generated set (generation seed 0) serves every seed; seeds change the classifier's initialisation and draws.
* **AUROC** per seed with a 95 % CI from ``--n-boot`` bootstrap replicates over patients (percentile), mean and
  standard deviation over seeds, the ratio to the real arm's mean (target >= 0.95 for generated-only), and the
  two-sided DeLong p (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837; Sun & Xu 2014) of each arm against
  the real arm of the same seed on the same test images.
* **Settings**: ``crop`` = the classifier's default lesion-box crop (margin 0.25) at training *and* test time (test
  crops use the datalist's ground-truth boxes, generated crops their conditioning boxes; real crops are cut from the
  full-resolution file, generated ones from the 64 px image, both then resized to ``--image-size``); ``whole`` = the
  whole image.
* **Conditioning agreement**: fraction of the ``gen_1x`` images that arm (a)'s classifier (first setting, seed 0)
  calls the requested pathology (malignant probability >= 0.5), before and after the cleaning filter (busgen-clean:
  judge trained on the real training split, threshold 0.5). Also that classifier's AUROC on the generated images.
* **KID** (Binkowski et al., "Demystifying MMD GANs", ICLR 2018: unbiased MMD^2 with the cubic polynomial kernel)
  between ``gen_1x`` and the real test images, with real validation vs real test as the floor a perfect generator
  would reach, in two offline feature spaces: ``pixel+randconv`` = ``benchmarks/bench_sample.py``'s features of the
  64 px grey view the generator sees (multi-scale intensity histograms, gradient statistics and a seeded
  random-weight MONAI network; ``kid_deep`` = the random network only; ``nn_dist`` = mean distance to the nearest real
  image), and ``classifier`` = the penultimate features of arm (a)'s classifier (seed 0, lesion crops). No ImageNet
  Inception network is used (none ships offline), so values are not comparable with published FID/KID.
* **Privacy audit** (busgen-cpsample): nearest real training image of every generated image by cosine similarity in
  the audit's feature space (random convolutions + pixels) and by MS-SSIM, max / p99, against the training set's own
  leave-one-out nearest neighbour (every training image); pass lines: the paper's bound (max cosine < 0.939, here in
  the project's feature space, which is not BUSGen's) and "no generated image closer than the closest pair of
  distinct training images" (cosine and MS-SSIM).
* **Sampling speed**: wall seconds per generated image (DPM-Solver++ ``--steps`` steps, batched CFG with the
  checkpoint's guidance weight, ``--threads`` threads), and the wall time of every part.

Outputs in ``--out``: ``data/bus_bra.json`` (datalist, training split capped), ``generated/`` (images, datalists),
``arms/<setting>/<arm>/seed<k>/`` (classifier run, ``eval/`` report, ``result.json``), ``clean/``, ``agreement/``,
``privacy/`` (histograms, top pairs), ``results.json`` and ``results.md`` (the table printed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUS_BRA = Path(os.environ.get("BUSGEN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bus_bra"
PAPER_COSINE_BOUND = 0.939  # BUSGen: max cosine similarity of generated images to their nearest training image
TIMES: dict[str, float] = {}


def log(msg: str) -> None:
    print(f"[bench_fidelity {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, obj) -> None:
    from busgen_monai.data.schema import atomic_write_text
    from busgen_monai.evaluation import to_jsonable

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=1) + "\n")


def cached(path: Path, config: dict, name: str, fn):
    """Result of ``fn()`` stored in ``path``; a finished part is read back instead of re-run (resumable). A stored
    result computed with other settings (e.g. more generated images, other epochs) is recomputed, never mixed in."""
    old = read_json(path)
    if old is not None:
        if old.get("config") == json.loads(json.dumps(config)):
            log(f"{name}: done earlier, read {path}")
            TIMES[name] = old.get("seconds", 0.0)
            return old
        log(f"{name}: {path} was computed with other settings ({old.get('config')}); recomputing")
    log(f"{name} ...")
    t0 = time.perf_counter()
    res = dict(fn())
    res.update(config=config, seconds=round(time.perf_counter() - t0, 1))
    write_json(path, res)
    TIMES[name] = res["seconds"]
    log(f"{name}: {res['seconds']:.1f} s")
    return res


# ---------------------------------------------------------------------------------------------------- data
def build_real_datalist(args, out: Path) -> tuple[Path, int]:
    """BUS-BRA datalist (patient-wise split), training split capped at ``--n-real-max`` (class-stratified, seed 0)."""
    from busgen_classify.data import stratified_subset
    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.schema import save_datalist

    path, meta = out / "data" / "bus_bra.json", out / "data" / "config.json"
    config = {"bus_bra": str(Path(args.bus_bra).resolve()), "n_real_max": args.n_real_max}
    if path.is_file() and read_json(meta) != config:
        raise SystemExit(f"{out} holds a run on other real data ({read_json(meta)}, now {config}); everything "
                         "downstream depends on it: use another --out")
    if not path.is_file():
        data = load_bus_bra(args.bus_bra, relative_to=path.parent)
        data.pop("load_report", None)
        data.pop("unknown_devices", None)
        train = data["training"]
        if args.n_real_max and args.n_real_max < len(train):
            labels = {p: i for i, p in enumerate(sorted({it["pathology"] for it in train}))}
            keep = stratified_subset([{"label": labels[it["pathology"]], "i": i} for i, it in enumerate(train)],
                                     args.n_real_max, seed=0)
            data["training"] = [train[k["i"]] for k in keep]
        save_datalist(data, path)
        write_json(meta, config)
    n_real = len(json.loads(path.read_text())["training"])
    return path, n_real


def subset_datalist(folder: Path, n: int, name: str) -> Path:
    """The first ``n`` items of a generated folder's datalist (the plan is prefix-stable and class-balanced)."""
    from busgen_monai.data.schema import make_datalist, save_datalist

    items = json.loads((folder / "datalist.json").read_text())["training"][:n]
    return save_datalist(make_datalist(items, name=name, description=f"first {n} generated images"),
                         folder / f"{name}.json")


# ---------------------------------------------------------------------------------------------------- generate
def generate(args, out: Path, real: Path, n_needed: int) -> dict:
    """Generate ``n_needed`` images (resumes; never shrinks an existing, larger set). Returns timing + provenance."""
    from busgen_monai.inferers import file_sha256, generator_settings, load_generator, run_generation
    from busgen_monai.schedulers import build_scheduler

    folder = out / "generated"
    n = max(n_needed, (read_json(folder / "run.json") or {}).get("n", 0))
    timing = read_json(folder / "timing.json") or {"seconds": 0.0, "images": 0}
    ckpt = Path(args.checkpoint)
    settings = generator_settings(ckpt)
    # always called: run_generation skips finished chunks and refuses a folder made with other settings
    net, codec = load_generator(ckpt)
    scheduler = build_scheduler(settings, "dpmpp")
    log(f"generation: {n} images ({settings['image_size']} px, {args.steps} DPM-Solver++ steps, "
        f"w={settings['guidance_w']}) in {folder}")
    t0 = time.perf_counter()
    with torch.inference_mode():
        res = run_generation(net, codec, scheduler, folder, n, image_size=settings["image_size"], seed=0,
                             datalist=str(real), pathologies=["benign", "malignant"],
                             guidance_w=settings["guidance_w"], num_inference_steps=args.steps, chunk_size=16,
                             provenance={"checkpoint": ckpt.name, "model_sha256": file_sha256(ckpt)}, progress=True)
    if res.generated:  # s/image counts only runs that generated something (a resume that finds all done adds 0)
        timing = {"seconds": timing["seconds"] + time.perf_counter() - t0, "images": timing["images"] + res.generated,
                  "threads": torch.get_num_threads()}
        write_json(folder / "timing.json", timing)
    TIMES["generate"] = round(timing["seconds"], 1)
    return {"folder": str(folder), "n": n, "image_size": settings["image_size"], "steps": args.steps,
            "guidance_w": settings["guidance_w"], "checkpoint": str(ckpt), "model_sha256": file_sha256(ckpt),
            "s_per_image": timing["seconds"] / timing["images"] if timing["images"] else None,
            "timed_images": timing["images"], "threads": timing.get("threads", torch.get_num_threads()),
            "sample_grid": str(folder / "sample_grid.png")}


# ---------------------------------------------------------------------------------------------------- classify
def classifier(args, config: str, output_dir: Path, real: Path, crop: bool, **overrides) -> None:
    from busgen_monai.bundle_run import run_bundle

    run_bundle("bus_classifier", f"{config},{args.preset}", output_dir=str(output_dir), datalists=[str(real)],
               image_size=[args.image_size] * 2, lesion_crop=crop, num_workers=0, progress_bar=False, **overrides)


def evaluate_model(args, arm_dir: Path, real: Path, crop: bool, eval_dir: Path, test_datalist: Path | None = None,
                   split: str = "test", features: bool = False, n_boot: int | None = None, seed: int = 0) -> Path:
    """Evaluate the arm's selected checkpoint on ``split`` of ``test_datalist`` (default the real one); returns the
    report folder (``predictions.csv``, ``report.json``; ``features.npz`` with ``features``)."""
    model = arm_dir / "models" / ("model_final.pt" if args.select == "final" else "model.pt")
    classifier(args, "train,evaluate", arm_dir, real, crop, test_datalists=[str(test_datalist or real)],
               test_split=split, eval_dir=str(eval_dir), model_path=str(model), n_bootstrap=n_boot or args.n_boot,
               tsne=features, gradcam_n=0, seed=seed)
    return eval_dir


def auroc_ci(pred_csv: Path, n_boot: int, seed: int = 0) -> dict:
    """AUROC with a patient-bootstrap 95 % CI from a ``predictions.csv`` (project statistics)."""
    from busgen_classify.handlers import read_predictions_csv
    from busgen_monai.evaluation import auroc, bootstrap_ci

    rows = read_predictions_csv(pred_csv)
    y = np.array([r["label"] for r in rows.values()])
    s = np.array([r["score"] for r in rows.values()])
    ci = bootstrap_ci(auroc, y, s, groups=np.array([r["patient_id"] for r in rows.values()]), n_boot=n_boot, seed=seed)
    return {"auroc": ci.estimate, "lower": ci.lower, "upper": ci.upper, "n_images": len(y),
            "n_patients": ci.n_units, "n_boot": n_boot}


def ref_setting(args) -> str:
    """The setting of the classifier that judges generated images (agreement, classifier-feature KID): box crop."""
    return "crop" if "crop" in args.settings else args.settings[0]


def train_arm(args, out: Path, real: Path, n_real: int, setting: str, arm: str, train_lists: list[Path],
              seed: int) -> dict:
    d = out / "arms" / setting / arm / f"seed{seed}"
    crop = setting == "crop"
    config = {"setting": setting, "arm": arm, "seed": seed, "epochs": args.epochs, "image_size": args.image_size,
              "preset": args.preset, "n_real": n_real, "select": args.select, "train": [p.name for p in train_lists],
              "steps": args.steps}

    def run():
        for sub in ("models", "eval"):  # a fresh run: no checkpoint of an interrupted or older run is tested
            shutil.rmtree(d / sub, ignore_errors=True)
        t0 = time.perf_counter()
        classifier(args, "train", d, real, crop, train_datalists=[str(p) for p in train_lists], seed=seed,
                   max_epochs=args.epochs, early_stop_patience=0, **{"train#sampler#num_samples": n_real})
        t_train = time.perf_counter() - t0
        ev = evaluate_model(args, d, real, crop, d / "eval", seed=seed)
        summary = read_json(d / "training_summary.json") or {}
        return {**auroc_ci(ev / "predictions.csv", args.n_boot, seed), "predictions": str(ev / "predictions.csv"),
                "train_seconds": round(t_train, 1), "iterations": summary.get("iterations"),
                "best_val_auc": summary.get("best_val_metric"),
                "n_train_images": {"gen_4x": 4 * n_real, "real+gen": 2 * n_real}.get(arm, n_real)}
    return cached(d / "result.json", config, f"{setting}/{arm}/seed{seed}", run)


def delong_vs(arm_res: dict, ref_res: dict) -> float:
    from busgen_classify.handlers import read_predictions_csv
    from busgen_monai.evaluation import delong_test

    a, b = read_predictions_csv(arm_res["predictions"]), read_predictions_csv(ref_res["predictions"])
    ids = sorted(a)
    y = np.array([a[i]["label"] for i in ids])
    return delong_test(y, [a[i]["score"] for i in ids], [b[i]["score"] for i in ids])[3]


# ---------------------------------------------------------------------------------------------------- other parts
def clean_part(args, out: Path, real: Path, gen_1x: Path) -> dict:
    from busgen_monai.plugins import discover_plugins

    registry = discover_plugins()
    judge = registry.component("clean", "train_judge")(str(real), out / "clean" / "judge", seeds=(0,),
                                                       epochs=args.judge_epochs)
    summary = registry.component("clean", "clean_datalist")(str(gen_1x), out / "clean" / "cleaned", judge,
                                                           threshold=0.5)
    kept = json.loads((out / "clean" / "cleaned" / "datalist.json").read_text())
    names = sorted(Path(it["image"]).name for _, items in _splits(kept) for it in items)
    return {"datalist": str(out / "clean" / "cleaned" / "datalist.json"), "kept_images": names,
            "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str, dict))}}


def _splits(data: dict):
    return [(s, data.get(s) or []) for s in ("training", "validation", "test")]


def agreement_part(args, out: Path, real: Path, gen_1x: Path, kept: list[str]) -> dict:
    """Arm (a)'s classifier (box-crop setting, seed 0) on the generated images: agreement with the requested pathology
    before and after cleaning, per pathology, and its AUROC on them; also its features of the real validation and test
    images (for the classifier-feature KID)."""
    from busgen_classify.handlers import read_predictions_csv

    setting = ref_setting(args)
    arm_dir = out / "arms" / setting / "real" / "seed0"
    ev = evaluate_model(args, arm_dir, real, setting == "crop", out / "agreement" / "generated", gen_1x, split="all",
                        features=True, n_boot=200)
    for split in ("validation", "test"):
        evaluate_model(args, arm_dir, real, setting == "crop", out / "agreement" / f"real_{split}", split=split,
                       features=True, n_boot=200)
    rows = read_predictions_csv(ev / "predictions.csv")
    keep = set(kept)

    def agree(sel):
        ok = [(r["score"] >= 0.5) == bool(r["label"]) for i, r in rows.items() if sel(i, r)]
        return {"fraction": float(np.mean(ok)) if ok else None, "n": len(ok)}

    res = {"classifier": f"{setting}/real/seed0", "raw": agree(lambda i, r: True),
           "cleaned": agree(lambda i, r: Path(i.split(":", 1)[1]).name in keep),
           "auroc_on_generated": auroc_ci(ev / "predictions.csv", 200)["auroc"],
           "called_malignant": float(np.mean([r["score"] >= 0.5 for r in rows.values()]))}
    for lab, name in ((0, "benign"), (1, "malignant")):
        res[f"raw_{name}"] = agree(lambda i, r, lab=lab: r["label"] == lab)
    return res


def _grey_views(items: list[tuple[Path, list]], size: int) -> torch.Tensor:
    """The 64 px square grey view the generator is trained on (cpsample audit's ``load_view``), as (N, 3, H, W) in
    [-1, 1] for ``bench_sample``'s feature function (grey replicated, so its colour feature is 0)."""
    from busgen_cpsample.audit import load_view

    arr = np.stack([load_view(p, b, True, size, size) for p, b in items]).astype(np.float32)
    return torch.from_numpy(arr / 127.5 - 1)[:, None].expand(-1, 3, -1, -1).contiguous()


def kid_part(args, out: Path, real: Path, gen_1x: Path) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_sample  # the project's offline KID and feature functions

    def records(path: Path, split: str | None) -> list[tuple[Path, list]]:
        data = json.loads(path.read_text())
        base = path.parent
        return [(base / it["image"], it.get("boxes") or []) for s, items in _splits(data) if split in (None, s)
                for it in items]

    net = bench_sample._feature_net()
    f = {k: bench_sample._features(_grey_views(records(p, s), 64), net)
         for k, (p, s) in {"gen": (gen_1x, None), "test": (real, "test"), "val": (real, "validation")}.items()}
    res = {"pixel+randconv": {"generated_vs_test": bench_sample._proxies(f["gen"], f["test"], bench_sample.N_DEEP),
                              "floor_validation_vs_test": bench_sample._proxies(f["val"], f["test"],
                                                                                bench_sample.N_DEEP),
                              "features": "bench_sample._features: 16-bin intensity histograms, mean |dx|, |dy| and "
                                          "std at 1, 1/2, 1/4 scale + 32 outputs of a seeded random-weight MONAI "
                                          "Classifier, 64 px square grey view; standardised by the real test set"}}
    cls = {}
    for k, p in {"gen": out / "agreement" / "generated", "val": out / "agreement" / "real_validation",
                 "test": out / "agreement" / "real_test"}.items():
        cls[k] = np.load(p / "features.npz")["features"].astype(np.float64)
    res["classifier"] = {"generated_vs_test": bench_sample._kid(cls["gen"], cls["test"]),
                         "floor_validation_vs_test": bench_sample._kid(cls["val"], cls["test"]),
                         "features": f"penultimate features ({cls['gen'].shape[1]}-d) of arm (a)'s classifier "
                                     f"({ref_setting(args)} setting, seed 0)"}
    return res


def privacy_part(args, out: Path, real: Path, gen_all: Path, n_real: int) -> dict:
    from busgen_monai.plugins import discover_plugins

    audit = discover_plugins().component("cpsample", "audit")
    s = audit(str(gen_all), str(real), out / "privacy", threshold=PAPER_COSINE_BOUND, rule="cosine",
              reference_max=n_real, progress=False)
    ref = s["reference_training_loo"]
    return {"n_generated": s["n_generated"], "n_training": s["n_training"],
            "cosine": {k: s["cosine"][k] for k in ("max", "p99", "median")},
            "ms_ssim": {k: s["ms_ssim"][k] for k in ("max", "p99", "median")},
            "training_loo": {"cosine": {k: ref["cosine"].get(k) for k in ("max", "p99", "median")},
                             "ms_ssim": {k: ref["ms_ssim"].get(k) for k in ("max", "p99", "median")}},
            "paper_bound_pass": s["cosine"]["max"] < PAPER_COSINE_BOUND,
            "closer_than_closest_training_pair": {
                "cosine": s["cosine"]["max"] >= ref["cosine"]["max"],
                "ms_ssim": s["ms_ssim"]["max"] >= ref["ms_ssim"]["max"]},
            "feature_space": s["features"]["extractor"].get("name"), "ms_ssim_mode": s["ms_ssim_settings"]["mode"],
            "histograms": s.get("histograms"), "top_pairs": s.get("top_pairs")}


# ---------------------------------------------------------------------------------------------------- report
def summarise(args, arms: dict) -> dict:
    table = {}
    for setting, by_arm in arms.items():
        ref = by_arm.get("real")
        ref_mean = float(np.mean([r["auroc"] for r in ref])) if ref else None
        for arm, runs in by_arm.items():
            aucs = [r["auroc"] for r in runs]
            row = {"n_train_images": runs[0]["n_train_images"], "auroc_mean": float(np.mean(aucs)),
                   "auroc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0, "per_seed": runs}
            if ref and arm != "real":
                row["ratio_to_real"] = row["auroc_mean"] / ref_mean
                row["delong_p_vs_real"] = [delong_vs(r, q) for r, q in zip(runs, ref)]
                row["diff_to_real"] = row["auroc_mean"] - ref_mean
            table.setdefault(setting, {})[arm] = row
    return table


def markdown(res: dict) -> str:
    L = [f"## BUS-BRA fidelity benchmark ({res['n_real']} real training images, test split "
         f"{res['n_test']} images, {len(res['seeds'])} seed(s), {res['epochs']} epochs)", ""]
    for setting, rows in res["arms"].items():
        L += [f"### {setting} ({'lesion-box crop' if setting == 'crop' else 'whole image'}, {res['image_size']} px)",
              "", "| arm | train images | AUROC mean ± sd | per seed [95% patient-bootstrap CI] | x real | "
              "DeLong p vs real (per seed) |", "|---|---|---|---|---|---|"]
        for arm, r in rows.items():
            seeds = "; ".join(f"{q['auroc']:.3f} [{q['lower']:.3f}-{q['upper']:.3f}]" for q in r["per_seed"])
            ratio = f"{r['ratio_to_real']:.3f}" if "ratio_to_real" in r else "-"
            p = ", ".join(f"{v:.3g}" for v in r.get("delong_p_vs_real", [])) or "-"
            L.append(f"| {arm} | {r['n_train_images']} | {r['auroc_mean']:.3f} ± {r['auroc_sd']:.3f} | {seeds} | "
                     f"{ratio} | {p} |")
        L.append("")
    a = res.get("agreement")
    if a:
        L.append(f"Conditioning agreement ({a['classifier']} classifier): raw {a['raw']['fraction']:.1%} of "
                 f"{a['raw']['n']} (benign {a['raw_benign']['fraction']:.1%}, malignant "
                 f"{a['raw_malignant']['fraction']:.1%}; calls {a['called_malignant']:.1%} malignant), after cleaning "
                 + (f"{a['cleaned']['fraction']:.1%} of {a['cleaned']['n']}" if a["cleaned"]["n"] else "none kept")
                 + f"; its AUROC on the generated images {a['auroc_on_generated']:.3f}")
    k = res.get("kid")
    if k:
        pk, ck = k["pixel+randconv"], k["classifier"]
        L.append(f"KID generated vs real test (floor: real validation vs test): pixel+randconv "
                 f"{pk['generated_vs_test']['kid']:.4g} ± {pk['generated_vs_test']['kid_halves_sd']:.4g} (floor "
                 f"{pk['floor_validation_vs_test']['kid']:.4g}), random-net part {pk['generated_vs_test']['kid_deep']:.4g}"
                 f" (floor {pk['floor_validation_vs_test']['kid_deep']:.4g}); classifier features "
                 f"{ck['generated_vs_test']:.4g} (floor {ck['floor_validation_vs_test']:.4g})")
    pv = res.get("privacy")
    if pv:
        c, m, rc, rm = pv["cosine"], pv["ms_ssim"], pv["training_loo"]["cosine"], pv["training_loo"]["ms_ssim"]
        L.append(f"Privacy ({pv['n_generated']} generated vs {pv['n_training']} training, {pv['feature_space']}): "
                 f"cosine max {c['max']:.3f} / p99 {c['p99']:.3f} (training LOO max {rc['max']:.3f} / p99 "
                 f"{rc['p99']:.3f}); MS-SSIM max {m['max']:.3f} / p99 {m['p99']:.3f} (LOO max {rm['max']:.3f} / p99 "
                 f"{rm['p99']:.3f}); paper bound max cosine < {PAPER_COSINE_BOUND}: "
                 f"{'PASS' if pv['paper_bound_pass'] else 'FAIL'}; no image closer than the closest training pair: "
                 + ("PASS" if not any(pv["closer_than_closest_training_pair"].values()) else
                    f"FAIL {pv['closer_than_closest_training_pair']}"))
    g = res["generation"]
    L.append(f"Sampling: {g['s_per_image']:.3f} s/image ({g['image_size']} px, {g['steps']} steps, "
             f"{g['threads']} thread(s), {g['timed_images']} images timed)" if g["s_per_image"] else "Sampling: no "
             "images generated in this run (timing from none)")
    sec = res["seconds"]
    runs = {k: v for k, v in sec.items() if "/seed" in k}
    parts = {k: v for k, v in sec.items() if k not in runs}
    if runs:
        parts["classifier runs"] = sum(runs.values())
    L.append("Wall time (s; each part as measured when it ran): " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
             + (f" ({len(runs)} classifier runs, {np.mean(list(runs.values())):.0f} s each on average)" if runs else ""))
    return "\n".join(L) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring for details.")
    p.add_argument("--checkpoint", default=None, help="generator model file (default: the shipped one)")
    p.add_argument("--bus-bra", default=str(DEFAULT_BUS_BRA), help="BUS-BRA folder (bus_data.csv, Images/, Masks/)")
    p.add_argument("--out", default="runs/bench_fidelity")
    p.add_argument("--n-real-max", type=int, default=0, help="cap on real training images (0: all)")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds per arm")
    p.add_argument("--epochs", type=int, default=12, help="classifier epochs (of n_real draws each) for every arm")
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps")
    p.add_argument("--settings", default="crop,whole", help="crop, whole or both (comma-separated)")
    p.add_argument("--no-4x", action="store_true", help="skip the 4x generated-only arm")
    p.add_argument("--image-size", type=int, default=64, help="classifier input size for every arm")
    p.add_argument("--preset", default="preset_cpu_tiny", help="bus_classifier preset")
    p.add_argument("--select", choices=("best", "final"), default="best",
                   help="test the best real-validation checkpoint or the last one")
    p.add_argument("--n-boot", type=int, default=1000, help="patient-bootstrap replicates")
    p.add_argument("--judge-epochs", type=int, default=30, help="cleaning judge training epochs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arms-only", action="store_true", help="train the classifier arms of --settings and stop (run "
                   "another invocation with other --settings in parallel; a last full run collects everything)")
    p.add_argument("--real-only", action="store_true", help="train only the real arms (no generator needed) and "
                   "stop; a later full run reuses them")
    args = p.parse_args()
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if not args.settings or set(args.settings) - {"crop", "whole"}:
        p.error("--settings takes crop, whole or crop,whole")
    torch.set_num_threads(args.threads)
    if args.checkpoint is None and not args.real_only:
        from busgen_monai.inferers import default_generator

        args.checkpoint = str(default_generator())
    out = Path(args.out).resolve()
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    real, n_real = build_real_datalist(args, out)
    TIMES["datalist"] = round(time.perf_counter() - t0, 1)
    n_test = len(json.loads(real.read_text())["test"])
    log(f"real datalist {real}: {n_real} training images, {n_test} test images")
    if args.real_only:
        for setting in args.settings:
            for seed in range(args.seeds):
                r = train_arm(args, out, real, n_real, setting, "real", [real], seed)
                log(f"{setting}/real/seed{seed}: test AUROC {r['auroc']:.3f} [{r['lower']:.3f}-{r['upper']:.3f}]")
        return 0

    gen = generate(args, out, real, n_real * (1 if args.no_4x else 4))
    folder = Path(gen["folder"])
    gen_1x = subset_datalist(folder, n_real, "gen_1x")
    arms_def = {"real": [real], "gen_1x": [gen_1x]}
    if not args.no_4x:
        arms_def["gen_4x"] = [subset_datalist(folder, 4 * n_real, "gen_4x")]
    arms_def["real+gen"] = [real, gen_1x]

    arms: dict = {}
    for setting in args.settings:
        for arm, lists in arms_def.items():
            for seed in range(args.seeds):
                r = train_arm(args, out, real, n_real, setting, arm, lists, seed)
                arms.setdefault(setting, {}).setdefault(arm, []).append(r)
                log(f"{setting}/{arm}/seed{seed}: test AUROC {r['auroc']:.3f} [{r['lower']:.3f}-{r['upper']:.3f}]")

    if args.arms_only:
        return 0
    shared = {"n_real": n_real, "steps": args.steps, "model_sha256": gen["model_sha256"]}
    cl = cached(out / "clean" / "result.json", {**shared, "judge_epochs": args.judge_epochs}, "clean",
                lambda: clean_part(args, out, real, gen_1x))
    judged_by = {"setting": ref_setting(args), "epochs": args.epochs, "select": args.select, "preset": args.preset,
                 "image_size": args.image_size}
    agr = cached(out / "agreement" / "result.json", {**shared, **judged_by, "judge_epochs": args.judge_epochs},
                 "agreement",
                 lambda: agreement_part(args, out, real, gen_1x, cl["kept_images"]))
    kid = cached(out / "kid" / "result.json", {**shared, **judged_by}, "kid",
                 lambda: kid_part(args, out, real, gen_1x))
    n_gen = gen["n"]
    priv = cached(out / "privacy" / "result.json", {**shared, "n_generated": n_gen}, "privacy",
                  lambda: privacy_part(args, out, real, subset_datalist(folder, n_gen, "gen_all"), n_real))

    t0 = time.perf_counter()
    table = summarise(args, arms)
    TIMES["statistics"] = round(time.perf_counter() - t0, 1)
    TIMES["total of this invocation"] = round(time.perf_counter() - t_all, 1)
    res = {"n_real": n_real, "n_test": n_test, "seeds": list(range(args.seeds)), "epochs": args.epochs,
           "image_size": args.image_size, "preset": args.preset, "select": args.select, "arms": table,
           "agreement": {k: v for k, v in agr.items() if k != "config"},
           "cleaning": cl["summary"], "kid": kid, "privacy": priv, "generation": gen, "seconds": dict(TIMES),
           "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
                       "load_average_1min": os.getloadavg()[0]},
           "command": " ".join(sys.argv)}
    text = markdown(res)
    write_json(out / "results.json", res)
    (out / "results.md").write_text(text)
    print("\n" + text)
    log(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
