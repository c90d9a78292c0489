"""Privacy benchmark: a memorising generator, with and without the CPSampling guard, audited end to end.

    .venv/bin/python benchmarks/bench_privacy.py [--out runs/bench_privacy] [--image-size 16] [--iterations 4000]

1. Phantom data: 16 training images and 16 held-out images (different seeds), 64 px on disk.
2. A tiny BUSGen generator (``tiny`` preset) over-trained on the 16 images (:mod:`busgen_cpsample.memorise`) so
   that unguided sampling reproduces near-copies.
3. The protecting classifier, trained through the ``cpsample`` bundle's ``train_protector`` config (in process).
4. For two samplers (DDIM 50 steps with clipping and no guidance; DPM-Solver++ 20 steps with BUSGen's CFG w = 1.8),
   N images through the real generation pipeline (:func:`busgen_monai.inferers.run_generation`, same seeds and
   conditions) without the guard and with the guard at several strengths.
5. Each set: the privacy audit (:func:`busgen_cpsample.audit.run_audit`), quality proxies
   (:func:`busgen_cpsample.quality.quality_proxies`, see that module), the guard's firing rate, and the
   generated-data proximity membership-inference AUC; once for the model: the loss-threshold attack AUC.

Prints one table and writes ``OUT/results.json``. Everything is seeded; on 2 shared CPU cores it takes a few minutes
at 16 px (the generator training dominates; ``--reuse`` keeps a trained generator/protector).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_privacy")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-heldout", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16, help="generator resolution (tiny preset; 16 or 32)")
    p.add_argument("--iterations", type=int, default=4000, help="generator training steps (over-training)")
    p.add_argument("--n-generate", type=int, default=64)
    p.add_argument("--strengths", default="30,100,200,300", help="guard strengths to compare")
    p.add_argument("--blur", type=float, default=1.0, help="grad_blur_sigma of the blurred guard settings")
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--threshold", type=float, default=0.95, help="audit cosine near-copy threshold")
    p.add_argument("--ssim-threshold", type=float, default=0.85, help="audit MS-SSIM near-copy threshold")
    p.add_argument("--rule", default="both", help="audit near-copy rule (both: cosine and MS-SSIM agree)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="reuse a trained generator/protector in OUT")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from busgen_monai.bundle_run import run_bundle
    from busgen_monai.inferers import load_generator, run_generation
    from busgen_monai.presets import build_scheduler, get_preset

    from busgen_cpsample.audit import run_audit
    from busgen_cpsample.guard import CPSamplingGuard
    from busgen_cpsample.membership import load_items_tensors, loss_attack, proximity_attack
    from busgen_cpsample.memorise import phantom_split, train_memorising_generator
    from busgen_cpsample.protector import load_protector
    from busgen_cpsample.quality import quality_proxies

    out = Path(args.out)
    t0 = time.time()
    timings: dict[str, float] = {}
    train_dl, held_dl = phantom_split(out / "data", args.n_train, args.n_heldout, size=64)
    model = out / "models" / "model.pt"
    preset = get_preset("tiny", image_size=args.image_size)
    if not (args.reuse and model.is_file()):
        t = time.time()
        train_memorising_generator(train_dl, model, preset=preset, iterations=args.iterations, log_every=500)
        timings["generator_training_s"] = time.time() - t
    protector = model.parent / "protector.pt"
    if not (args.reuse and protector.is_file()):
        t = time.time()
        run_bundle("cpsample", "train_protector", generator_checkpoint=str(model), datalist=str(train_dl),
                   preset_name="tiny", image_size=args.image_size, channels=[16, 32, 32], max_iterations=3000,
                   lr=0.002, check_timesteps=[0, 50, 100, 150], target_accuracy=0.99, progress_bar=False,
                   log_every=500, num_threads=args.threads)
        timings["protector_training_s"] = time.time() - t
    prot = load_protector(protector)
    network, codec = load_generator(model, preset)

    members = load_items_tensors(str(train_dl), codec, args.image_size, "training")
    non_members = load_items_tensors(str(held_dl), codec, args.image_size, "test")
    mia_loss = loss_attack(network, members, non_members, build_scheduler(preset), n_noise=2)

    samplers = {
        "ddim50_w0": (lambda: build_scheduler(preset, "ddim"), 50, 0.0),
        "dpm20_w1.8": (lambda: build_scheduler(preset, "dpmpp"), 20, 1.8),
    }
    strengths = [float(s) for s in args.strengths.split(",") if s]
    guards = [("none", None)] + [(f"s{s:g}", {"strength": s}) for s in strengths[:2]] + \
        [(f"s{s:g}_blur{args.blur:g}", {"strength": s, "grad_blur_sigma": args.blur}) for s in strengths[1:]]
    rows = []
    for sname, (make, steps, w) in samplers.items():
        unguided_dir = None
        for gname, gkw in guards:
            name = f"{sname}_{gname}"
            gen_dir = out / "generated" / name
            shutil.rmtree(gen_dir, ignore_errors=True)  # generation is resumable: start clean
            guard = CPSamplingGuard(prot, alpha=args.alpha, generator_checkpoint=model, **gkw) if gkw else None
            t = time.time()
            res = run_generation(network, codec, make(), gen_dir, args.n_generate, image_size=args.image_size,
                                 seed=0, datalist=str(train_dl), guidance_w=w, num_inference_steps=steps,
                                 guards=[guard] if guard else [], chunk_size=16, progress=False)
            gen_s = time.time() - t
            audit = run_audit(res.datalist, train_dl, out / "audit" / name, threshold=args.threshold,
                              ssim_threshold=args.ssim_threshold, rule=args.rule, progress=False)
            quality = quality_proxies(res.datalist, train_dl, held_dl, reference=unguided_dir,
                                      heldout_splits=["test"])
            prox = proximity_attack(res.datalist, train_dl, held_dl, non_member_splits=["test"])
            fire = guard.stats()["total"]["fire_rate"] if guard else 0.0
            items_fired = guard.stats()["total"]["items_fired_rate"] if guard else 0.0
            rows.append({"setting": name, "sampler": sname, "guard": gname, "generation_s": round(gen_s, 2),
                         "cosine": audit["cosine"], "ms_ssim": audit["ms_ssim"],
                         "near_copies": audit["near_copies"], "passed": audit["passed"],
                         "reference_training_loo": audit["reference_training_loo"],
                         "fire_rate": fire, "items_fired_rate": items_fired, "quality": quality,
                         "proximity_mia_auc": prox["auc"]})
            if unguided_dir is None:
                unguided_dir = res.datalist

    ref = rows[0]["reference_training_loo"]
    print(f"\nmemorising setting: {args.n_train} phantom images, tiny preset at {args.image_size} px, "
          f"{args.iterations} steps; N = {args.n_generate} generated per row; protector accuracy "
          f"{prot.metrics.get('accuracy_by_t')}")
    print(f"training set against itself (leave-one-out NN): cosine max {ref['cosine']['max']:.3f} "
          f"p95 {ref['cosine']['p95']:.3f}; MS-SSIM max {ref['ms_ssim']['max']:.3f} p95 {ref['ms_ssim']['p95']:.3f}")
    print(f"loss-threshold membership inference AUC (model, training vs held-out): {mia_loss['auc']:.3f} "
          "(the guard does not change the model)")
    print(f"near-copy ({args.rule}): cosine >= {args.threshold} / MS-SSIM >= {args.ssim_threshold}; copies = "
          "near-copies (images over the cosine threshold, over the MS-SSIM threshold)\n")
    head = (f"{'setting':<26}{'cos max':>8}{'p99':>7}{'p95':>7}{'ssim max':>9}{'p99':>7}{'p95':>7}{'copies':>12}"
            f"{'fire':>6}{'MIA':>6}{'dmean':>7}{'std r':>6}{'hf r':>6}{'MMDho':>7}{'NNho':>6}{'rmse':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        c, s, q = r["cosine"], r["ms_ssim"], r["quality"]
        print(f"{r['setting']:<26}{c['max']:8.3f}{c['p99']:7.3f}{c['p95']:7.3f}{s['max']:9.3f}{s['p99']:7.3f}"
              f"{s['p95']:7.3f}{r['near_copies']:4d} ({c['count_over_threshold']:2d},{s['count_over_threshold']:2d})"
              f"{r['fire_rate']:6.2f}{r['proximity_mia_auc']:6.2f}"
              f"{q['mean_gap']:7.3f}{q['std_ratio']:6.2f}{q['hf_ratio']:6.2f}{q['mmd_heldout']:7.3f}"
              f"{q['nn_heldout_mean']:6.3f}{q.get('rmse_to_reference', 0.0):6.3f}")
    print(f"\n(MMD floor: training vs held-out = {rows[0]['quality']['mmd_train_heldout']:.3f}; fire = fraction of "
          "item-steps where the guard acted; MIA = generated-data proximity attack AUC; dmean/std r/hf r = intensity "
          "mean gap, std ratio, high-frequency ratio vs training; NNho = mean cosine to the nearest held-out real "
          "image; rmse = to the unguided images of the same sampler)")
    timings["total_s"] = time.time() - t0
    result = {"args": vars(args), "loss_mia": {k: v for k, v in mia_loss.items() if not k.endswith("losses")},
              "protector_metrics": prot.metrics, "rows": rows, "timings": timings}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {out / 'results.json'}; audits under {out / 'audit'}; total {timings['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
