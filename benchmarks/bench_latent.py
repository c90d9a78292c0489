"""Latent (autoencoder + DiT, CoLDiT-style) vs pixel (BUSGen U-Net) generation on BUS-BRA, on one CPU thread.

CoLDiT (Research 2024, DOI 10.34133/research.0532) generates breast ultrasound with a latent diffusion transformer
conditioned on BI-RADS; its claims are image fidelity, BI-RADS-consistent images, no replication of training images,
and that replacing half of the real training data by synthetic images keeps a classifier's performance (P = 0.81).
This script measures the same things at CPU scale on BUS-BRA (Gomez-Flores et al., Medical Physics 2023,
doi 10.5281/zenodo.7730709; patient-wise 70/15/15 split, seed 0, BI-RADS 2/3/4/5 as the data set gives them):

1. **Train** a small latent generator here (sized for the time budget): ``LatentAutoencoderKL`` (64 px, widths
   16/32/64, x4 downsampling, 4 latent channels, L1 + KL + 0.2 SSIM, 800 steps of 8) on the training split, its
   latents standardised per channel (``standardise_latents_``, exact; ``--no-centre-latents`` keeps the scalar scale
   only), then a ``ConditionalDiT`` of ``--dit-size`` (default ``cpu``: hidden 192, depth 6, 6 heads, patch 2,
   4.2 M parameters, the ``cpu`` preset of ``bundles/busgen_latent``) for ``--dit-steps`` steps of 32 (default
   8,000), peak LR 3e-4 (one-cycle), min-SNR-5 loss weighting (Hang et al., ICCV 2023), EMA 0.999, resumable
   (``dit_resume.pt`` every 500 steps; a resume may change ``--dit-steps``)
   on its latents (posterior means cached once, flips as augmentation), conditioned on pathology, device and BI-RADS
   with joint condition dropout 0.1. Same training pieces as ``bundles/busgen_autoencoder`` / ``busgen_latent``
   (MONAI LatentDiffusionInferer semantics, the project's loss), written as a plain loop for speed.
2. **Speed**: seconds per image on one thread, latent vs pixel, same sampler (the project's DPM-Solver++ 2M), at
   every step count of ``--quality-steps`` (default 5, 10, 20), batched CFG, batch 8, at 64 px (the shipped pixel generator ``bundles/busgen_sample/models/model.pt`` and
   the latent model trained here) and at 128 px (untrained networks of the ``cpu128`` pixel preset and of the
   latent model at 128 px: timing does not depend on the weights). Side by side in one process.
3. **Quality proxy**: KID (unbiased MMD^2, cubic kernel), KID on the random-network features alone, and mean
   nearest-neighbour distance of ``--n-quality`` images per generator and step count to the real test crops in ``benchmarks/bench_sample.py``'s offline feature space (intensity histograms,
   gradients, a seeded random MONAI network; no ImageNet Inception ships offline, so values are not comparable with
   published FID), with real validation vs real test as the floor. **Equal quality**: for each proxy, the pixel
   model's cheapest step count that is at least as good as the latent model at ``--steps`` is its comparator
   (:func:`matched_speedup`); at 128 px the same step counts are timed (no 128 px pixel model is trained here).
4. **BI-RADS agreement**: a BI-RADS classifier (MONAI ``Classifier``, 4 classes 2/3/4/5) trained on real training
   crops; its confusion matrix on the real test split and on latent images generated for each BI-RADS category.
5. **Half-real experiment**: a pathology classifier trained on (a) all real training images vs (b) a random half of
   the training *patients* + as many latent synthetic images (BI-RADS balanced, pathology from the data's mix within
   each category); AUROC on the real test split with DeLong 95 % CIs and the two-sided DeLong p (a vs b).
6. **Privacy audit**: busgen-cpsample's nearest-neighbour audit of the synthetic set against the training split.
7. **Distribution distance**: KID above, and the BI-RADS / pathology histograms of the synthetic set.

Run (about 85 min with two threads for training and generation; timing always on one thread; results in
``--out``/results.{json,md}; ``--publish`` copies them to docs/benchmarks/latent_results.{json,md})::

    .venv/bin/python benchmarks/bench_latent.py --out runs/bench_latent --threads 2 --publish

Finished parts are cached in ``--out`` (re-running skips them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
BUS_BRA = ROOT.parent / "shared" / "data" / "bus_bra"
BIRADS = ["2", "3", "4", "5"]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------------- data
def load_real(out: Path, size: int) -> dict:
    """Real crops (the pixel generator's view: box-centred square, as its training/validation transforms) per split."""
    cache = out / f"real_{size}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:  # noqa: BLE001 - an older cache (MONAI MetaTensors) is rebuilt
            _log(f"rebuilding {cache} (not loadable weights-only)")
    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.transforms import bus_train_transforms

    data = load_bus_bra(BUS_BRA, check_masks=False)
    xf = bus_train_transforms(None, size, augment=False)  # the generators' own validation view: box-keeping crop
    res = {"datalist": json.loads(json.dumps(data, default=str))}  # plain containers: loads weights-only
    for split in ("training", "validation", "test"):
        items = data[split]
        ims = torch.stack([xf(dict(it))["image"].as_subclass(torch.Tensor).float() for it in items])
        res[split] = {"images": ims, "pathology": [it["pathology"] for it in items],
                      "birads": [str(it["birads"]) for it in items], "device": [it["device"] for it in items],
                      "patient": [it["patient_id"] for it in items], "boxes": [it["boxes"] for it in items]}
    torch.save(res, cache)
    return res


# ----------------------------------------------------------------------------------------------------------- latent model
def train_autoencoder(out: Path, real: dict, steps: int, seed: int = 0):
    from busgen_monai.networks import AutoencoderLoss, LatentAutoencoderKL

    path = out / "autoencoder.pt"
    args = dict(channels=[16, 32, 64], num_res_blocks=1, attention_levels=[False, False, False], latent_channels=4,
                norm_num_groups=8, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
    ae = LatentAutoencoderKL(**args)
    if path.is_file():
        state = torch.load(path, weights_only=True)
        ae.load_state_dict(state["network"])
        return ae.eval(), state["info"]
    torch.manual_seed(seed)
    x_all = real["training"]["images"]
    loss_fn = AutoencoderLoss(l1_weight=1.0, kl_weight=1e-6, ssim_weight=0.2)
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (8,))
        x = x_all[idx]
        flip = torch.rand(8) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = loss_fn(ae(x), x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0:
            _log(f"autoencoder step {step}/{steps} loss {float(loss):.4f} {loss_fn.last_terms}")
    ae.eval()
    with torch.no_grad():
        xv = real["validation"]["images"]
        rec = ae.decode(ae.encode(xv)[0]).clamp(-1, 1)
        mae = float((rec - xv).abs().mean())
        mse = float(((rec - xv) ** 2).mean())
    info = {"steps": steps, "train_s": time.time() - t0, "val_mae": mae, "val_psnr_db": float(10 * np.log10(4.0 / mse)),
            "network_kwargs": ae.init_args}
    torch.save({"network": ae.state_dict(), "network_kwargs": ae.init_args, "info": info}, path)
    return ae, info


def train_dit(out: Path, real: dict, ae, codec, args, seed: int = 0):
    """Train the DiT on the autoencoder's latents (resumable: ``dit_resume.pt`` every ``--save-every`` steps)."""
    from monai.networks.schedulers import DDPMScheduler

    from busgen_monai.data.conditions import drop_conditions
    from busgen_monai.engines.losses import min_snr_weights
    from busgen_monai.inferers import AutoencoderRecord, NetworkClassRecord
    from busgen_monai.networks import DIT_SIZES, ConditionalDiT

    path = out / "latent_model.pt"
    if path.is_file():
        return path, torch.load(path, weights_only=True)["info"]
    steps, batch, lr = args.dit_steps, args.dit_batch, args.dit_lr
    torch.manual_seed(seed)
    tr = real["training"]
    with torch.no_grad():
        z = torch.cat([ae.encode(tr["images"][i:i + 128])[0] for i in range(0, len(tr["images"]), 128)])
        if args.centre_latents:  # per-channel standardisation folded into the autoencoder (exact)
            mean, std = z.mean((0, 2, 3)), z.std((0, 2, 3))
            ae.standardise_latents_(mean, std)
            _log(f"latents centred: channel means {[round(v, 3) for v in mean.tolist()]}, "
                 f"stds {[round(v, 3) for v in std.tolist()]}")
            z = torch.cat([ae.encode(tr["images"][i:i + 128])[0] for i in range(0, len(tr["images"]), 128)])
        zf = torch.cat([ae.encode(tr["images"][i:i + 128].flip(-1))[0] for i in range(0, len(tr["images"]), 128)])
    scale = 1.0 / float(z.std())
    z, zf = z * scale, zf * scale
    cond = codec.pack_names(tr["pathology"], tr["device"], tr["birads"])
    net = ConditionalDiT(in_channels=4, input_size=z.shape[-1], patch_size=2, **DIT_SIZES[args.dit_size],
                         conditions=("pathology", "device", "birads"), **codec.network_kwargs())
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    T = 1000
    ddpm = DDPMScheduler(num_train_timesteps=T, schedule="linear_beta", beta_start=1e-4, beta_end=0.02)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.03)
    resume, start, spent = out / "dit_resume.pt", 0, 0.0
    if resume.is_file():
        st = torch.load(resume, weights_only=True)
        net.load_state_dict(st["network"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        start, spent = st["step"], st["train_s"]
        if st["lr_scheduler"].get("total_steps") == steps:
            sched.load_state_dict(st["lr_scheduler"])
        else:  # --dit-steps changed on resume: the schedule of the new length, at the step reached
            for _ in range(start):
                sched.step()
            _log(f"DiT schedule re-laid for {steps} steps (was {st['lr_scheduler'].get('total_steps')})")
        torch.set_rng_state(st["rng"])
        _log(f"DiT resumed at step {start}/{steps}")
    t0 = time.time()
    for step in range(start, steps):
        idx = torch.randint(0, len(z), (batch,))
        flip = (torch.rand(batch) < 0.5)[:, None, None, None]
        x0 = torch.where(flip, zf[idx], z[idx])
        noise = torch.randn_like(x0)
        t = torch.randint(0, T, (batch,))
        xt = ddpm.add_noise(x0, noise, t)
        drop = torch.rand(batch) < 0.1
        c = drop_conditions(cond[idx], {k: drop for k in ("pathology", "device", "birads", "boxes")})
        per_item = (net(xt, t, context=c) - noise).pow(2).flatten(1).mean(1)
        w = min_snr_weights(ddpm.alphas_cumprod, t) if args.weighting == "min_snr" else torch.ones_like(per_item)
        loss = (w * per_item).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(net)
        if step % 250 == 0:
            _log(f"DiT step {step}/{steps} loss {float(loss):.4f} ({(time.time() - t0) / max(step - start, 1):.3f} s/step)")
        if (step + 1) % args.save_every == 0 and step + 1 < steps:
            torch.save({"network": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                        "lr_scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "step": step + 1,
                        "train_s": spent + time.time() - t0}, resume.with_suffix(".tmp"))
            resume.with_suffix(".tmp").replace(resume)
    info = {"steps": steps, "train_s": spent + time.time() - t0, "scale_factor": scale, "size": args.dit_size,
            "batch": batch, "lr": lr, "weighting": args.weighting, "ema": args.ema,
            "centre_latents": bool(args.centre_latents), "threads": torch.get_num_threads(),
            "parameters_M": sum(p.numel() for p in net.parameters()) / 1e6}
    settings = {"image_size": 64, "image_channels": 1, "num_train_timesteps": T, "beta_start": 1e-4,
                "beta_end": 0.02, "guidance_w": 1.8, "family": "latent"}
    state = {"network": net.state_dict(), "ema": ema.state_dict(), "network_kwargs": net.init_args,
             "network_class": NetworkClassRecord(net).state_dict(),
             "autoencoder": AutoencoderRecord(ae, scale).state_dict(), "codec": codec.state_dict(),
             "settings": settings, "info": info}
    torch.save(state, path)
    return path, info


def tune_latent_clip(ckpt: Path, real: dict, steps: int, candidates: list, n: int = 128, seed: int = 0) -> dict:
    """Choose the latent model's ``latent_clip`` (the sampler's data-prediction bound, ``None`` = unbounded) by KID
    against the real *validation* crops (the test split stays for the reported numbers); writes it into the
    checkpoint's settings, where ``load_generator`` and ``run_generation`` read it."""
    from bench_sample import N_DEEP, _feature_net, _features, _proxies
    from busgen_monai.inferers import GuidedDiffusionInferer, generator_settings, load_generator
    from busgen_monai.inferers.latent import configure_latent_sampler

    state = torch.load(ckpt, weights_only=True)
    if "latent_clip_tuning" in state.get("info", {}):
        return state["info"]["latent_clip_tuning"]
    net, codec = load_generator(ckpt)
    st = generator_settings(ckpt)
    va = real["validation"]
    idx = [i % len(va["pathology"]) for i in range(n)]
    cond = codec.pack_names([va["pathology"][i] for i in idx], [va["device"][i] for i in idx],
                            [va["birads"][i] for i in idx])
    fnet = _feature_net()
    feat = lambda ims: _features(ims.repeat(1, 3, 1, 1), fnet)  # noqa: E731
    ref = feat(va["images"])
    noise = torch.randn(n, *net.latent_shape(st["image_size"]), generator=torch.Generator().manual_seed(seed))
    rows = {}
    for c in candidates:
        net.latent_clip = c
        sched = dpm(st)
        configure_latent_sampler(net, sched)
        inf = GuidedDiffusionInferer(sched, guidance_scale=st["guidance_w"], num_inference_steps=steps)
        with torch.no_grad():
            x = torch.cat([net.decode(inf.sample(noise[i:i + 32], net, conditioning=cond[i:i + 32], verbose=False))
                           for i in range(0, n, 32)])
        rows[str(c)] = _proxies(feat(x), ref, N_DEEP)
        _log(f"latent_clip {c}: {rows[str(c)]}")
    best = min(candidates, key=lambda c: rows[str(c)]["kid"])
    res = {"candidates": rows, "chosen": best, "criterion": "lowest KID vs the real validation crops", "n": n,
           "steps": steps}
    state["settings"]["latent_clip"] = best
    state["info"]["latent_clip_tuning"] = res
    torch.save(state, ckpt)
    return res


def dpm(settings: dict, clip: bool = False):
    """The sample bundle's sampler (pixel models clip the data prediction to [-1, 1]; latents are not clipped)."""
    from busgen_monai.schedulers import build_scheduler

    return build_scheduler(settings, "dpmpp", clip_sample=clip)


# ----------------------------------------------------------------------------------------------------------- speed
def _time_models(models: dict, size: int, steps: int, batch: int, repeats: int) -> dict[str, list[float]]:
    """s/image of each ``name -> (network, codec, scheduler)`` at ``size`` px and ``steps`` solver steps: batched
    CFG (w = 1.8), decode included for latent models, interleaved repeats (load hits every model alike)."""
    from busgen_monai.inferers import GuidedDiffusionInferer
    from busgen_monai.inferers.latent import LatentDiffusionModel

    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(repeats):
        for name, (net, codec, sc) in models.items():
            inf = GuidedDiffusionInferer(sc, guidance_scale=1.8, num_inference_steps=steps)
            cond = codec.pack_names(["benign", "malignant"] * (batch // 2))
            shape = net.latent_shape(size) if isinstance(net, LatentDiffusionModel) else (1, size, size)
            noise = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(r))
            t0 = time.perf_counter()
            with torch.no_grad():
                x = inf.sample(noise, net, conditioning=cond, verbose=False)
                if isinstance(net, LatentDiffusionModel):
                    x = net.decode(x)
            times[name].append((time.perf_counter() - t0) / batch)
    return times


def speed(latent_ckpt: Path, steps_list: list[int], main_steps: int, batch: int = 8, repeats: int = 2) -> dict:
    """s/image of both families at 64 and 128 px for every solver step count in ``steps_list``, on one thread."""
    from busgen_monai.inferers import default_generator, generator_settings, load_generator
    from busgen_monai.inferers.latent import LatentDiffusionModel
    from busgen_monai.networks import ConditionalDiT, LatentAutoencoderKL
    from busgen_monai.presets import build_network, get_preset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    res = {}
    pix, pcodec = load_generator(default_generator())
    lat, lcodec = load_generator(latent_ckpt)
    # 128 px: untrained networks of the same architectures (timing only)
    pix128 = build_network(get_preset("cpu128"), pcodec).eval()
    ae128 = LatentAutoencoderKL(**lat.autoencoder.init_args)
    dit128 = ConditionalDiT(**{**lat.diffusion_model.init_args, "input_size": 32})
    lat128 = LatentDiffusionModel(dit128, ae128, lat.scale_factor).eval()
    from busgen_monai.inferers.latent import configure_latent_sampler

    lat128.latent_clip = lat.latent_clip
    sched = dpm(generator_settings(latent_ckpt))
    configure_latent_sampler(lat, sched)
    psched = dpm(generator_settings(default_generator()), clip=True)
    for size, models in ((64, {"pixel": (pix, pcodec, psched), "latent": (lat, lcodec, sched)}),
                         (128, {"pixel": (pix128, pcodec, psched), "latent": (lat128, lcodec, sched)})):
        for steps in steps_list:
            times = _time_models(models, size, steps, batch, repeats)
            for name, (net, _, _) in models.items():
                res[f"{name}_{size}px_{steps}steps_s_per_image"] = float(min(times[name]))
                if steps == main_steps:
                    res[f"{name}_{size}px_s_per_image"] = float(min(times[name]))
                    res[f"{name}_{size}px_all_s_per_image"] = [round(v, 4) for v in times[name]]
                res[f"{name}_{size}px_parameters_M"] = float(sum(p.numel() for p in net.parameters()) / 1e6)
                _log(f"speed {name} {size}px {steps} steps: {min(times[name]):.3f} s/image ({times[name]})")
        res[f"speedup_{size}px"] = res[f"pixel_{size}px_s_per_image"] / res[f"latent_{size}px_s_per_image"]
    res.update({"steps": main_steps, "steps_list": steps_list, "batch": batch, "threads": 1,
                "sampler": "DPM-Solver++(2M)", "cfg": "batched, w = 1.8"})
    torch.set_num_threads(threads)
    return res


def all_matched(quality: dict, speed_res: dict) -> dict:
    return {proxy: matched_speedup(quality, speed_res, proxy, higher_better=proxy == "cond_auroc")
            for proxy in ("cond_auroc", "kid", "kid_deep", "nn_dist")}


def speed_variants_128(latent_ckpt: Path, steps_list: list[int], batch: int = 8, repeats: int = 2) -> dict:
    """128 px timing, one thread, side by side: the pixel U-Net (cpu128 preset) against the latent family with an
    **x8** first stage (one more autoencoder level: 16 x 16 x 4 latents at 128 px, the latent-diffusion standard and
    CoLDiT's x8 at 256 px) and the same DiT (64 tokens); :func:`speed` times the x4 first stage (32 x 32 latents,
    256 tokens). Untrained networks: timing does not depend on the weights."""
    from busgen_monai.inferers import default_generator, generator_settings, load_generator
    from busgen_monai.inferers.latent import LatentDiffusionModel, configure_latent_sampler
    from busgen_monai.networks import ConditionalDiT, LatentAutoencoderKL
    from busgen_monai.presets import build_network, get_preset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pix, pcodec = load_generator(default_generator())
    lat, lcodec = load_generator(latent_ckpt)
    a = dict(lat.autoencoder.init_args)
    levels = len(a["channels"]) + 1
    nrb = a["num_res_blocks"]
    ae8 = LatentAutoencoderKL(**{**a, "channels": [*a["channels"], a["channels"][-1]],
                                 "num_res_blocks": nrb if isinstance(nrb, int) else [*nrb, nrb[-1]],
                                 "attention_levels": [False] * levels})
    lat8 = LatentDiffusionModel(ConditionalDiT(**{**lat.diffusion_model.init_args, "input_size": 16}), ae8,
                                lat.scale_factor, latent_clip=lat.latent_clip).eval()
    pix128 = build_network(get_preset("cpu128"), pcodec).eval()
    sched = dpm(generator_settings(latent_ckpt))
    configure_latent_sampler(lat8, sched)
    psched = dpm(generator_settings(default_generator()), clip=True)
    models = {"pixel": (pix128, pcodec, psched), "latent_x8": (lat8, lcodec, sched)}
    res = {"latent_x8_latent_shape": list(lat8.latent_shape(128)),
           "latent_x8_parameters_M": float(sum(p.numel() for p in lat8.parameters()) / 1e6)}
    for steps in steps_list:
        times = _time_models(models, 128, steps, batch, repeats)
        for name in models:
            res[f"{name}_128px_{steps}steps_s_per_image"] = float(min(times[name]))
            _log(f"speed (x8 variant run) {name} 128px {steps} steps: {min(times[name]):.3f} s/image ({times[name]})")
    torch.set_num_threads(threads)
    return res


def matched_speedup(quality: dict, speed_res: dict, proxy: str, higher_better: bool = False) -> dict:
    """Speed-up of the latent model over the pixel model at *equal quality* on one proxy.

    The common level ``target`` is the worse of the two models' best values over the tested solver step counts (the
    best quality both reach); each model's cheapest step count reaching it is timed (``speed_res``, side by side) and
    the speed-up is pixel s/image / latent s/image, at 64 and at 128 px (128 px: the same step counts on the
    128 px networks). ``latent_reaches_pixel_best`` says whether the latent model is as good as the pixel model's best.
    """
    sign = -1.0 if higher_better else 1.0
    vals = {name: {int(k): v[proxy] for k, v in quality[name].items()} for name in ("pixel", "latent")}
    best = {name: min(v.values(), key=lambda x: sign * x) for name, v in vals.items()}
    target = max(best.values(), key=lambda x: sign * x)
    steps = {name: min(k for k, x in v.items() if sign * x <= sign * target) for name, v in vals.items()}
    out = {"proxy": proxy, "higher_is_better": higher_better, "target": target, "pixel_best": best["pixel"],
           "latent_best": best["latent"], "latent_reaches_pixel_best": bool(sign * best["latent"] <= sign * best["pixel"]),
           "pixel_steps": steps["pixel"], "pixel_value": vals["pixel"][steps["pixel"]],
           "latent_steps": steps["latent"], "latent_value": vals["latent"][steps["latent"]]}
    for size in (64, 128):
        out[f"speedup_{size}px"] = (speed_res[f"pixel_{size}px_{steps['pixel']}steps_s_per_image"]
                                    / speed_res[f"latent_{size}px_{steps['latent']}steps_s_per_image"])
    return out


# ----------------------------------------------------------------------------------------------------------- generation
def generate(ckpt: Path, out_dir: Path, n: int, datalist: dict, steps: int, birads=None, seed: int = 0) -> dict:
    from busgen_monai.inferers import generator_settings, load_generator, run_generation

    from busgen_monai.inferers import is_latent

    net, codec = load_generator(ckpt)
    st = generator_settings(ckpt)
    t0 = time.time()
    res = run_generation(net, codec, dpm(st, clip=not is_latent(net)), out_dir, n, image_size=st["image_size"], seed=seed, datalist=datalist,
                         num_inference_steps=steps, guidance_w=st["guidance_w"], chunk_size=16, progress=False,
                         birads=birads)
    dl = json.loads(Path(res.datalist).read_text())
    items = dl["training"]
    from PIL import Image

    ims = torch.stack([torch.from_numpy(np.asarray(Image.open(out_dir / it["image"]).convert("L"), dtype=np.float32))
                       for it in items])[:, None] / 127.5 - 1
    return {"images": ims, "items": items, "datalist": str(res.datalist), "wall_s": time.time() - t0}


# ----------------------------------------------------------------------------------------------------------- classifiers
def train_classifier(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int, seed: int = 0):
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    net = Classifier(in_shape=(1, x.shape[-2], x.shape[-1]), classes=classes, channels=(16, 32, 64, 128),
                     strides=(2, 2, 2, 2), dropout=0.2)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    if classes > 1:
        counts = torch.bincount(y.long(), minlength=classes).float()
        w = (1.0 / counts.clamp(min=1))[y.long()]
    else:
        counts = torch.bincount(y.long(), minlength=2).float()
        w = (1.0 / counts.clamp(min=1))[y.long()]
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.multinomial(w, 32, replacement=True, generator=gen)
        xb = x[idx]
        flip = (torch.rand(32, generator=gen) < 0.5)[:, None, None, None]
        xb = torch.where(flip, xb.flip(-1), xb)
        xb = xb * (1 + 0.2 * (torch.rand(32, 1, 1, 1, generator=gen) - 0.5))
        out = net(xb)
        loss = (torch.nn.functional.cross_entropy(out, y[idx].long()) if classes > 1 else
                torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y[idx].float()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def predict(net, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(x[i:i + 256]) for i in range(0, len(x), 256)])


def confusion(y_true, y_pred, k: int) -> list[list[int]]:
    m = np.zeros((k, k), dtype=int)
    for a, b in zip(y_true, y_pred):
        m[int(a), int(b)] += 1
    return m.tolist()


# ----------------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench_latent")
    ap.add_argument("--ae-steps", type=int, default=800)
    ap.add_argument("--dit-steps", type=int, default=8000)
    ap.add_argument("--dit-size", default="cpu", help="a key of busgen_monai.networks.DIT_SIZES")
    ap.add_argument("--dit-batch", type=int, default=32)
    ap.add_argument("--dit-lr", type=float, default=3e-4)
    ap.add_argument("--weighting", choices=("none", "min_snr"), default="min_snr")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--no-centre-latents", dest="centre_latents", action="store_false",
                    help="keep the scalar latent scale only (no per-channel standardisation)")
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--latent-clip", default="1,1.5,2,3",
                    help="latent_clip candidates (besides none) tuned on the validation split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and generation")
    ap.add_argument("--steps", type=int, default=20, help="solver steps for every generator")
    ap.add_argument("--n-quality", type=int, default=192, help="images per generator for the quality proxy")
    ap.add_argument("--quality-steps", default="5,10,20",
                    help="solver step counts at which both generators are timed and scored (equal-quality matching)")
    ap.add_argument("--clf-steps", type=int, default=600)
    ap.add_argument("--max-synthetic", type=int, default=None, help="cap the half-real synthetic set (smoke runs)")
    ap.add_argument("--speed-variants", action="store_true",
                    help="only time the x8-autoencoder latent variant at 128 px against the pixel U-Net (side by "
                         "side), add it to the finished results in --out and re-render them")
    ap.add_argument("--no-pixel-tstr", action="store_true",
                    help="skip the pixel model's synthetic-only arm (it generates as many pixel images as the half)")
    ap.add_argument("--publish", action="store_true", help="copy results to docs/benchmarks/latent_results.*")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": vars(args), "walls_s": {}}
    t_all = time.time()

    def part(name):
        results["walls_s"][name] = round(time.time() - part.t0, 1)
        part.t0 = time.time()
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    part.t0 = time.time()

    if args.speed_variants:
        done = json.loads((out / "results.json").read_text())
        done["matched"] = all_matched(done["quality"]["by_steps"], done["speed"])  # the current matching rule
        steps_list = done["speed"]["steps_list"]
        v = speed_variants_128(out / "latent_model.pt", steps_list)
        v["matched"] = {}
        for proxy, m in done.get("matched", {}).items():
            v["matched"][proxy] = {"pixel_steps": m["pixel_steps"], "latent_steps": m["latent_steps"], "speedup_128px":
                                   v[f"pixel_128px_{m['pixel_steps']}steps_s_per_image"]
                                   / v[f"latent_x8_128px_{m['latent_steps']}steps_s_per_image"]}
        done["speed_variants_128"] = v
        (out / "results.json").write_text(json.dumps(done, indent=1, default=str))
        md = render_md(done)
        (out / "results.md").write_text(md)
        if args.publish:
            (ROOT / "docs" / "benchmarks" / "latent_results.json").write_text(json.dumps(done, indent=1, default=str))
            (ROOT / "docs" / "benchmarks" / "latent_results.md").write_text(md)
        print(md)
        return

    from busgen_monai.networks import ConditionCodec

    real = load_real(out, 64)
    data = real["datalist"]
    part("load_real")
    codec = ConditionCodec.from_datalist(data, max_boxes=8)
    ae, ae_info = train_autoencoder(out, real, args.ae_steps)
    results["autoencoder"] = ae_info
    part("train_autoencoder")
    ckpt, dit_info = train_dit(out, real, ae, codec, args)
    results["dit"] = dit_info
    part("train_dit")
    results["latent_clip"] = tune_latent_clip(ckpt, real, args.steps,
                                              [None] + [float(v) for v in args.latent_clip.split(",")])
    part("latent_clip")

    steps_list = sorted({int(v) for v in args.quality_steps.split(",")} | {args.steps})
    results["speed"] = speed(ckpt, steps_list, args.steps)
    part("speed")

    # quality proxy: both generators at every step count, n images each
    from bench_sample import N_DEEP, _feature_net, _features, _proxies
    from busgen_monai.inferers import default_generator

    fnet = _feature_net()
    feat = lambda ims: _features(ims.repeat(1, 3, 1, 1), fnet)  # noqa: E731
    real_test_f = feat(real["test"]["images"])
    quality = {"latent": {}, "pixel": {}}
    gens = {}
    for steps in steps_list:
        for name, src in (("latent", ckpt), ("pixel", default_generator())):
            g = generate(src, out / f"gen_{name}_quality_{steps}", args.n_quality, data, steps,
                         birads=BIRADS if name == "latent" else None)
            gens[(name, steps)] = g
            quality[name][str(steps)] = {**_proxies(feat(g["images"]), real_test_f, N_DEEP),
                                         "wall_s_per_image": g["wall_s"] / args.n_quality}
            _log(f"quality {name} {steps} steps: {quality[name][str(steps)]}")
    # semantic, condition-aware proxy: a pathology classifier trained on all real training crops scores every
    # generated set against the pathology each image was generated for (AUROC; its real-test AUROC is the ceiling)
    from busgen_monai.evaluation.stats import delong_ci

    tr, te = real["training"], real["test"]
    y_all = torch.tensor([int(p == "malignant") for p in tr["pathology"]])
    pclf = train_classifier(tr["images"], y_all, 1, args.clf_steps)
    y_te = np.array([int(p == "malignant") for p in te["pathology"]])
    cond_ref = delong_ci(y_te, torch.sigmoid(predict(pclf, te["images"])[:, 0]).numpy())
    for (name, steps), g in gens.items():
        yg = np.array([int(it["pathology"] == "malignant") for it in g["items"]])
        sg = torch.sigmoid(predict(pclf, g["images"])[:, 0]).numpy()
        auc, lo, hi = delong_ci(yg, sg)
        quality[name][str(steps)].update({"cond_auroc": float(auc), "cond_auroc_ci95": [float(lo), float(hi)]})
    gen_lat = gens[("latent", args.steps)]
    results["quality"] = {
        "cond_auroc_real_test": {"auroc": float(cond_ref[0]), "ci95": [float(cond_ref[1]), float(cond_ref[2])]},
        "latent": quality["latent"][str(args.steps)], "pixel": quality["pixel"][str(args.steps)],
        "by_steps": quality,
        "floor_real_validation": {**_proxies(feat(real["validation"]["images"]), real_test_f, N_DEEP)},
        "n_images": args.n_quality, "reference": f"real test crops ({len(real_test_f)})",
    }
    results["matched"] = all_matched(quality, results["speed"])
    part("quality")

    # BI-RADS classifier on real data; agreement on generated images
    yb = torch.tensor([BIRADS.index(b) for b in tr["birads"]])
    bclf = train_classifier(tr["images"], yb, 4, args.clf_steps)
    yb_te = [BIRADS.index(b) for b in te["birads"]]
    pred_te = predict(bclf, te["images"]).argmax(1).tolist()
    gen_b = [BIRADS.index(it["birads"]) for it in gen_lat["items"]]
    pred_gen = predict(bclf, gen_lat["images"]).argmax(1).tolist()
    results["birads_agreement"] = {
        "classes": BIRADS,
        "real_test": {"accuracy": float(np.mean(np.array(yb_te) == np.array(pred_te))),
                      "confusion": confusion(yb_te, pred_te, 4)},
        "latent_generated": {"accuracy": float(np.mean(np.array(gen_b) == np.array(pred_gen))),
                             "confusion": confusion(gen_b, pred_gen, 4)},
        "chance_accuracy": 0.25, "note": "rows = requested / true BI-RADS, columns = predicted",
    }
    part("birads_agreement")

    # half-real experiment
    from busgen_monai.evaluation.stats import delong_ci, delong_test

    patients = sorted(set(tr["patient"]))
    rng = np.random.default_rng(0)
    keep = set(rng.permutation(patients)[: len(patients) // 2].tolist())
    half = [i for i, p in enumerate(tr["patient"]) if p in keep]
    n_syn = len(tr["patient"]) - len(half)
    if args.max_synthetic:
        n_syn = min(n_syn, args.max_synthetic)
    gen_half = generate(ckpt, out / "gen_latent_half", n_syn, data, args.steps, birads=BIRADS, seed=1)
    y_syn = torch.tensor([int(it["pathology"] == "malignant") for it in gen_half["items"]])
    arms = {"all_real": (tr["images"], y_all),
            "half_real_plus_synthetic": (torch.cat([tr["images"][half], gen_half["images"]]),
                                         torch.cat([y_all[half], y_syn])),
            "half_real_only": (tr["images"][half], y_all[half]),
            # train on synthetic, test on real (TSTR): the semantic quality of each family, same number of images
            "latent_synthetic_only": (gen_half["images"], y_syn)}
    if not args.no_pixel_tstr:
        gen_pix_half = generate(default_generator(), out / "gen_pixel_half", n_syn, data, args.steps, seed=1)
        arms["pixel_synthetic_only"] = (gen_pix_half["images"], torch.tensor(
            [int(it["pathology"] == "malignant") for it in gen_pix_half["items"]]))
    scores = {}
    half_res = {"n_real_all": len(y_all), "n_real_half": len(half), "n_synthetic": n_syn}
    for name, (x, y) in arms.items():
        clf = pclf if name == "all_real" else train_classifier(x, y, 1, args.clf_steps)
        s = torch.sigmoid(predict(clf, te["images"])[:, 0]).numpy()
        scores[name] = s
        auc, lo, hi = delong_ci(y_te, s)
        half_res[name] = {"auroc": float(auc), "ci95": [float(lo), float(hi)], "n_train": len(y)}
        _log(f"half-real arm {name}: AUROC {auc:.3f}")
    for name in [a for a in arms if a != "all_real"]:
        d = delong_test(y_te, scores["all_real"], scores[name])
        auc_a, auc_b, z, p_value, _ = d
        half_res[f"delong_p_all_real_vs_{name}"] = float(p_value)
        half_res[f"delong_z_all_real_vs_{name}"] = float(z)
    results["half_real"] = half_res
    results["half_real"]["synthetic_pathology"] = {p: int(sum(1 for it in gen_half["items"] if it["pathology"] == p))
                                                  for p in ("benign", "malignant")}
    results["half_real"]["synthetic_birads"] = {b: int(sum(1 for it in gen_half["items"] if it["birads"] == b))
                                               for b in BIRADS}
    part("half_real")

    # privacy audit (busgen-cpsample) of the synthetic half-real set against the training split
    try:
        from busgen_cpsample.audit import run_audit

        train_dl = {**{k: v for k, v in data.items() if k not in ("validation", "test")}}
        summary = run_audit(gen_half["datalist"], train_dl, out / "privacy", progress=False, plots=False,
                            reference_max=300, compare_size=64)
        results["privacy"] = {k: summary.get(k) for k in ("n_generated", "n_training", "cosine", "ms_ssim",
                                                          "reference_training_loo", "near_copies", "passed", "rule")}
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        results["privacy"] = {"error": f"{type(err).__name__}: {err}"}
    part("privacy")
    results["total_wall_s"] = round(time.time() - t_all, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    md = render_md(results)
    (out / "results.md").write_text(md)
    if args.publish:
        (ROOT / "docs" / "benchmarks").mkdir(parents=True, exist_ok=True)
        (ROOT / "docs" / "benchmarks" / "latent_results.json").write_text(json.dumps(results, indent=1, default=str))
        (ROOT / "docs" / "benchmarks" / "latent_results.md").write_text(md)
    print(md)


def _f(v, nd=3):
    return "n/a" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def render_md(r: dict) -> str:
    s, q, b, h, p = r.get("speed", {}), r.get("quality", {}), r.get("birads_agreement", {}), r.get("half_real", {}), \
        r.get("privacy", {})
    st = r.get("settings", {})
    d = r.get("dit", {})
    lines = ["# Latent (autoencoder + DiT) vs pixel generation on BUS-BRA, CPU", "",
             f"Produced by `.venv/bin/python benchmarks/bench_latent.py --out runs/bench_latent --threads "
             f"{st.get('threads', 1)} --publish` (method: the script's docstring). BUS-BRA: Gomez-Flores et al., "
             "Medical Physics 2023. CoLDiT: Research 2024, DOI 10.34133/research.0532.", "",
             f"Latent model trained here: autoencoder {r['autoencoder']['steps']} steps "
             f"({_f(r['autoencoder']['train_s'], 0)} s, validation MAE {_f(r['autoencoder']['val_mae'])}, PSNR "
             f"{_f(r['autoencoder']['val_psnr_db'], 1)} dB), DiT {_f(r['dit']['parameters_M'], 2)} M parameters, "
             f"{d['steps']} steps of {d.get('batch', 32)} ({_f(d['train_s'], 0)} s, {d.get('threads', 1)} threads; size "
             f"{d.get('size', 'n/a')}, LR {d.get('lr', 'n/a')}, weighting {d.get('weighting', 'none')}, EMA "
             f"{d.get('ema', 'n/a')}, latents centred per channel: {d.get('centre_latents', False)}), latent scale "
             f"{_f(d['scale_factor'])}.",
             ""]
    lc = r.get("latent_clip") or {}
    if lc:
        lines += ["## Latent sampler bound (`latent_clip`), chosen on the validation split", "",
                  f"DPM-Solver++ {lc.get('steps')} steps, {lc.get('n')} images, proxies vs the real validation crops; "
                  f"chosen: **{lc.get('chosen')}** ({lc.get('criterion')}).", "",
                  "| latent_clip | KID | KID random-net features | NN distance |", "|---|---|---|---|"]
        for c, v in lc.get("candidates", {}).items():
            lines.append(f"| {c} | {_f(v.get('kid'), 3)} +- {_f(v.get('kid_halves_sd'), 3)} | "
                         f"{_f(v.get('kid_deep'), 4)} | {_f(v.get('nn_dist'), 2)} |")
        lines.append("")
    lines += ["## Sampling speed (s/image, same run, side by side)", "",
             f"DPM-Solver++(2M), {s.get('steps')} steps, batched CFG w = 1.8, batch {s.get('batch')}, "
             f"{s.get('threads')} thread.", "",
             "| size | pixel U-Net | latent DiT (incl. decode) | speed-up |", "|---|---|---|---|"]
    for size in (64, 128):
        lines.append(f"| {size} px | {_f(s.get(f'pixel_{size}px_s_per_image'))} "
                     f"({_f(s.get(f'pixel_{size}px_parameters_M'), 1)} M) | "
                     f"{_f(s.get(f'latent_{size}px_s_per_image'))} ({_f(s.get(f'latent_{size}px_parameters_M'), 1)} M)"
                     f" | x{_f(s.get(f'speedup_{size}px'), 1)} |")
    lines += ["", "64 px: the shipped pixel generator and the latent model trained here; 128 px: untrained networks "
              "of the same architectures (cpu128 pixel preset; latent model at 128 px = 32x32 latents), timing only.",
              "", "## Quality proxies vs the real test crops, by solver steps (AUROC: higher is better; KID, NN distance: lower)", "",
              "| generator | steps | pathology AUROC on generated (real-trained classifier) | KID (+- sd over halves) | "
              "KID random-net features | NN distance | s/image 64 px | s/image 128 px |", "|---|---|---|---|---|---|---|---|"]
    by = q.get("by_steps", {})
    for name in ("pixel", "latent"):
        for steps, v in sorted(by.get(name, {}).items(), key=lambda kv: int(kv[0])):
            ci = v.get("cond_auroc_ci95") or [None, None]
            lines.append(f"| {name} | {steps} | {_f(v.get('cond_auroc'))} [{_f(ci[0])}, {_f(ci[1])}] | "
                         f"{_f(v.get('kid'), 3)} +- {_f(v.get('kid_halves_sd'), 3)} | "
                         f"{_f(v.get('kid_deep'), 4)} +- {_f(v.get('kid_deep_halves_sd'), 4)} | "
                         f"{_f(v.get('nn_dist'), 2)} +- {_f(v.get('nn_dist_halves_sd'), 2)} | "
                         f"{_f(s.get(f'{name}_64px_{steps}steps_s_per_image'))} | "
                         f"{_f(s.get(f'{name}_128px_{steps}steps_s_per_image'))} |")
    fl = q.get("floor_real_validation", {})
    cr = q.get("cond_auroc_real_test", {})
    lines.append(f"| real (validation vs test; AUROC: the classifier on real test) | | {_f(cr.get('auroc'))} | "
                 f"{_f(fl.get('kid'), 3)} | {_f(fl.get('kid_deep'), 4)} | {_f(fl.get('nn_dist'), 2)} | | |")
    lines += ["", f"{q.get('n_images')} images per generator and step count (+- = sd over 20 random halves). Offline "
              "features (no Inception), not comparable with published FID.", "",
              "## Speed-up at equal quality proxy", "",
              "Common level = the worse of the two models' best values over the tested step counts; each model at "
              "its cheapest step count reaching it (`matched_speedup`). Pathology AUROC: higher is better; the "
              "others: lower is better.", "",
              "| proxy | pixel best / latent best | common level | pixel (steps: value) | latent (steps: value) | "
              "speed-up 64 px | speed-up 128 px (x4 first stage) |", "|---|---|---|---|---|---|---|"]
    for proxy, m in r.get("matched", {}).items():
        lines.append(f"| {proxy} | {_f(m.get('pixel_best'), 4)} / {_f(m.get('latent_best'), 4)} | "
                     f"{_f(m.get('target'), 4)} | {m.get('pixel_steps')}: {_f(m.get('pixel_value'), 4)} | "
                     f"{m.get('latent_steps')}: {_f(m.get('latent_value'), 4)} | x{_f(m.get('speedup_64px'), 1)} | "
                     f"x{_f(m.get('speedup_128px'), 1)} |")
    v = r.get("speed_variants_128")
    if v:
        lines += ["", "### 128 px with an x8 first stage (16 x 16 x 4 latents, 64 tokens; separate run, side by side)",
                  "", f"Latent family {_f(v.get('latent_x8_parameters_M'), 1)} M parameters, latents "
                  f"{v.get('latent_x8_latent_shape')}; one thread.", "",
                  "| steps | pixel U-Net s/image | latent (x8) s/image | speed-up |", "|---|---|---|---|"]
        for steps in s.get("steps_list", []):
            pv, lv = v.get(f"pixel_128px_{steps}steps_s_per_image"), v.get(f"latent_x8_128px_{steps}steps_s_per_image")
            lines.append(f"| {steps} | {_f(pv)} | {_f(lv)} | x{_f(pv / lv if pv and lv else None, 1)} |")
        lines += ["", "At equal quality proxy (pixel comparator steps as above): " + "; ".join(
            f"{proxy}: x{_f(m.get('speedup_128px'), 1)} (pixel {m.get('pixel_steps')} steps)"
            for proxy, m in v.get("matched", {}).items()) + "."]
    lines += ["",
              "## BI-RADS agreement (classifier trained on real BUS-BRA training crops)", "",
              f"Real test accuracy {_f(b.get('real_test', {}).get('accuracy'))}; latent generated (requested BI-RADS) "
              f"accuracy {_f(b.get('latent_generated', {}).get('accuracy'))}; chance 0.25.", "",
              "Confusion (rows = requested/true 2, 3, 4, 5; columns = predicted):", "",
              f"- real test: {b.get('real_test', {}).get('confusion')}",
              f"- latent generated: {b.get('latent_generated', {}).get('confusion')}", "",
              "## Half real + synthetic (pathology classifier, real test AUROC, DeLong)", "",
              "| arm | n train | AUROC [95 % CI] |", "|---|---|---|"]
    for name in ("all_real", "half_real_plus_synthetic", "half_real_only", "latent_synthetic_only",
                 "pixel_synthetic_only"):
        if name not in h:
            continue
        d = h.get(name, {})
        ci = d.get("ci95") or [None, None]
        lines.append(f"| {name} | {d.get('n_train')} | {_f(d.get('auroc'))} [{_f(ci[0])}, {_f(ci[1])}] |")
    lines += ["", f"DeLong p (all real vs half real + synthetic): "
              f"{_f(h.get('delong_p_all_real_vs_half_real_plus_synthetic'))}; (all real vs half real only): "
              f"{_f(h.get('delong_p_all_real_vs_half_real_only'))}; (all real vs latent synthetic only): "
              f"{_f(h.get('delong_p_all_real_vs_latent_synthetic_only'))}; (all real vs pixel synthetic only): "
              f"{_f(h.get('delong_p_all_real_vs_pixel_synthetic_only'))}. CoLDiT reported P = 0.81 for its "
              "half-synthetic arm. The synthetic-only arms (train on synthetic, test on real) compare the two "
              "families' semantic quality with the same number of images.", "", f"Synthetic set: pathology {h.get('synthetic_pathology')}, BI-RADS "
              f"{h.get('synthetic_birads')}.", "", "## Privacy audit (busgen-cpsample, synthetic vs training split)", ""]
    if "error" in p:
        lines.append(f"Not run: {p['error']}")
    else:
        lines += [f"- generated {p.get('n_generated')} vs training {p.get('n_training')}; near-copies "
                  f"({p.get('rule')}): {p.get('near_copies')} -> {'PASS' if p.get('passed') else 'FAIL'}",
                  f"- cosine: {json.dumps(p.get('cosine'), default=str)[:400]}",
                  f"- MS-SSIM: {json.dumps(p.get('ms_ssim'), default=str)[:400]}",
                  f"- training leave-one-out reference: {json.dumps(p.get('reference_training_loo'), default=str)[:400]}"]
    lines += ["", f"Part wall times (s): {r.get('walls_s')}; total {r.get('total_wall_s')} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
