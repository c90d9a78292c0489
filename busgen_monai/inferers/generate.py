"""Sharded, resumable generation of a labelled synthetic data set from a conditional diffusion model.

The plan is a pure function of ``(n, seed, condition grid, box prior)``: item ``i`` always gets the same
pathology, device, boxes and start noise, whatever the number of ranks or restarts. Items are processed in
fixed *chunks* of ``chunk_size`` consecutive indices (one sampler batch each; the stochastic-step generator is
seeded by the chunk), and chunk ``c`` belongs to rank ``c % world_size``. So:

- the output does not depend on the world size (1 rank and 2 ranks under ``torchrun`` give the same items);
- a killed run resumes: a chunk whose items all exist is skipped; every image and its sidecar JSON are written
  atomically (temporary file + rename), the sidecar last, so a half-written item is redone;
- rank 0 merges the sidecars, in index order, into the datalist (boxes = the conditioning boxes, i.e.
  pseudo-labels; provenance = model hash, seed, index, conditions, sampler, steps, guidance), applies the
  post-hoc filters (:class:`busgen_monai.plugins.DatalistFilter`, e.g. cleaning) and writes the rejects list
  and a sample grid.

Both generator families run here: for a latent generator (:class:`~busgen_monai.inferers.latent.LatentDiffusionModel`,
``bundles/busgen_latent``) the start noise of item ``i`` is drawn in the latent's shape (same per-item seeds), the
inferer and its guards work in latent space, and the result is decoded before anything is written or filtered.
A plan may also carry BI-RADS (``birads=[...]``, the CoLDiT condition): balanced over the given categories, with the
pathology drawn from the datalist's pathology mix within each category (so the pair is one that occurs).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.schema import SCHEMA_VERSION, atomic_write_text, make_datalist, save_datalist
from .box_prior import BoxPrior
from ..utils.io import atomic_save_png, file_sha256  # file_sha256 re-exported

__all__ = [
    "plan_conditions", "device_weights_from", "generate_dataset", "run_generation", "file_sha256", "GenerationResult",
    "item_seed", "GenerationSettingsError", "birads_pathology_mix",
]


class GenerationSettingsError(ValueError):
    """An output folder holds a generation run with other settings (resume refused; ``force=True`` starts over)."""


def item_seed(seed: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of a run seeded ``seed`` (stable across Python versions)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def device_weights_from(data: Mapping | None, devices: Sequence[str]) -> list[float]:
    """Training-split device counts of a datalist for ``devices`` (the mix the default plan follows); a device the
    training split lacks gets weight 0 only if some other device has images, else every device gets 1."""
    from ..data.schema import iter_items

    counts = dict.fromkeys(devices, 0)
    if data is not None:
        items = [it for split, _, it in iter_items(data) if split == "training"] or \
            [it for _, _, it in iter_items(data)]
        for it in items:
            if it.get("device") in counts:
                counts[it["device"]] += 1
    total = sum(counts.values())
    return [float(counts[d]) if total else 1.0 for d in devices]


def plan_conditions(
    n: int,
    pathologies: Sequence[str],
    devices: Sequence[str],
    seed: int = 0,
    box_prior: BoxPrior | None = None,
    boxes: Sequence[Sequence[Sequence[float]]] | None = None,
    boxes_per_image: int = 1,
    device_weights: Sequence[float] | None = None,
    birads: Sequence[str] | None = None,
    birads_pathology: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict]:
    """Conditions for items ``0..n-1``, balanced on pathology and following a device mix.

    Item ``i`` gets pathology ``pathologies[i mod P]`` (class-balanced). Within each pathology, devices follow
    ``device_weights`` (default: equal) by a smooth weighted round-robin: the ``k``-th item of a pathology gets the
    device whose count lags its share ``k * w_d / sum(w)`` most, so every prefix of the plan matches the mix as
    closely as whole items allow (a device with 2 % of the training images makes ~2 % of the set, not ``1/D``).
    Boxes are drawn from the pathology's prior with the item's own seed (or the given ``boxes[i]``); ``normal``
    (or any pathology the prior does not know) gets no box. The plan is prefix-stable: the first ``m`` items of a
    plan for ``n > m`` are the plan for ``m``.

    With ``birads`` (BI-RADS categories, CoLDiT's condition) item ``i`` gets ``birads[i mod len(birads)]`` and a
    pathology drawn with the item's seed from ``birads_pathology[category]`` (pathology -> weight, e.g. the training
    split's counts: :func:`birads_pathology_mix`; missing or empty: uniform over ``pathologies``); devices and boxes
    then follow as above, per pathology. Without ``birads`` the plan is exactly the pathology-balanced one.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not pathologies or not devices:
        raise ValueError("plan_conditions needs at least one pathology and one device")
    if boxes is not None and len(boxes) < n:
        raise ValueError(f"{len(boxes)} boxes given for {n} items")
    weights = np.ones(len(devices)) if device_weights is None else np.asarray(device_weights, dtype=np.float64)
    if weights.shape != (len(devices),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"device_weights must be {len(devices)} non-negative numbers, not all zero; got "
                         f"{list(device_weights or [])}")
    share = weights / weights.sum()
    counts = {p: np.zeros(len(devices)) for p in pathologies}
    plan = []
    for i in range(n):
        pathology = pathologies[i % len(pathologies)]
        category = None
        if birads:
            category = str(birads[i % len(birads)]).lower()
            mix = dict((birads_pathology or {}).get(category) or {})
            w = np.array([float(mix.get(p, 0.0)) for p in pathologies]) if mix else np.ones(len(pathologies))
            if w.sum() <= 0:
                w = np.ones(len(pathologies))
            rng = np.random.default_rng(item_seed(seed + 7919, i))
            pathology = pathologies[int(rng.choice(len(pathologies), p=w / w.sum()))]
        c = counts[pathology]
        lag = (c.sum() + 1) * share - c
        d = int(np.argmax(lag))  # ties -> the first device, deterministic
        c[d] += 1
        device = devices[d]
        if boxes is not None:
            item_boxes = [list(map(float, b)) for b in boxes[i]]
        elif box_prior is not None and pathology in box_prior.pathologies:
            rng = np.random.default_rng(item_seed(seed, i))
            item_boxes = box_prior.sample(pathology, boxes_per_image, seed=rng).round(6).tolist()
        else:
            item_boxes = []
        entry = {"index": i, "pathology": pathology, "device": device, "boxes": item_boxes}
        if category is not None:
            entry["birads"] = category
        plan.append(entry)
    return plan


def birads_pathology_mix(data: Mapping | None) -> dict[str, dict[str, int]]:
    """``{birads: {pathology: count}}`` over the training split of a datalist (all items if it has none)."""
    from ..data.schema import iter_items

    if data is None:
        return {}
    items = [it for split, _, it in iter_items(data) if split == "training"] or [it for _, _, it in iter_items(data)]
    out: dict[str, dict[str, int]] = {}
    for it in items:
        b, p = it.get("birads"), it.get("pathology")
        if b is None or p is None:
            continue
        row = out.setdefault(str(b).lower(), {})
        row[p] = row.get(p, 0) + 1
    return out


@dataclass
class GenerationResult:
    datalist: Path | None
    generated: int
    skipped_chunks: int
    kept: int
    rejected: int


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    arr = np.moveaxis(arr, 0, -1)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _read_generated(path: Path) -> np.ndarray:
    """A generated PNG as written: ``(H, W)`` grey or ``(H, W, 3)`` RGB (no conversion)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def generate_dataset(
    network: torch.nn.Module,
    codec: Any,
    inferer: Any,
    out_dir: str | os.PathLike,
    plan: Sequence[Mapping],
    *,
    image_size: Sequence[int],
    image_channels: int | None = None,
    seed: int = 0,
    chunk_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    filters: Sequence[Any] = (),
    provenance: Mapping[str, Any] | None = None,
    progress: bool = True,
    merge: bool = True,
    grid_size: int = 32,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> GenerationResult:
    """Generate the planned items into ``out_dir`` (this rank's chunks), then (rank 0) merge the datalist.

    Resuming: ``run.json`` records the run's settings (seed, chunk size, image size and channels, and the
    provenance: model sha256, sampler, steps, guidance...). A folder written with other settings, or whose items
    carry other conditions than this plan, is refused with :class:`GenerationSettingsError` naming what differs
    (``force=True`` deletes its images and starts over); only the count may change: a larger one generates the
    missing items, a smaller one removes the items past it.

    Args:
        network: the conditional diffusion network (eval mode is set here).
        codec: :class:`busgen_monai.networks.ConditionCodec` mapping names to ids.
        inferer: :class:`busgen_monai.inferers.GuidedDiffusionInferer` (scheduler, steps, guidance, guards).
        out_dir: output folder (``images/``, ``items/``, ``datalist.json``, ``rejects.json``, ``sample_grid.png``).
        plan: from :func:`plan_conditions`.
        image_size: ``(H, W)``.
        image_channels: channels of the generated images (default: the network's; 1 = grey B-mode, 3 = RGB).
        seed: run seed (noise of item ``i`` is seeded by ``item_seed(seed, i)``).
        chunk_size: items per sampler batch; part of the run's identity (keep it fixed when resuming).
        rank, world_size: this process's shard.
        filters: post-hoc filters applied at merge time.
        provenance: extra provenance for every item (bundle name, model hash, sampler, steps, guidance...).
        progress: progress bar over this rank's chunks.
        merge: merge after generating (rank 0 only; call again with ``merge=True`` after a barrier otherwise).
        grid_size: images in the sample grid.
        device: torch device.
        force: start over in a folder that holds a run with other settings (its images are deleted).
    """
    out = Path(out_dir)
    n = len(plan)
    n_chunks = (n + chunk_size - 1) // chunk_size
    mine = [c for c in range(n_chunks) if c % world_size == rank]
    from .latent import is_latent

    network = network.to(device).eval()
    latent = is_latent(network)
    if image_channels is None:
        image_channels = int(getattr(network, "image_channels", 1))
    noise_shape = tuple(network.latent_shape(image_size)) if latent else (image_channels, *image_size)
    provenance = dict(provenance or {})
    settings = json.loads(json.dumps({"seed": int(seed), "chunk_size": int(chunk_size),
                                      "image_size": [int(v) for v in image_size], "image_channels": int(image_channels),
                                      "provenance": provenance}, default=str))
    _check_resume(out, settings, plan, force=force, may_write=(rank == 0))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "items").mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_text(out / "run.json", json.dumps({"n": n, **settings}, indent=1))

    def done(i: int) -> bool:
        return (out / "items" / f"gen_{i:07d}.json").is_file()

    iterator = mine
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc=f"generate (rank {rank}/{world_size})", unit="chunk")
    generated = skipped = 0
    for c in iterator:
        idx = list(range(c * chunk_size, min(n, (c + 1) * chunk_size)))
        if all(done(i) for i in idx):
            skipped += 1
            continue
        noise = torch.stack([
            torch.randn(*noise_shape, generator=torch.Generator().manual_seed(item_seed(seed, i)))
            for i in idx
        ]).to(device)
        items = [plan[i] for i in idx]
        with_birads = any(it.get("birads") is not None for it in items)
        cond = codec.pack_names(
            pathologies=[it["pathology"] for it in items], devices=[it["device"] for it in items],
            boxes=[it["boxes"] for it in items],
            **({"birads": [it.get("birads") for it in items]} if with_birads else {}),
        ).to(device)
        gen = torch.Generator(device=device).manual_seed(item_seed(seed, -1 - c))
        images = inferer.sample(noise, network, conditioning=cond, verbose=False, generator=gen)
        if latent:  # guards and the solver ran on latents; write and filter decoded images
            images = network.decode(images)
        for i, it, img in zip(idx, items, images):
            name = f"gen_{i:07d}"
            atomic_save_png(_to_uint8(img), out / "images" / f"{name}.png")
            record = {
                "image": f"images/{name}.png",
                "pathology": it["pathology"],
                "device": it["device"],
                "boxes": it["boxes"],
                **({"birads": it["birads"]} if it.get("birads") is not None else {}),
                "patient_id": f"GEN-{i:07d}",
                "study_id": f"GENS-{i:07d}",
                "split": "training",
                "width": int(image_size[1]),
                "height": int(image_size[0]),
                "provenance": {"source": "generated", "seed": seed, "index": i, "chunk": c,
                               "noise_seed": item_seed(seed, i), **provenance},
            }
            atomic_write_text(out / "items" / f"{name}.json", json.dumps(record))
            generated += 1
    result = GenerationResult(None, generated, skipped, 0, 0)
    if merge and rank == 0:
        result = _merge(out, n, filters, grid_size, result)
    return result


_CONDITION_KEYS = ("pathology", "device", "boxes", "birads")
_RUN_OUTPUTS = ("datalist.json", "rejects.json", "sample_grid.png")


def _check_resume(out: Path, settings: Mapping[str, Any], plan: Sequence[Mapping], force: bool, may_write: bool) -> None:
    """Refuse to resume into a folder written with other settings or conditions; drop items past the count."""
    run_file = out / "run.json"
    if not run_file.is_file():
        return
    try:
        old = json.loads(run_file.read_text())
    except (OSError, ValueError):
        old = {}
    differ = sorted(k for k in set(settings) | (set(old) - {"n"}) if old.get(k) != settings.get(k))
    if "provenance" in differ:
        oldp, newp = old.get("provenance") or {}, settings["provenance"]
        differ.remove("provenance")
        differ += sorted(f"provenance.{k}" for k in set(oldp) | set(newp) if oldp.get(k) != newp.get(k))
    items_dir = out / "items"
    stale = []
    if not differ and items_dir.is_dir():
        for f in sorted(items_dir.glob("gen_*.json")):
            try:
                i = int(f.stem[4:])
                rec = json.loads(f.read_text())
            except (ValueError, OSError):
                continue
            if i >= len(plan):
                stale.append(i)
            elif any(rec.get(k) != plan[i].get(k) for k in _CONDITION_KEYS):
                differ.append(f"conditions of item {i} (pathology/device/boxes/BI-RADS: another datalist, box prior or "
                              "condition list)")
                break
    if differ:
        if not force:
            raise GenerationSettingsError(
                f"{out} holds a generation run with other settings ({', '.join(differ)}); resuming would mix two "
                "runs. Use another output folder, or --force true (force=True) to delete its images and start over")
        if may_write:
            import shutil

            for sub in ("images", "items"):
                shutil.rmtree(out / sub, ignore_errors=True)
            for name in _RUN_OUTPUTS:
                (out / name).unlink(missing_ok=True)
        return
    if stale and may_write:  # the count shrank: items past it go, so the folder holds exactly this run
        for i in stale:
            (items_dir / f"gen_{i:07d}.json").unlink(missing_ok=True)
            (out / "images" / f"gen_{i:07d}.png").unlink(missing_ok=True)


def _merge(out: Path, n: int, filters: Sequence[Any], grid_size: int, result: GenerationResult) -> GenerationResult:
    missing = [i for i in range(n) if not (out / "items" / f"gen_{i:07d}.json").is_file()]
    if missing:
        raise RuntimeError(f"cannot merge {out}: {len(missing)} of {n} items are missing (first: {missing[:5]}); "
                           "wait for every rank to finish or re-run to resume")
    items = [json.loads((out / "items" / f"gen_{i:07d}.json").read_text()) for i in range(n)]
    kept, rejected = list(items), []
    for f in filters:
        kept, rej = f(kept, out)
        rejected += [dict(r, filter=type(f).__name__) for r in rej]
    data = make_datalist(kept, name=out.name, description="generated by busgen_monai.inferers.generate")
    data["schema_version"] = SCHEMA_VERSION
    path = save_datalist(data, out / "datalist.json")
    atomic_write_text(out / "rejects.json", json.dumps(rejected, indent=1))
    from ..visualize import save_image_grid

    show = items[:grid_size]
    save_image_grid([_read_generated(out / it["image"]) for it in show], out / "sample_grid.png",
                    labels=[f"{it['pathology']} / {it['device']}" for it in show],
                    boxes=[it["boxes"] for it in show], title="generated (conditioning boxes in yellow)")
    return GenerationResult(path, result.generated, result.skipped_chunks, len(kept), len(rejected))


def run_generation(
    network: torch.nn.Module,
    codec: Any,
    scheduler: Any,
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    image_size: int | Sequence[int],
    seed: int = 0,
    datalist: str | os.PathLike | Mapping | None = None,
    box_prior: str | os.PathLike | BoxPrior | None = None,
    pathologies: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    guidance_w: float = 1.8,
    num_inference_steps: int = 20,
    batched_cfg: bool = True,
    guards: Sequence[Any] = (),
    filters: Sequence[Any] = (),
    chunk_size: int = 8,
    image_channels: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    device_mix: str = "data",
    device_weights: Sequence[float] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    force: bool = False,
    inferer: Any = None,
    birads: Sequence[str] | None = None,
) -> GenerationResult:
    """Everything the sampling bundle does, in one call (used by ``bundles/busgen_sample/configs/inference.json``).

    The box prior is loaded from ``box_prior`` (a JSON file or object), else fitted on the training split of
    ``datalist`` and saved as ``OUT/box_prior.json``. Conditions (:func:`plan_conditions`): class-balanced over
    ``pathologies`` (default: the codec's); devices (default: the datalist's) follow ``device_mix``: ``"data"``
    (default) the training split's device counts, ``"uniform"`` equal shares; an explicit ``devices`` list is
    always uniform, unless ``device_weights`` (one per device) are given. ``boxes``: the same lesion boxes
    (normalised ``[x1, y1, x2, y2]`` each) for every image instead of the prior. ``image_channels`` defaults to the
    network's. Under ``torch.distributed`` each rank generates
    its chunks and rank 0 merges after a barrier. ``force``: see :func:`generate_dataset` (resume checks).
    ``inferer``: a :class:`~busgen_monai.inferers.GuidedDiffusionInferer` to sample with (the bundle's ``inferer``);
    default: one built from ``scheduler``, ``guidance_w``, ``batched_cfg`` and ``guards``.
    ``birads``: BI-RADS categories to balance the plan over (latent CoLDiT-style generators condition on them; the
    pathology of each item then follows the datalist's pathology mix within its category, see
    :func:`plan_conditions`). A latent generator (:class:`~busgen_monai.inferers.latent.LatentDiffusionModel`) samples
    in latent space and is decoded; the scheduler's clipping of the data prediction is set from the model's
    ``latent_clip`` (``[-c, c]``; without one, the pixels' [-1, 1] clip is switched off, with a warning):
    :func:`~busgen_monai.inferers.latent.configure_latent_sampler`.
    """
    from ..data.schema import iter_items, load_datalist
    from .guided import GuidedDiffusionInferer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = None
    if datalist is not None:
        data = datalist if isinstance(datalist, Mapping) else load_datalist(datalist, check_files=False)
    if isinstance(box_prior, BoxPrior):
        prior = box_prior
    elif box_prior is not None:
        prior = BoxPrior.load(box_prior)
    elif data is not None:
        prior = BoxPrior().fit([it for split, _, it in iter_items(data) if split == "training"] or
                               [it for _, _, it in iter_items(data)], seed=seed)
    elif boxes is not None:
        prior = None
    else:
        raise ValueError("run_generation needs a box prior (box_prior=...), a datalist to fit one on, or boxes")
    if prior is not None and int(os.environ.get("RANK", "0")) == 0:
        prior.save(out / "box_prior.json")
    pathologies = list(pathologies or codec.pathologies)
    if device_mix not in ("data", "uniform"):
        raise ValueError(f"device_mix must be 'data' or 'uniform', got {device_mix!r} (key: device_mix)")
    weights = None
    if devices is None:
        devices = (data or {}).get("devices") or []
        devices = [d for d in devices if d not in ("unknown", "null")]
        if not devices:
            raise ValueError("no devices to generate for: give `devices` or a datalist that lists its devices")
        if device_mix == "data" and device_weights is None:
            weights = device_weights_from(data, devices)
    if device_weights is not None:
        weights = [float(w) for w in device_weights]
    if image_channels is None:
        image_channels = int(getattr(network, "image_channels", 1))
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    fixed = None
    if boxes is not None:
        one = [[float(v) for v in b] for b in boxes]
        bad = [b for b in one if len(b) != 4 or not (0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1)]
        if bad:
            raise ValueError(f"boxes must be [x1, y1, x2, y2] with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1; got {bad}"
                             " (key: boxes / --box)")
        fixed = [one] * num_images
    mix = None
    if birads:
        unknown = [b for b in birads if str(b).lower() not in codec.birads_values]
        if unknown:
            raise ValueError(f"BI-RADS {unknown} not in the generator's categories {codec.birads_values} (key: birads)")
        mix = birads_pathology_mix(data)
    plan = plan_conditions(num_images, pathologies, list(devices), seed=seed, box_prior=prior,
                           device_weights=weights, boxes=fixed, birads=birads, birads_pathology=mix)
    from .latent import configure_latent_sampler, is_latent

    latent = is_latent(network)
    configure_latent_sampler(network, scheduler)
    scheduler.set_timesteps(num_inference_steps)
    if inferer is None:
        inferer = GuidedDiffusionInferer(scheduler, guidance_scale=guidance_w, batched_cfg=batched_cfg, guards=guards)
    rank, world = 0, 1
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    prov = {"sampler": type(scheduler).__name__, "steps": int(num_inference_steps), "guidance_w": float(guidance_w),
            **(provenance or {})}
    if latent:
        prov.setdefault("generator_family", "latent")
    result = generate_dataset(network, codec, inferer, out, plan, image_size=size, image_channels=image_channels,
                              seed=seed, chunk_size=chunk_size, rank=rank, world_size=world, filters=filters,
                              provenance=prov, progress=progress, merge=(world == 1), device=device, force=force)
    if world > 1:
        dist.barrier()
        if rank == 0:
            result = generate_dataset(network, codec, inferer, out, plan, image_size=size,
                                      image_channels=image_channels, seed=seed, chunk_size=chunk_size, rank=0,
                                      world_size=world, filters=filters, provenance=prov, progress=False,
                                      merge=True, device=device)
        dist.barrier()
    stats = inferer.guard_stats()
    if stats and rank == 0:
        atomic_write_text(out / f"guard_stats_rank{rank}.json", json.dumps(stats, indent=1, default=str))
    return result
