"""Membership inference: two simple attacks that say how much a generator (or its output) leaks its training set.

1. **Loss-threshold attack on the model** (:func:`loss_attack`, Yeom et al. 2018 style): the diffusion model's
   denoising loss ``|| eps - eps_theta(x_t, t, c) ||^2`` averaged over a *fixed* set of timesteps and noise draws
   (the same for every image) is lower on images the model was trained on. Score = ``-loss``; the attack's AUC of
   "training vs held-out" (``busgen_monai.evaluation.metrics.auroc``) is 0.5 for no leakage and 1.0 for a model
   that tells its training images apart perfectly. This measures the *model*: the CPSampling guard acts only at
   sampling time, so this AUC is the same with and without the guard.
2. **Proximity attack on the generated data** (:func:`proximity_attack`): an attacker who only sees the released
   synthetic images scores every candidate image by its similarity to the nearest generated image (audit feature
   space). Training images that the generator copies score high. This is what the guard is meant to reduce, so it is
   the "with / without guard" comparison.

``busgen membership-inference CHECKPOINT TRAINING_DATALIST HELDOUT_DATALIST --out DIR [--generated DATALIST ...]``
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_TIMESTEPS", "load_items_tensors", "denoising_losses", "loss_attack", "proximity_attack", "main"]

DEFAULT_TIMESTEPS = (10, 50, 100, 150, 200, 250, 300, 350, 400, 450)


def load_items_tensors(
    source: Mapping | str | os.PathLike | Sequence[Mapping],
    codec: Any,
    image_size: int,
    splits: str | Sequence[str] = "training",
    use_birads: bool = False,
    image_channels: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, S, S)`` (``image_channels``: the generator's, 1 = grey) in ``[-1, 1]`` and packed conditions
    ``(N, 1, K)`` of datalist items, with the
    generator's deterministic preprocessing (the pretrain bundle's validation pipeline: centred box-keeping square
    crop, resize)."""
    from busgen_monai.data.dataset import datalist_items
    from busgen_monai.data.transforms import bus_train_transforms

    items = list(source) if isinstance(source, Sequence) and not isinstance(source, (str, os.PathLike)) else \
        datalist_items(source, splits)
    if not items:
        raise ValueError("no items to load")
    tf = bus_train_transforms(codec, int(image_size), augment=False, use_birads=use_birads,
                              image_channels=int(image_channels))
    rows = [tf(dict(it)) for it in items]
    images = torch.stack([torch.as_tensor(r["image"]).float().as_subclass(torch.Tensor) for r in rows])
    conds = torch.stack([torch.as_tensor(r["cond"]).float().as_subclass(torch.Tensor) for r in rows])
    return images, conds


