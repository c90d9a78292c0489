"""TorchScript export of a trained generator, for runtimes without this package (MONAI Deploy, C++/LibTorch).

MONAI's ``ckpt_export`` scripts a network with ``torch.jit.script``, which MONAI's diffusion attention block does
not support, and ``torch.export`` stops on the condition embedding's id range check (a data-dependent ``.item()``).
Tracing works: the network's control flow does not depend on the inputs' values except that check, which the traced
module leaves out (feed it ids the codec produced). :func:`export_torchscript` traces with a batch that fills every
condition and every box slot, then checks the traced module against the eager one on other batches (other batch
size, no boxes, null conditions, every timestep range) and refuses to write a module that differs.

The file is a plain TorchScript archive (no pickle: ``torch.jit.load`` runs no Python) with the codec, network
arguments and settings as JSON extra files, so a consumer can encode conditions without importing the project.
Call it as ``module(x, timesteps, context)`` with ``context`` the packed ``(B, 1, K)`` condition tensor.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["export_torchscript", "load_torchscript", "TorchScriptExportError"]

EXTRA_FILES = ("codec.json", "network_kwargs.json", "settings.json")


class TorchScriptExportError(RuntimeError):
    """The traced module does not reproduce the network; nothing was written."""


def _batches(codec: Any, image_size: int, channels: int, num_train_timesteps: int, seed: int = 0):
    """Condition batches that exercise every path: all slots filled, no boxes, null conditions, other batch sizes."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    devices = list(codec.vocabulary.names)
    pathologies = list(codec.pathologies)

    def item(k: int, n_boxes: int) -> dict:
        boxes = [[0.05 + 0.1 * j, 0.1, 0.3 + 0.1 * j, 0.5 + 0.05 * j] for j in range(n_boxes)]
        it = {"pathology": pathologies[k % len(pathologies)], "boxes": boxes}
        if devices:
            it["device"] = devices[k % len(devices)]
        return it

    def pack(items):
        return torch.as_tensor(np.stack([codec.encode_item(it) for it in items])).float()[:, None]

    full = pack([item(k, codec.max_boxes) for k in range(2)])
    yield full, torch.randn(2, channels, image_size, image_size, generator=g), torch.tensor([0, num_train_timesteps - 1])
    mixed = pack([item(k, k % 3) for k in range(3)])
    yield mixed, torch.randn(3, channels, image_size, image_size, generator=g), torch.tensor([1, 250, 499]).clamp(
        max=num_train_timesteps - 1)
    null = codec.null(1).float().reshape(1, 1, -1)
    yield null, torch.randn(1, channels, image_size, image_size, generator=g), torch.tensor([num_train_timesteps // 2])


def export_torchscript(model: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                       atol: float = 1e-5) -> Path:
    """Trace the generator in ``model`` (checkpoint or model file) and write ``out`` (TorchScript) after checking
    it against the eager network; returns ``out``. Raises :class:`TorchScriptExportError` when they differ."""
    from ..utils.io import atomic_write_bytes
    from .loading import generator_settings, load_generator, network_kwargs_of, read_checkpoint

    state = read_checkpoint(model)
    network, codec = load_generator(model, use_ema=use_ema, device="cpu")
    network = network.float().eval()
    settings = generator_settings(state)
    size, channels = int(settings["image_size"]), int(settings.get("image_channels", 1))
    steps = int(settings.get("num_train_timesteps", 1000))
    batches = list(_batches(codec, size, channels, steps))
    with torch.no_grad():
        cond, x, t = batches[0]
        with warnings.catch_warnings():  # the id range check becomes a constant: expected, checked below
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(network, (x, t, cond), strict=False, check_trace=False)
        worst = 0.0
        for cond, x, t in batches:
            ref = network(x, timesteps=t, context=cond)
            got = traced(x, t, cond)
            if got.shape != ref.shape:
                raise TorchScriptExportError(f"traced output shape {tuple(got.shape)} != eager {tuple(ref.shape)}")
            worst = max(worst, float((got - ref).abs().max()))
    if worst > atol:
        raise TorchScriptExportError(f"the traced generator differs from the network by up to {worst:.3g} (> {atol}); "
                                     "nothing written - export the model file instead")
    extra = {"codec.json": json.dumps(codec.to_dict()), "settings.json": json.dumps(settings, default=str),
             "network_kwargs.json": json.dumps(network_kwargs_of(state), default=str)}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.jit.save(traced, str(tmp), _extra_files=extra)
    data = tmp.read_bytes()
    tmp.unlink()
    return atomic_write_bytes(out, data)


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """``(module, {"codec": ..., "settings": ..., "network_kwargs": ...})`` from a file :func:`export_torchscript` wrote."""
    files = {name: "" for name in EXTRA_FILES}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return module, {name.rsplit(".", 1)[0]: json.loads(text) if text else None for name, text in files.items()}
