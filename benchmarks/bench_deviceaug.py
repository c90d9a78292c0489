"""Benchmark of busgen-deviceaug on CPU: does a short CycleGAN run change the device style and keep the content?

Two parts, each trained through the ``device_cyclegan`` bundle (bank driver) at 64 px on CPU:

- ``phantom``: PhantomMed-L7 -> PhantomMed-C5 (linear probe -> curvilinear sector) on the busgen phantom,
  whose true C5 rendering of every L7 image is known (same anatomy and speckle per seed);
- ``busbra``: BUS-BRA GE-LOGIQ-5 -> GE-LOGIQ-7 (real data, read in place from ../shared/data/bus_bra).

Reported per part (test split, images never seen in training):

- device classifier (MONAI CNN trained on the real training images of every device) on held-out real images
  (accuracy), on untranslated source images, and on translated images: fraction assigned to the target vs the
  source device, for A -> B (G_AB) and B -> A (G_BA);
- lesion-region SSIM (greyscale, box grown by 15 %) between original and translated image, next to the SSIM
  with an unrelated translated image (lower reference) and, on the phantom, with the true target rendering;
- cycle error: mean |G_BA(G_AB(a)) - a| on test images (intensities in [-1, 1]) and the training cycle loss
  over the first and last 10 % of iterations;
- wall time.

BUS-BRA's picture (originals and translations, boxes drawn) is written to
``runs/bench_deviceaug/bus_bra_translation_grid.png`` (not committed: it shows BUS-BRA images, and the data set is
never copied into the repository).

Usage::

    .venv/bin/python benchmarks/bench_deviceaug.py                       # both parts: ~19 min wall on a shared
                                                                         # 2-core machine (5 + 14 min training)
    .venv/bin/python benchmarks/bench_deviceaug.py --busbra-iters 1200   # ~10 min of BUS-BRA training
    .venv/bin/python benchmarks/bench_deviceaug.py --parts phantom --phantom-iters 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BUSGEN_SHARED_DATA", ROOT.parent / "shared" / "data"))
GRID = ROOT / "runs" / "bench_deviceaug" / "bus_bra_translation_grid.png"


def _load_split(datalist: Path, split: str, size: int):
    """(N, 3, size, size) in [-1, 1], items (absolute paths) of one split."""
    from monai.transforms import Compose, Resized

    from busgen_deviceaug.data import LoadRGBd, domain_items

    items, _ = domain_items(datalist, (split,))
    tf = Compose([LoadRGBd("image"), Resized("image", (size, size), mode="area")])
    x = torch.stack([torch.as_tensor(tf({"image": it["image"]})["image"]) for it in items]) * 2 - 1
    return x.float(), items


def _translate(gen, x, batch=32):
    with torch.no_grad():
        return torch.cat([gen(x[i:i + batch]) for i in range(0, len(x), batch)])


def run_part(name, datalist, source, target, out, size, iters_per_epoch, epochs, seed, truth_fn=None,
             grid_path=None, clf_epochs=12):
    from busgen_deviceaug.bank import train_bank
    from busgen_deviceaug.metrics import DeviceClassifier, batch_lesion_ssim
    from busgen_deviceaug.networks import build_generator

    t0 = time.time()
    overrides = {"spatial_size": [size, size], "gen_channels": 16, "gen_res_blocks": 3, "disc_channels": 32,
                 "disc_layers": 3, "num_epochs": epochs, "num_epochs_decay": epochs, "epoch_length": iters_per_epoch,
                 "batch_size": 4, "num_threads": 1, "log_interval": 100, "seed": seed}
    bank = train_bank(datalist, out / "bank", targets=[target], source_devices=[source], overrides=overrides)
    t_train = time.time() - t0
    entry = bank.entry(target)
    run_dir = bank.root / entry["provenance"]["run_dir"]
    g_ab = bank.generator(target)
    g_ba = build_generator(entry["network"])
    g_ba.load_state_dict(torch.load(run_dir / "models" / "model_ba.pt", weights_only=True))
    g_ba.eval()

    x_tr, it_tr = _load_split(datalist, "training", size)
    x_te, it_te = _load_split(datalist, "test", size)
    devices = sorted({it["device"] for it in it_tr})
    t1 = time.time()
    clf = DeviceClassifier(devices, spatial_size=(size, size), seed=seed)
    clf.fit(x_tr, [it["device"] for it in it_tr], epochs=clf_epochs, batch_size=32)
    t_clf = time.time() - t1
    acc = clf.accuracy(x_te, [it["device"] for it in it_te])

    res = {"part": name, "source": source, "target": target, "size": size,
           "iterations": entry["provenance"]["iterations"], "n_train_source": entry["provenance"]["n_source_images"],
           "n_train_target": entry["provenance"]["n_target_images"], "classifier_devices": devices,
           "classifier_test_accuracy": acc, "train_seconds": round(t_train, 1), "classifier_seconds": round(t_clf, 1)}
    hist = json.loads((run_dir / "losses.json").read_text())
    cyc = np.asarray(hist["cycle_loss"]) / 2  # mean of the two directions
    k = max(1, len(cyc) // 10)
    res["train_cycle_l1_first10pct"], res["train_cycle_l1_last10pct"] = float(cyc[:k].mean()), float(cyc[-k:].mean())

    for direction, src, tgt, fwd, back in (("A->B", source, target, g_ab, g_ba), ("B->A", target, source, g_ba, g_ab)):
        idx = [i for i, it in enumerate(it_te) if it["device"] == src]
        x = x_te[idx]
        y = _translate(fwd, x)
        if direction == "A->B":
            y = bank.translate(x, target)  # the transform's path (greyscale styles: channels equalised)
        rec = _translate(back, y)
        boxes = [it_te[i]["boxes"] for i in idx]
        d = {"n_test": len(idx),
             "before": clf.agreement(x, tgt, src), "after": clf.agreement(y, tgt, src),
             "lesion_ssim": float(batch_lesion_ssim(x, y, boxes).mean()),
             "lesion_ssim_unrelated": float(batch_lesion_ssim(x, torch.roll(y, 1, 0), boxes).mean()),
             "test_cycle_l1": float((rec - x).abs().mean())}
        if truth_fn is not None:
            truth = torch.stack([truth_fn(it_te[i], tgt, size) for i in idx])
            d["lesion_ssim_to_true_target"] = float(batch_lesion_ssim(truth, y, boxes).mean())
            d["lesion_ssim_source_to_true_target"] = float(batch_lesion_ssim(truth, x, boxes).mean())
            d["lesion_ssim_unrelated_true_target"] = float(batch_lesion_ssim(torch.roll(truth, 1, 0), y, boxes).mean())
        for key in ("before", "after"):
            d[key].pop("n", None)
        res[direction] = d
        if grid_path is not None and direction == "A->B":
            xa, ya, ia = x, y, idx
        if grid_path is not None and direction == "B->A":
            _grid(grid_path, xa, ya, [it_te[i] for i in ia], x, y, [it_te[i] for i in idx], source, target)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _grid(path, xa, ya, items_a, xb, yb, items_b, source, target, rows=4):
    from busgen_monai.visualize import save_image_grid

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images, labels, boxes = [], [], []
    for r in range(min(rows, len(xa), len(xb))):
        images += [xa[r], ya[r], xb[r], yb[r]]
        labels += [source, f"-> {target}", target, f"-> {source}"]
        boxes += [items_a[r]["boxes"], items_a[r]["boxes"], items_b[r]["boxes"], items_b[r]["boxes"]]
    save_image_grid(images, path, labels=labels, boxes=boxes, ncols=4, tile=1.25,
                    title=f"BUS-BRA test images, CycleGAN at 64 px (CPU): {source} <-> {target}")


def _phantom_truth(item, device, size):
    from busgen_monai.data.phantom import generate_case

    img = generate_case(item["provenance"]["seed"], item["pathology"], device, (size, size)).image
    img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float() / 127.5 - 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_deviceaug")
    p.add_argument("--parts", default="phantom,busbra")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--phantom-iters", type=int, default=600, help="phantom training iterations (batch 4)")
    p.add_argument("--busbra-iters", type=int, default=1800, help="BUS-BRA training iterations (batch 4)")
    p.add_argument("--source", default="GE-LOGIQ-5")
    p.add_argument("--target", default="GE-LOGIQ-7")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    parts = args.parts.split(",")
    if "phantom" in parts:
        from busgen_monai.data.phantom import write_dataset

        dl = write_dataset(out / "phantom", n=320, seed=args.seed, size=(args.size, args.size))
        epochs = 3
        results.append(run_part("phantom", dl, "PhantomMed-L7", "PhantomMed-C5", out / "phantom_run", args.size,
                                max(1, args.phantom_iters // (2 * epochs)), epochs, args.seed, truth_fn=_phantom_truth))
    if "busbra" in parts:
        root = SHARED / "bus_bra"
        if not (root / "bus_data.csv").is_file():
            print(f"BUS-BRA not found at {root}; skipping", file=sys.stderr)
        else:
            from busgen_monai.data.loaders import load_bus_bra
            from busgen_monai.data.schema import save_datalist

            dl = out / "bus_bra.json"
            if not dl.is_file():
                data = load_bus_bra(root, relative_to=out)
                data.pop("load_report", None)
                save_datalist(data, dl)
            epochs = 6
            results.append(run_part("busbra", dl, args.source, args.target, out / "busbra_run", args.size,
                                    max(1, args.busbra_iters // (2 * epochs)), epochs, args.seed, grid_path=GRID))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for r in results:
        print(f"\n== {r['part']}: {r['source']} <-> {r['target']} at {r['size']} px, {r['iterations']} iterations "
              f"({r['train_seconds']} s training), classifier test accuracy {r['classifier_test_accuracy']:.3f} "
              f"over {r['classifier_devices']}")
        print(f"   training cycle L1 (per direction): first 10% {r['train_cycle_l1_first10pct']:.3f} -> "
              f"last 10% {r['train_cycle_l1_last10pct']:.3f}")
        for direction in ("A->B", "B->A"):
            d = r[direction]
            line = (f"   {direction} (n={d['n_test']}): classified as target {d['before']['target_rate']:.2f} -> "
                    f"{d['after']['target_rate']:.2f}, as source {d['before']['source_rate']:.2f} -> "
                    f"{d['after']['source_rate']:.2f}; lesion SSIM {d['lesion_ssim']:.3f} "
                    f"(unrelated {d['lesion_ssim_unrelated']:.3f}); test cycle L1 {d['test_cycle_l1']:.3f}")
            if "lesion_ssim_to_true_target" in d:
                line += (f"; SSIM to true target rendering {d['lesion_ssim_to_true_target']:.3f} "
                         f"(source image {d['lesion_ssim_source_to_true_target']:.3f}, unrelated "
                         f"{d['lesion_ssim_unrelated_true_target']:.3f})")
            print(line)
    print(f"\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
