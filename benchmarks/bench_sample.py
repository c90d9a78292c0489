"""Sampling speed and quality: DDPM (all T steps) vs DDIM 50 vs DPM-Solver++ 20/10, with and without batched CFG.

Two parts:

1. **Trained tiny model at 64 px** (trained here on the phantom, or ``--checkpoint``): seconds per image for each
   sampler, with batched CFG (one 2B forward per step) and two-pass CFG, and quality proxies per sampler relative to
   DDPM with all T steps, against real phantom images (4N) in a fixed offline feature space (multi-scale intensity
   histograms + gradient-magnitude statistics + a fixed random-weight MONAI convolutional network, seeded; each
   feature standardised by the real set, scales floored at a tenth of the median scale): ``kid`` (KID: unbiased
   polynomial-kernel MMD^2, lower is better), ``kid_deep`` (KID on the network features only) and ``nn_dist`` (mean
   distance of a generated image to its nearest real image: a per-image average, the least noisy). Each comes with
   its standard deviation over 20 random halves of the generated set and as a ratio to DDPM; "within 5 %" means
   ``proxy(sampler) <= 1.05 * proxy(DDPM)``. The generated images are saved (``OUT/samples_*.pt``).
2. **Paper network (45.9 M) at 128 and 160 px, random weights**, time only: seconds per image for DPM-Solver++ 20 and
   10 steps with batched CFG, against the public BUSGen code's 547 s per 128 px image (50 solver evaluations,
   conditional and unconditional as separate passes) measured on this machine kind (2 threads).

Run (report both malloc settings, as the project asks):

    python benchmarks/bench_sample.py
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/bench_sample.py

Options: ``--threads`` (default 2), ``--n`` images per sampler for the quality proxy, ``--skip-paper``,
``--bf16`` (CPU bfloat16 autocast for the paper-network timing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# the noise schedule every preset trains with (sampler factory input)
SCHEDULE = {"num_train_timesteps": 500, "beta_start": 1e-4, "beta_end": 0.028}
ANCHOR_S_PER_IMAGE = 547.0  # public BUSGen code, 128 px, 2 threads (developers' guide)


def _features(images: torch.Tensor, net: torch.nn.Module) -> np.ndarray:
    """Offline feature vector per image (images in [-1, 1], (N, 3, H, W))."""
    g = images.mean(1, keepdim=True)
    feats = []
    for k in (1, 2, 4):
        x = torch.nn.functional.avg_pool2d(g, k) if k > 1 else g
        hist = torch.stack([torch.histc(im, bins=16, min=-1, max=1) for im in x]) / x[0].numel()
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1)
        feats += [hist, dx.mean(1, keepdim=True), dy.mean(1, keepdim=True), x.flatten(1).std(1, keepdim=True)]
    chroma = (images - images.mean(1, keepdim=True)).abs().flatten(1).mean(1, keepdim=True)
    with torch.no_grad():
        deep = net(images).flatten(1)
    return torch.cat(feats + [chroma, deep], 1).double().numpy()


def _standardise(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre/scale both sets by the real set ``b``. A feature (e.g. a histogram bin) that is almost constant on real
    images would otherwise be divided by ~0 and dominate every distance, so each scale is floored at a tenth of the
    median scale."""
    mu, sd = b.mean(0), b.std(0)
    sd = np.maximum(sd, 0.1 * np.median(sd) + 1e-12)
    return (a - mu) / sd, (b - mu) / sd


def _kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3 (the KID kernel) on standardised features."""
    a, b = _standardise(a, b)
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def _nn_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per generated image: Euclidean distance (standardised features) to its nearest real image."""
    a, b = _standardise(a, b)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0).min(1))