@torch.no_grad()
def denoising_losses(
    network: torch.nn.Module,
    images: torch.Tensor,
    conditions: torch.Tensor | None,
    scheduler: Any,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    n_noise: int = 2,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Per-image denoising MSE ``(N,)`` averaged over ``timesteps`` x ``n_noise`` fixed draws.

    The noise of draw ``j`` at timestep ``t`` is seeded by ``(seed, t, j)`` and shared by every image (same shape),
    so members and non-members are measured with the same noise.
    """
    network = network.to(device).eval()
    n = images.shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    for t in timesteps:
        for j in range(int(n_noise)):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(t) * 101 + j)
            noise = torch.randn(images.shape[1:], generator=g)
            for i in range(0, n, batch_size):
                x0 = images[i:i + batch_size].to(device)
                eps = noise.to(device).expand_as(x0)
                tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=device)
                x_t = scheduler.add_noise(original_samples=x0, noise=eps, timesteps=tt)
                c = conditions[i:i + batch_size].to(device) if conditions is not None else None
                pred = network(x_t, timesteps=tt, context=c)
                total[i:i + x0.shape[0]] += (pred - eps).pow(2).flatten(1).mean(1).double().cpu()
    return (total / (len(timesteps) * int(n_noise))).numpy()


def loss_attack(network: torch.nn.Module, members: tuple[torch.Tensor, torch.Tensor | None],
                non_members: tuple[torch.Tensor, torch.Tensor | None], scheduler: Any, **kwargs: Any) -> dict:
    """AUC of "member vs non-member" scored by ``-denoising loss`` (see the module docstring).

    Args:
        members, non_members: ``(images, conditions)`` from :func:`load_items_tensors`.
        scheduler: the generator's training scheduler (``add_noise``).
        kwargs: passed to :func:`denoising_losses`.
    """
    from busgen_monai.evaluation.metrics import auroc

    lm = denoising_losses(network, members[0], members[1], scheduler, **kwargs)
    ln = denoising_losses(network, non_members[0], non_members[1], scheduler, **kwargs)
    y = np.r_[np.ones(len(lm)), np.zeros(len(ln))]
    return {"auc": float(auroc(y, -np.r_[lm, ln])), "n_members": int(len(lm)), "n_non_members": int(len(ln)),
            "member_loss_mean": float(lm.mean()), "non_member_loss_mean": float(ln.mean()),
            "member_losses": lm.tolist(), "non_member_losses": ln.tolist()}


def proximity_attack(generated: Any, members: Any, non_members: Any, *, feature_extractor: Any = None,
                     load_size: int = 64, batch_size: int = 64, device: str | torch.device = "cpu",
                     generated_splits: Sequence[str] | None = None,
                     member_splits: Sequence[str] | None = ("training",),
                     non_member_splits: Sequence[str] | None = None) -> dict:
    """AUC of "member vs non-member" scored by the cosine similarity to the nearest *generated* image.

    Features: the audit's (:class:`~busgen_cpsample.features.RandomConvPixelFeatures` by default) on the audit's
    views (generator square window, compared at the generated resolution), centred on the union of members and
    non-members (the attacker's candidate pool), so both groups are treated alike.
    ``generated``/``members``/``non_members`` are datalists, folders or lists of image paths.
    """
    from busgen_monai.evaluation.metrics import auroc

    from .audit import extract_features, image_records, load_view
    from .features import RandomConvPixelFeatures
    from .neighbours import FeatureSpace, topk_cosine

    extractor = feature_extractor if feature_extractor is not None else RandomConvPixelFeatures()
    sets = [image_records(src, sp) for src, sp in ((generated, generated_splits), (members, member_splits),
                                                   (non_members, non_member_splits))]
    size = int(min(load_view(sets[0][0][0], sets[0][2][0]).shape[:2]))
    fg, fm, fn = (extract_features(paths, extractor, load_size, batch_size, device=device, boxes=boxes,
                                   compare_size=size) for paths, _, boxes in sets)
    space = FeatureSpace(getattr(extractor, "parts", None)).fit(torch.cat([fm, fn]))
    zg = space.transform(fg)
    sm = topk_cosine(space.transform(fm), zg, 1, device=device)[0][:, 0].numpy()
    sn = topk_cosine(space.transform(fn), zg, 1, device=device)[0][:, 0].numpy()
    y = np.r_[np.ones(len(sm)), np.zeros(len(sn))]
    return {"auc": float(auroc(y, np.r_[sm, sn])), "n_members": int(len(sm)), "n_non_members": int(len(sn)),
            "member_nearest_generated_mean": float(sm.mean()), "non_member_nearest_generated_mean": float(sn.mean()),
            "member_scores": sm.tolist(), "non_member_scores": sn.tolist()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="busgen membership-inference",
        description="Loss-threshold membership inference on a generator (training vs held-out AUC) and, with "
                    "--generated, the proximity attack on generated data sets (one AUC per generated datalist).")
    p.add_argument("checkpoint", help="generator checkpoint (file or models/ folder)")
    p.add_argument("training", help="the generator's training datalist (split 'training' = members)")
    p.add_argument("heldout", help="held-out datalist (non-members)")
    p.add_argument("--heldout-splits", default="validation,test", help="splits of the held-out datalist")
    p.add_argument("--preset", default="tiny", help="generator preset (default tiny)")
    p.add_argument("--image-size", type=int, default=None, help="image size (default: the preset's)")
    p.add_argument("--generated", nargs="*", default=[], help="generated datalists for the proximity attack")
    p.add_argument("--n-noise", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output folder (membership.json)")
    args = p.parse_args(argv)

    from busgen_monai.data.schema import atomic_write_text, load_datalist
    from busgen_monai.evaluation.report import to_jsonable
    from busgen_monai.inferers import load_generator
    from busgen_monai.presets import build_scheduler, get_preset

    preset = get_preset(args.preset)
    size = int(args.image_size or preset["image_size"])
    network, codec = load_generator(args.checkpoint, preset, device=args.device)
    heldout_splits = [s for s in args.heldout_splits.split(",") if s]
    ch = int(getattr(network, "image_channels", 1))  # the generator's channel count
    members = load_items_tensors(args.training, codec, size, "training", image_channels=ch)
    heldout = load_datalist(args.heldout, check_files=False)
    non = load_items_tensors(heldout, codec, size, [s for s in heldout_splits if heldout.get(s)], image_channels=ch)
    result: dict[str, Any] = {"loss_attack": loss_attack(network, members, non, build_scheduler(preset),
                                                         n_noise=args.n_noise, seed=args.seed, device=args.device)}
    result["proximity_attack"] = {
        g: proximity_attack(g, args.training, args.heldout, non_member_splits=heldout_splits, device=args.device)
        for g in args.generated}
    out = Path(args.out)
    atomic_write_text(out / "membership.json", json.dumps(to_jsonable(result), indent=1))
    print(f"loss attack AUC (training vs held-out): {result['loss_attack']['auc']:.3f}")
    for g, r in result["proximity_attack"].items():
        print(f"proximity attack AUC on {g}: {r['auc']:.3f}")
    return 0
