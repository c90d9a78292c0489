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

__all__ = ["plan_conditions", "generate_dataset", "run_generation", "file_sha256", "GenerationResult", "item_seed"]


def item_seed(seed: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of a run seeded ``seed`` (stable across Python versions)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def plan_conditions(
    n: int,
    pathologies: Sequence[str],
    devices: Sequence[str],
    seed: int = 0,
    box_prior: BoxPrior | None = None,
    boxes: Sequence[Sequence[Sequence[float]]] | None = None,
    boxes_per_image: int = 1,
) -> list[dict]:
    """Category-balanced conditions for items ``0..n-1``: item ``i`` gets cell ``i mod |grid|`` of the
    pathology x device grid and boxes drawn from the pathology's prior with the item's own seed (or the given
    ``boxes[i]``). ``normal`` (or any pathology the prior does not know) gets no box."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not pathologies or not devices:
        raise ValueError("plan_conditions needs at least one pathology and one device")
    if boxes is not None and len(boxes) < n:
        raise ValueError(f"{len(boxes)} boxes given for {n} items")
    grid = [(p, d) for p in pathologies for d in devices]
    plan = []
    for i in range(n):
        pathology, device = grid[i % len(grid)]
        if boxes is not None:
            item_boxes = [list(map(float, b)) for b in boxes[i]]
        elif box_prior is not None and pathology in box_prior.pathologies:
            rng = np.random.default_rng(item_seed(seed, i))
            item_boxes = box_prior.sample(pathology, boxes_per_image, seed=rng).round(6).tolist()
        else:
            item_boxes = []
        plan.append({"index": i, "pathology": pathology, "device": device, "boxes": item_boxes})
    return plan


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


def _write_png_atomic(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def generate_dataset(
    network: torch.nn.Module,
    codec: Any,
    inferer: Any,
    out_dir: str | os.PathLike,
    plan: Sequence[Mapping],
    *,
    image_size: Sequence[int],
    image_channels: int = 3,
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
) -> GenerationResult:
    """Generate the planned items into ``out_dir`` (this rank's chunks), then (rank 0) merge the datalist.

    Args:
        network: the conditional diffusion network (eval mode is set here).
        codec: :class:`busgen_monai.networks.ConditionCodec` mapping names to ids.
        inferer: :class:`busgen_monai.inferers.GuidedDiffusionInferer` (scheduler, steps, guidance, guards).
        out_dir: output folder (``images/``, ``items/``, ``datalist.json``, ``rejects.json``, ``sample_grid.png``).
        plan: from :func:`plan_conditions`.
        image_size: ``(H, W)``.
        image_channels: channels of the generated images (3 = RGB).
        seed: run seed (noise of item ``i`` is seeded by ``item_seed(seed, i)``).
        chunk_size: items per sampler batch; part of the run's identity (keep it fixed when resuming).
        rank, world_size: this process's shard.
        filters: post-hoc filters applied at merge time.
        provenance: extra provenance for every item (bundle name, model hash, sampler, steps, guidance...).
        progress: progress bar over this rank's chunks.
        merge: merge after generating (rank 0 only; call again with ``merge=True`` after a barrier otherwise).
        grid_size: images in the sample grid.
        device: torch device.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "items").mkdir(parents=True, exist_ok=True)
    n = len(plan)
    n_chunks = (n + chunk_size - 1) // chunk_size
    mine = [c for c in range(n_chunks) if c % world_size == rank]
    network = network.to(device).eval()
    provenance = dict(provenance or {})
    atomic_write_text(out / "run.json", json.dumps({"n": n, "seed": seed, "chunk_size": chunk_size,
                                                    "image_size": list(image_size), "provenance": provenance},
                                                   indent=1)) if rank == 0 else None

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
            torch.randn(image_channels, *image_size, generator=torch.Generator().manual_seed(item_seed(seed, i)))
            for i in idx
        ]).to(device)
        items = [plan[i] for i in idx]
        cond = codec.pack_names(
            pathologies=[it["pathology"] for it in items], devices=[it["device"] for it in items],
            boxes=[it["boxes"] for it in items],
        ).to(device)
        gen = torch.Generator(device=device).manual_seed(item_seed(seed, -1 - c))
        images = inferer.sample(noise, network, conditioning=cond, verbose=False, generator=gen)
        for i, it, img in zip(idx, items, images):
            name = f"gen_{i:07d}"
            _write_png_atomic(_to_uint8(img), out / "images" / f"{name}.png")
            record = {
                "image": f"images/{name}.png",
                "pathology": it["pathology"],
                "device": it["device"],
                "boxes": it["boxes"],
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
    from ..data.io import read_image_rgb
    from ..visualize import save_image_grid

    show = items[:grid_size]
    save_image_grid([read_image_rgb(out / it["image"]) for it in show], out / "sample_grid.png",
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
    image_channels: int = 3,
    provenance: Mapping[str, Any] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> GenerationResult:
    """Everything the sampling bundle does, in one call (used by ``bundles/busgen_sample/configs/inference.json``).

    The box prior is loaded from ``box_prior`` (a JSON file or object), else fitted on the training split of
    ``datalist`` and saved as ``OUT/box_prior.json``. The condition grid is ``pathologies`` x ``devices``
    (default: the codec's pathologies and the datalist's devices). Under ``torch.distributed`` each rank generates
    its chunks and rank 0 merges after a barrier.
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
    else:
        raise ValueError("run_generation needs a box prior (box_prior=...) or a datalist to fit one on")
    if int(os.environ.get("RANK", "0")) == 0:
        prior.save(out / "box_prior.json")
    pathologies = list(pathologies or codec.pathologies)
    if devices is None:
        devices = (data or {}).get("devices") or []
        devices = [d for d in devices if d not in ("unknown", "null")]
        if not devices:
            raise ValueError("no devices to generate for: give `devices` or a datalist that lists its devices")
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    plan = plan_conditions(num_images, pathologies, list(devices), seed=seed, box_prior=prior)
    scheduler.set_timesteps(num_inference_steps)
    inferer = GuidedDiffusionInferer(scheduler, guidance_scale=guidance_w, batched_cfg=batched_cfg, guards=guards)
    rank, world = 0, 1
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    prov = {"sampler": type(scheduler).__name__, "steps": int(num_inference_steps), "guidance_w": float(guidance_w),
            **(provenance or {})}
    result = generate_dataset(network, codec, inferer, out, plan, image_size=size, image_channels=image_channels,
                              seed=seed, chunk_size=chunk_size, rank=rank, world_size=world, filters=filters,
                              provenance=prov, progress=progress, merge=(world == 1), device=device)
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
