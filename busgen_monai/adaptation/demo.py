"""Main-job stage: adapt the tiny base to a held-out phantom device with LoRA, then sample a few images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["adapt_demo_stage"]

_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "busgen_adapt"


def adapt_demo_stage(phantom_datalist: str | os.PathLike, base_model: str | os.PathLike, out_dir: str | os.PathLike,
                     device: str | None = None, n_items: int = 24, max_epochs: int = 4, num_images: int = 8,
                     preset_name: str = "tiny", package: bool = True) -> dict[str, Any]:
    """Few-shot LoRA adaptation on one phantom device (default: the datalist's last device), then sampling.

    Args:
        phantom_datalist: the phantom datalist JSON.
        base_model: base checkpoint/folder (pretrain ``models/``) or exported ``model.pt``.
        out_dir: stage folder: ``few_shot.json``, ``run/`` (adapter, merged model, grids), ``samples/``, ``zoo/``.

    Returns:
        dict of paths: ``adapter``, ``merged``, ``samples`` (datalist), ``sample_grid``, ``bundle_zip`` (if packaged).
    """
    from monai.bundle import run

    from ..data.schema import load_datalist
    from ..inferers import BoxPrior, resolve_checkpoint, run_generation
    from ..presets import get_preset
    from ..schedulers import DPMSolverMultistepScheduler
    from .adapt import load_adapted_generator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_datalist(phantom_datalist, check_files=False)
    base_dir = Path(phantom_datalist).parent
    devices = [d for d in data.get("devices", []) if d not in ("unknown", "null")]
    device = device or devices[-1]

    def absolute(it):
        it = dict(it)
        for k in ("image", "mask"):
            if it.get(k) and not Path(it[k]).is_absolute():
                it[k] = str(base_dir / it[k])
        return it

    few = {k: v for k, v in data.items() if k not in ("training", "validation", "test")}
    for split, n in (("training", n_items), ("validation", 4)):
        few[split] = [absolute(it) for it in data.get(split, []) if it.get("device") == device][:n]
    few["devices"] = [device]
    few_path = out / "few_shot.json"
    few_path.write_text(json.dumps(few, indent=1))
    base = resolve_checkpoint(base_model)
    run_dir = out / "run"
    run(config_file=str(_BUNDLE / "configs" / "train.json"), bundle_root=str(_BUNDLE), base_checkpoint=str(base),
        datalist=str(few_path), output_dir=str(run_dir), preset_name=preset_name, max_epochs=max_epochs,
        batch_size=8, num_workers=0, progress_bar=False, sample_steps=10, sample_devices=[device], val_num_items=4)
    models = run_dir / "models"
    network, codec = load_adapted_generator(base, models / "adapter.pt", preset_name)
    preset = get_preset(preset_name)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=preset["num_train_timesteps"], schedule="linear_beta",
                                        beta_start=preset["beta_start"], beta_end=preset["beta_end"], solver_order=2,
                                        timestep_spacing="linspace", clip_sample=True)
    samples = out / "samples"
    run_generation(network, codec, sched, samples, num_images, image_size=preset["image_size"], seed=0,
                   box_prior=BoxPrior.load(models / "box_prior.json"), devices=[device],
                   pathologies=list(BoxPrior.load(models / "box_prior.json").pathologies),
                   guidance_w=preset["guidance_w"], num_inference_steps=20, progress=False,
                   provenance={"bundle": "busgen_adapt", "adapted_device": device})
    result = {"device": device, "few_shot_datalist": str(few_path), "adapter": str(models / "adapter.pt"),
              "merged": str(models / "model.pt"), "samples": str(samples / "datalist.json"),
              "sample_grid": str(samples / "sample_grid.png")}
    if package:
        from ..bundle_tools import package_bundle

        _, z = package_bundle(out / "zoo", "adapter", adapter=models / "adapter.pt", base_checkpoint=base,
                              preset_name=preset_name, name=f"busgen_adapt_{device}".replace("-", "_").lower(),
                              box_prior=models / "box_prior.json", devices=[device])
        result["bundle_zip"] = str(z)
    return result
