"""Few-shot LoRA adaptation on BUS-BRA: does adapting to an unseen device make generated images look like it?

Base = ``tiny`` preset (32 px) pretrained briefly (busgen_pretrain bundle) on GE-LOGIQ-5 / GE-LOGIQ-7 images only;
adapted (busgen_adapt bundle) on ~30 TOSHIBA-Aplio-300 images. A logistic regression on intensity/texture statistics,
trained on real 32 px images of the three devices, classifies images generated with device = TOSHIBA-Aplio-300 by
the base (before) and by base + adapter (after). Reports the fraction classified as Toshiba; writes a before/after
grid under /tmp/bench_adapt.

    .venv/bin/python benchmarks/bench_adapt.py [--pretrain_epochs 24] [--adapt_epochs 60]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TOSHIBA, GE = "TOSHIBA-Aplio-300", ("GE-LOGIQ-5", "GE-LOGIQ-7")


def features(img: np.ndarray) -> np.ndarray:
    """(H, W) grey in [0, 1] -> intensity/texture statistics."""
    g = img.astype(np.float64)
    gy, gx = np.gradient(g)
    rows = g.mean(1).reshape(8, -1).mean(1)
    cols = g.mean(0).reshape(8, -1).mean(1)
    hist = np.histogram(g, bins=8, range=(0, 1))[0] / g.size
    return np.concatenate([[g.mean(), g.std(), np.abs(gx).mean(), np.abs(gy).mean(),
                            *np.percentile(g, [5, 25, 50, 75, 95])], rows, cols, hist])


def load_grey(path, size=32) -> np.ndarray:
    from PIL import Image

    im = Image.open(path).convert("L").resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.float64) / 255.0


def main(pretrain_epochs: int = 6, adapt_epochs: int = 15, n_adapt: int = 30, n_gen: int = 24, out: str = "/tmp/bench_adapt",
         base: str | None = None, lora_rank: int = 8, lr: float = 2e-3):
    torch.set_num_threads(1)
    from monai.bundle import run

    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.schema import save_datalist
    from busgen_monai.inferers import BoxPrior, load_generator, run_generation
    from busgen_monai.adaptation.adapt import load_adapted_generator
    from busgen_monai.schedulers import build_scheduler
    from busgen_monai.presets import get_preset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root = Path(os.environ.get("BUSGEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "bus_bra"
    dl = load_bus_bra(root)
    if not isinstance(dl, dict):
        dl = dl[0]
    items = [dict(it, image=str(root / it["image"]) if not Path(it["image"]).is_absolute() else it["image"])
             for split in ("training", "validation", "test") for it in dl.get(split, [])]
    for it in items:
        if "mask" in it and it["mask"] and not Path(it["mask"]).is_absolute():
            it["mask"] = str(root / it["mask"])
    rng = np.random.default_rng(0)
    by_dev = {d: [it for it in items if it.get("device") == d] for d in (*GE, TOSHIBA)}
    print({d: len(v) for d, v in by_dev.items()})
    meta = {k: v for k, v in dl.items() if k not in ("training", "validation", "test")}

    def write(name, train, val):
        d = dict(meta, training=train, validation=val, devices=sorted({it["device"] for it in train + val}))
        p = out / f"{name}.json"
        save_datalist(d, p) if False else p.write_text(json.dumps(d))
        return p

    def split(its, name):
        its = [it for it in its if it["split"] == name]
        rng.shuffle(its)
        return its

    ge = [it for d in GE for it in by_dev[d]]
    base_dl = write("base", split(ge, "training")[:400], split(ge, "validation")[:8])
    tosh_train, tosh_val = split(by_dev[TOSHIBA], "training"), split(by_dev[TOSHIBA], "validation")
    tosh = tosh_train[:n_adapt]
    adapt_dl = write("adapt", tosh, tosh_val[:8])
    held_out = {id(it) for it in tosh + tosh_val[:8]}

    # ---- base: pretrain the tiny preset on GE only
    pre_out = out / "pretrain"
    if base is None:
        run(config_file=str(ROOT / "bundles/busgen_pretrain/configs/train.json"),
            bundle_root=str(ROOT / "bundles/busgen_pretrain"), datalist=str(base_dl), output_dir=str(pre_out),
            preset_name="tiny", max_epochs=pretrain_epochs, num_workers=0, resume=False, progress_bar=False,
            sample_steps=5, val_num_items=4, sample_interval=1000, log_every=50, batch_size=16, lr=2e-3)
    from busgen_monai.engines import latest_checkpoint
    base_ckpt = latest_checkpoint(pre_out / "models") if base is None else Path(base)
    t_pre = time.time() - t0
    # ---- adapt on Toshiba
    ad_out = out / "adapt"
    run(config_file=[str(ROOT / "bundles/busgen_pretrain/configs/train.json"),  # the adapt config overlays it
                     str(ROOT / "bundles/busgen_adapt/configs/train.json")], bundle_root=str(ROOT / "bundles/busgen_adapt"),
        base_checkpoint=str(base_ckpt), datalist=str(adapt_dl), output_dir=str(ad_out), max_epochs=adapt_epochs,
        batch_size=8, lr=lr, lora_rank=lora_rank, progress_bar=False, sample_steps=5, val_num_items=8, sample_interval=1000, log_every=50,
        early_stopping_patience=0)
    t_ad = time.time() - t0 - t_pre

    # ---- classifier on real images of the three devices
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = [], []
    for d, its in by_dev.items():
        sel = [it for it in its if id(it) not in held_out]
        for it in sel[:150]:
            X.append(features(load_grey(it["image"])))
            y.append(d == TOSHIBA)
    X, y = np.array(X), np.array(y)
    idx = rng.permutation(len(y))
    cut = int(0.8 * len(y))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    clf.fit(X[idx[:cut]], y[idx[:cut]])
    acc = float((clf.predict(X[idx[cut:]]) == y[idx[cut:]]).mean())
    clf.fit(X, y)

    preset = get_preset("tiny")
    prior = BoxPrior().fit(tosh[:n_adapt], seed=0)

    def generate(network, codec, name):
        sched = build_scheduler(preset, "dpmpp")
        o = out / name
        run_generation(network, codec, sched, o, n_gen, image_size=32, seed=0, box_prior=prior,
                       pathologies=sorted(prior.pathologies), devices=[TOSHIBA], guidance_w=preset["guidance_w"],
                       num_inference_steps=20, chunk_size=n_gen, progress=False)
        data = json.loads((o / "datalist.json").read_text())
        imgs = [load_grey(o / it["image"]) for v in data.values() if isinstance(v, list) for it in v if isinstance(it, dict)]
        return imgs

    before = generate(*load_generator(base_ckpt, "tiny"), "before")
    after = generate(*load_adapted_generator(base_ckpt, ad_out / "models" / "adapter.pt", "tiny"), "after")
    f_before = np.array([features(i) for i in before])
    f_after = np.array([features(i) for i in after])
    frac_before = float(np.mean(clf.predict(f_before)))
    frac_after = float(np.mean(clf.predict(f_after)))
    p_before = float(np.mean(clf.predict_proba(f_before)[:, 1]))
    p_after = float(np.mean(clf.predict_proba(f_after)[:, 1]))
    # distance of the generated set's mean feature vector to the real Toshiba / real GE means (standardised by the
    # real images' feature spread): adaptation should move it toward Toshiba
    scaler = clf[0]
    real_t = scaler.transform(X[y])
    real_g = scaler.transform(X[~y])

    def dists(f):
        m = scaler.transform(f).mean(0)
        return float(np.linalg.norm(m - real_t.mean(0))), float(np.linalg.norm(m - real_g.mean(0)))

    d_before, d_after = dists(f_before), dists(f_after)
    real_tosh = [load_grey(it["image"]) for it in tosh[:8]]

    from PIL import Image

    rows = [np.concatenate(r[:8], axis=1) for r in (real_tosh, before, after)]
    Image.fromarray((np.concatenate(rows, axis=0) * 255).astype(np.uint8)).resize((8 * 96, 3 * 96), Image.NEAREST).save(
        out / "before_after_grid.png")
    res = {"classifier_holdout_acc": acc, "frac_toshiba_before": frac_before, "frac_toshiba_after": frac_after,
           "mean_p_toshiba_before": p_before, "mean_p_toshiba_after": p_after,
           "feature_dist_to_toshiba_ge_before": d_before, "feature_dist_to_toshiba_ge_after": d_after,
           "n_generated": len(after), "n_adapt_images": n_adapt, "pretrain_s": round(t_pre, 1), "adapt_s": round(t_ad, 1),
           "total_s": round(time.time() - t0, 1), "grid": str(out / "before_after_grid.png"),
           "grid_rows": "real Toshiba / base (before) / adapted (after)"}
    (out / "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain_epochs", type=int, default=24)
    ap.add_argument("--adapt_epochs", type=int, default=60)
    ap.add_argument("--n_adapt", type=int, default=30)
    ap.add_argument("--n_gen", type=int, default=48)
    ap.add_argument("--out", default="/tmp/bench_adapt")
    ap.add_argument("--base", default=None, help="reuse a pretrained base checkpoint (skips pretraining)")
    ap.add_argument("--lora_rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3, help="adaptation learning rate")
    a = ap.parse_args()
    main(a.pretrain_epochs, a.adapt_epochs, a.n_adapt, n_gen=a.n_gen, out=a.out, base=a.base, lora_rank=a.lora_rank,
         lr=a.lr)