def _proxies(feats: np.ndarray, real_f: np.ndarray, n_deep: int, seed: int = 0) -> dict:
    """Quality proxies of one generated set against real images, with their spread over 20 random halves.

    ``kid``: KID on all features; ``kid_deep``: KID on the random-network features only; ``nn_dist``: mean distance
    to the nearest real image (a precision-like, per-image average, the least noisy of the three)."""
    rng = np.random.default_rng(seed)
    halves = [rng.permutation(len(feats))[: len(feats) // 2] for _ in range(20)]
    out = {}
    for name, fn in (("kid", lambda f: _kid(f, real_f)),
                     ("kid_deep", lambda f: _kid(f[:, -n_deep:], real_f[:, -n_deep:])),
                     ("nn_dist", lambda f: float(_nn_distance(f, real_f).mean()))):
        out[name] = fn(feats)
        vals = [fn(feats[h]) for h in halves]
        out[name + "_halves_sd"] = float(np.std(vals))
    return out


N_DEEP = 32  # outputs of the random-weight network (the last features of _features)


def _feature_net() -> torch.nn.Module:
    from monai.networks.nets import Classifier

    torch.manual_seed(1234)
    net = Classifier(in_shape=(3, 64, 64), classes=N_DEEP, channels=(16, 32, 64), strides=(2, 2, 2))
    return net.eval()


def _train_tiny(out: Path, steps_epochs: int) -> Path:
    from busgen_monai.bundle_run import run_bundle
    from busgen_monai.data.phantom import write_dataset
    from busgen_monai.inferers import export_generator, resolve_checkpoint

    datalist = write_dataset(out / "phantom", n=400, seed=0, size=(64, 64))
    run_bundle("busgen_pretrain", "train", datalist=str(datalist), output_dir=str(out / "pretrain"),
               preset_name="tiny", image_size=64, max_epochs=steps_epochs, num_workers=0, progress_bar=False,
               sample_interval=steps_epochs, val_interval=steps_epochs, checkpoint_interval=100000)
    return export_generator(resolve_checkpoint(out / "pretrain" / "models"), out / "model.pt")


def _real_images(n: int, size: int) -> torch.Tensor:
    from busgen_monai.data.phantom import PHANTOM_DEVICES, generate_case

    devices = sorted(PHANTOM_DEVICES)
    ims = []
    for i in range(n):
        case = generate_case(10_000 + i, ("benign", "malignant")[i % 2], devices[(i // 2) % len(devices)], (size, size))
        im = case.image if case.image.ndim == 3 else np.repeat(case.image[..., None], 3, -1)
        ims.append(torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(ims)


def _sample(net, codec, scheduler, steps, noise, cond, batched, w=1.8, autocast=False):
    from busgen_monai.inferers import GuidedDiffusionInferer

    scheduler.set_timesteps(steps)
    inf = GuidedDiffusionInferer(scheduler, guidance_scale=w, batched_cfg=batched)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = inf.sample(noise, net, conditioning=cond, verbose=False, generator=torch.Generator().manual_seed(7))
    return out.float(), inf.forward_passes


def part_tiny(args, out: Path) -> dict:
    from busgen_monai.inferers import load_generator, plan_conditions
    from busgen_monai.schedulers import build_scheduler

    model = Path(args.checkpoint) if args.checkpoint else _train_tiny(out, args.epochs)
    net, codec = load_generator(model, "tiny")
    size = 64
    n = args.n
    plan = plan_conditions(n, ["benign", "malignant"], ["PhantomMed-L7", "PhantomMed-L12", "PhantomMed-C5", "PhantomMed-T9"],
                           seed=0, boxes=[[[0.3, 0.3, 0.6, 0.55]]] * n)
    cond = codec.pack_names(pathologies=[p["pathology"] for p in plan], devices=[p["device"] for p in plan],
                            boxes=[p["boxes"] for p in plan])
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    real = _real_images(4 * n, size)
    fnet = _feature_net()
    real_f = _features(real, fnet)
    samplers = {
        "DDPM (all 500 steps)": (lambda: build_scheduler(SCHEDULE, "ddpm"), 500),
        "DDIM 50": (lambda: build_scheduler(SCHEDULE, "ddim"), 50),
        "DPM-Solver++ 20": (lambda: build_scheduler(SCHEDULE, "dpmpp"), 20),
        "DPM-Solver++ 10": (lambda: build_scheduler(SCHEDULE, "dpmpp"), 10),
    }
    rows = {}
    for name, (make, steps) in samplers.items():
        row = {}
        for batched in (True, False):
            if not batched and name.startswith("DDPM"):
                # two-pass DDPM costs 2x the batched forwards of the same batch; time a 2-image slice only
                t0 = time.perf_counter()
                _sample(net, codec, make(), steps, noise[:2], cond[:2], batched=False)
                row["s_per_image_two_pass"] = (time.perf_counter() - t0) / 2
                continue
            t0 = time.perf_counter()
            imgs, passes = _sample(net, codec, make(), steps, noise, cond, batched)
            dt = time.perf_counter() - t0
            row["s_per_image_batched" if batched else "s_per_image_two_pass"] = dt / n
            if batched:
                torch.save(imgs, out / f"samples_{name.split(' (')[0].replace(' ', '_').replace('+', 'p')}.pt")
                feats = _features(imgs, fnet)
                row.update(_proxies(feats, real_f, N_DEEP))
                row["forward_passes"] = passes
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    ref = rows["DDPM (all 500 steps)"]
    for row in rows.values():
        for key in ("kid", "kid_deep", "nn_dist"):
            row[f"{key}_relative_to_ddpm"] = row[key] / ref[key] if ref[key] > 0 else float("nan")
    return rows


def part_paper(args) -> dict:
    from busgen_monai.networks import ConditionCodec
    from busgen_monai.presets import build_network
    from busgen_monai.schedulers import build_scheduler

    codec = ConditionCodec()
    net = build_network("paper", codec).eval()
    res = {}
    for size in args.paper_sizes:
        cond = codec.pack_names(pathologies=["malignant"], devices=["GE-LOGIQ-E9"], boxes=[[[0.3, 0.3, 0.6, 0.6]]])
        noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            t0 = time.perf_counter()
            net(torch.cat([noise, noise]), timesteps=torch.tensor([10, 10]), context=torch.cat([cond, cond]))
            fwd2 = time.perf_counter() - t0
        for steps in args.paper_steps:
            t0 = time.perf_counter()
            _sample(net, codec, build_scheduler(SCHEDULE, "dpmpp"), steps, noise, cond, True, autocast=args.bf16)
            dt = time.perf_counter() - t0
            res[f"{size}px DPM-Solver++ {steps} (batched CFG)"] = {
                "s_per_image": dt, "forward_2x_s": fwd2,
                "speedup_vs_busgen_anchor_128px": ANCHOR_S_PER_IMAGE / dt if size == 128 else None}
            print(size, steps, json.dumps(res[f"{size}px DPM-Solver++ {steps} (batched CFG)"]), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=32, help="images per sampler (tiny model)")
    p.add_argument("--epochs", type=int, default=30, help="tiny-model training epochs on the phantom (64 px)")
    p.add_argument("--checkpoint", default=None, help="a trained tiny 64 px model instead of training one")
    p.add_argument("--skip-tiny", action="store_true")
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--paper-sizes", type=int, nargs="+", default=[128, 160])
    p.add_argument("--paper-steps", type=int, nargs="+", default=[20, 10])
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the paper-network timing")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_sample_"))
    out.mkdir(parents=True, exist_ok=True)
    malloc = "MALLOC_MMAP_MAX_=0" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default malloc"
    report = {"threads": args.threads, "malloc": malloc}
    if not args.skip_tiny:
        report["tiny_64px"] = part_tiny(args, out)
    if not args.skip_paper:
        report["paper_random_weights"] = part_paper(args)
    (out / "bench_sample.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(f"report: {out / 'bench_sample.json'}")


if __name__ == "__main__":
    main()
