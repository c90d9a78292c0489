"""Load a trained generator (network + condition codec) from a pretraining checkpoint or an exported model file.

A pretraining checkpoint (``bundles/busgen_pretrain``) is a dict with ``network``, ``ema`` (an
:class:`torch.optim.swa_utils.AveragedModel` state: ``module.*`` weights and ``n_averaged``), ``codec``,
``optimizer``... An exported model file (``models/model.pt`` of a packaged bundle) holds ``network`` and ``codec``
only. :func:`load_generator` reads either, prefers the EMA weights when the checkpoint has them, and builds the
network from a preset (plus overrides) with the embedding-table sizes of the saved codec.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_checkpoint", "generator_state", "load_generator", "export_generator", "resolve_checkpoint"]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest ``*.pt`` in a folder (``models/`` of a training run)."""
    path = Path(path)
    if path.is_dir():
        from ..engines import latest_checkpoint

        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint (*.pt) in {path}; train first or point at a .pt file")
        return Path(found)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, Mapping) or "network" not in state or "codec" not in state:
        keys = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path} is not a busgen generator checkpoint (needs 'network' and 'codec'; has {keys})")
    return dict(state)


def generator_state(state: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The network weights to sample with: EMA weights when present (and ``use_ema``), else the trained ones."""
    ema = state.get("ema") or {}
    if use_ema and ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return dict(state["network"])


def load_generator(
    checkpoint: str | os.PathLike,
    preset: str | Mapping[str, Any] = "tiny",
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    **network_overrides: Any,
):
    """Build the preset's network with the checkpoint's codec and load its weights. Returns ``(network, codec)``."""
    from ..networks import ConditionCodec
    from ..presets import build_network

    state = read_checkpoint(checkpoint)
    codec = ConditionCodec.from_dict(state["codec"])
    saved_kwargs = state.get("network_kwargs") or {}
    network = build_network(dict(preset) if isinstance(preset, Mapping) else preset, codec,
                            **{**saved_kwargs, **network_overrides})
    weights = generator_state(state, use_ema)
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit preset {preset if isinstance(preset, str) else preset.get('name')!r}"
            f" (train and sample with the same preset and network options): {str(err).splitlines()[0]}") from err
    return network.to(device).eval(), codec


def export_generator(checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                     network_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write a small model file (weights to sample with + codec [+ network kwargs]) for packaging/sharing."""
    state = read_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"network": generator_state(state, use_ema), "codec": state["codec"]}
    if network_kwargs or state.get("network_kwargs"):
        payload["network_kwargs"] = dict(network_kwargs or state["network_kwargs"])
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, out)
    return out
