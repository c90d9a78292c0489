"""A deliberately memorising generator: the privacy stress test of the CPSampling guard and the audit.

:func:`train_memorising_generator` over-trains a small BUSGen generator (the ``tiny`` preset by default) on a handful
of images (e.g. 16 phantom images at 32 px) for a few thousand steps without augmentation, until unguided sampling
reproduces near-copies of the training images. It uses the project's own pieces (MONAI ``SupervisedTrainer``,
:class:`busgen_monai.engines.ConditionalDiffusionPrepareBatch` with BUSGen's joint condition dropout,
``monai.inferers.DiffusionInferer``, the pretrain bundle's deterministic preprocessing) and writes an exported model
file that :func:`busgen_monai.inferers.load_generator` and the ``busgen_sample`` bundle read
(``{"network", "codec", "network_kwargs"}``).

Never use this to train a generator you intend to share: memorisation is the point here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from busgen_monai.utils.io import atomic_torch_save

__all__ = ["phantom_split", "train_memorising_generator"]


def phantom_split(out_dir: str | os.PathLike, n_train: int = 16, n_heldout: int = 16, size: int = 64,
                  seed: int = 1) -> tuple[Path, Path]:
    """Two phantom data sets: ``train/datalist.json`` (all ``training``) and ``heldout/datalist.json`` (all
    ``test``), written with different seeds so no image is shared (for the membership-inference attack)."""
    from busgen_monai.data.phantom import write_dataset

    out = Path(out_dir)
    train = write_dataset(out / "train", n=n_train, seed=seed, size=(size, size), split_fractions=(1, 0, 0))
    held = write_dataset(out / "heldout", n=n_heldout, seed=seed + 1000, size=(size, size),
                         split_fractions=(0, 0, 1))
    return train, held


def train_memorising_generator(
    datalist: Mapping | str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    preset: str | Mapping[str, Any] = "tiny",
    image_size: int | None = None,
    iterations: int = 3000,
    batch_size: int = 16,
    lr: float = 3e-3,
    condition_dropout: float = 0.1,
    max_boxes: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log_every: int = 0,
) -> Path:
    """Over-train the preset's generator on the ``training`` split of ``datalist`` and export it to ``out_file``.

    Args:
        datalist: a (small) datalist; its ``training`` items are the images to memorise.
        out_file: the model file to write (``.pt``).
        preset: preset name or dict (network widths etc.).
        image_size: training/sampling size (default: the preset's).
        iterations: optimiser steps (one-cycle learning-rate schedule peaking at ``lr``).
        batch_size: images per step (drawn with replacement each epoch by the DataLoader's shuffling).
        condition_dropout: BUSGen's joint CFG condition dropout.
        max_boxes: box slots of the condition codec.
        seed: seed of the weights, noise and order.
        log_every: print the running loss every so many iterations (0: silent).
    """
    from monai.engines import SupervisedTrainer
    from monai.inferers import DiffusionInferer
    from monai.utils import set_determinism

    from busgen_monai.data.dataset import datalist_items
    from busgen_monai.data.schema import load_datalist
    from busgen_monai.data.transforms import bus_train_transforms
    from busgen_monai.engines import ConditionalDiffusionPrepareBatch, GradientClipHandler
    from busgen_monai.networks import ConditionCodec
    from busgen_monai.presets import build_network, build_scheduler, get_preset

    preset = get_preset(preset) if isinstance(preset, str) else dict(preset)
    size = int(image_size or preset["image_size"])
    data = datalist if isinstance(datalist, Mapping) else load_datalist(datalist)
    codec = ConditionCodec.from_datalist(data, max_boxes=max_boxes)
    items = datalist_items(data, "training")
    tf = bus_train_transforms(codec, size, augment=False, use_birads=False, keep_keys=("image", "cond"),
                              image_channels=int(preset.get("image_channels", 1)))
    rows = [tf(dict(it)) for it in items]
    set_determinism(seed=seed)
    rows = [{"image": torch.as_tensor(r["image"]).float().as_subclass(torch.Tensor),
             "cond": torch.as_tensor(r["cond"]).float().as_subclass(torch.Tensor)} for r in rows]
    network = build_network(preset, codec).to(device)
    bs = min(batch_size, len(rows))
    loader = torch.utils.data.DataLoader(rows * max(1, bs // len(rows) + 1), batch_size=bs, shuffle=True,
                                         drop_last=True, generator=torch.Generator().manual_seed(seed))
    epochs = max(1, -(-iterations // len(loader)))
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(loader), pct_start=0.05)
    prepare = ConditionalDiffusionPrepareBatch(num_train_timesteps=preset["num_train_timesteps"],
                                               condition_name="cond", drop_prob=condition_dropout, seed=seed)

    trainer = SupervisedTrainer(
        device=torch.device(device), max_epochs=epochs, train_data_loader=loader, network=network,
        optimizer=optimizer, loss_function=torch.nn.MSELoss(), inferer=DiffusionInferer(build_scheduler(preset)),
        prepare_batch=prepare, train_handlers=[GradientClipHandler(1.0)],
    )
    from ignite.engine import Events

    @trainer.on(Events.ITERATION_COMPLETED)
    def _step(engine: Any) -> None:
        lr_sched.step()
        if log_every and engine.state.iteration % log_every == 0:
            output = engine.state.output
            loss = float((output[0] if isinstance(output, list) else output)["loss"])
            print(f"memorise: iteration {engine.state.iteration}/{epochs * len(loader)} loss {loss:.4f}", flush=True)

    trainer.run()
    set_determinism(seed=None)
    from busgen_monai.presets import trained_settings

    payload = {"network": {k: v.detach().cpu() for k, v in network.state_dict().items()}, "codec": codec.to_dict(),
               "network_kwargs": dict(network.init_args),
               "settings": trained_settings(preset, name=preset.get("name"), image_size=size),
               "memorising": {"iterations": int(trainer.state.iteration), "image_size": size,
                                                    "n_images": len(rows), "lr": lr, "seed": seed,
                                                    "preset": preset.get("name")}}
    return atomic_torch_save(payload, out_file)

