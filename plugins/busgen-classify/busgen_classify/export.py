"""TorchScript export of a trained classifier through MONAI's ``ckpt_export``, with an equivalence check.

``export_torchscript`` calls :func:`monai.bundle.ckpt_export`, the function behind
``python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file model.pt --meta_file
configs/metadata.json --config_file configs/train.json`` (the command line needs the ``fire`` package),
then :func:`check_export` loads the TorchScript file and the eager network (same configs, same
checkpoint) and compares their outputs on random inputs.

Command line::

    busgen classify-export --ckpt runs/bus_classifier/models/model.pt --out model.ts \\
        --config train,preset_cpu_tiny [--set backbone=resnet18 ...]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .workflow import bundle_root, config_files

__all__ = ["export_torchscript", "eager_network", "check_export", "main"]


def _configs(configs: Sequence[str] | str) -> list[str]:
    names = configs.split(",") if isinstance(configs, str) else list(configs)
    return config_files([n.strip() for n in names if n.strip()])


def export_torchscript(
    ckpt_file: str | os.PathLike,
    filepath: str | os.PathLike,
    configs: Sequence[str] | str = ("train",),
    overrides: Mapping[str, Any] | None = None,
    meta_file: str | os.PathLike | None = None,
    net_id: str = "network_def",
) -> Path:
    """Export ``net_id`` with weights from ``ckpt_file`` to a TorchScript file (``monai.bundle.ckpt_export``).

    Returns the written path.
    """
    from monai.bundle import ckpt_export

    filepath = Path(filepath)
    filepath.parent.mkdir(parents=True, exist_ok=True)
    meta = str(meta_file or bundle_root() / "configs" / "metadata.json")
    ckpt_export(net_id, filepath=str(filepath), ckpt_file=str(ckpt_file), meta_file=meta,
                config_file=_configs(configs), **dict(overrides or {}))
    if not filepath.is_file():
        raise RuntimeError(f"ckpt_export did not write {filepath}")
    return filepath


def eager_network(ckpt_file: str | os.PathLike, configs: Sequence[str] | str = ("train",),
                  overrides: Mapping[str, Any] | None = None, net_id: str = "network_def") -> torch.nn.Module:
    """The eager network built from the bundle configs with the checkpoint's weights, in eval mode on CPU."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_configs(configs))
    parser.update(dict(overrides or {}))
    net = parser.get_parsed_content(net_id)
    state = torch.load(str(ckpt_file), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and not any(k.endswith(".weight") for k in state):
        state = state["model"]
    net.load_state_dict(state)
    return net.eval()


@torch.no_grad()
def check_export(ts_file: str | os.PathLike, ckpt_file: str | os.PathLike, configs: Sequence[str] | str = ("train",),
                 overrides: Mapping[str, Any] | None = None, n: int = 4, seed: int = 0) -> float:
    """Largest absolute difference between the TorchScript and the eager network on ``n`` random inputs
    shaped like the configured ``image_size``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_configs(configs))
    parser.update(dict(overrides or {}))
    size = parser.get_parsed_content("image_size")
    channels = int(parser.get_parsed_content("image_channels")) if "image_channels" in parser else 3
    eager = eager_network(ckpt_file, configs, overrides)
    scripted = torch.jit.load(str(ts_file), map_location="cpu").eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, *[int(s) for s in size], generator=gen)
    return float((scripted(x) - eager(x)).abs().max())


def _parse_set(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq:
            raise SystemExit(f"--set expects key=value, got {p!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``busgen classify-export``: export a checkpoint to TorchScript and check it against the eager network."""
    p = argparse.ArgumentParser(prog="busgen classify-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="model checkpoint (e.g. runs/bus_classifier/models/model.pt)")
    p.add_argument("--out", required=True, help="TorchScript file to write (model.ts)")
    p.add_argument("--config", default="train", help="comma list of bundle configs/presets (default: train)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (JSON values)")
    p.add_argument("--atol", type=float, default=1e-5, help="tolerance of the eager/TorchScript check")
    args = p.parse_args(list(argv) if argv is not None else None)
    overrides = _parse_set(args.set)
    path = export_torchscript(args.ckpt, args.out, args.config, overrides)
    diff = check_export(path, args.ckpt, args.config, overrides)
    print(f"exported {path}; max |TorchScript - eager| = {diff:.3g} (atol {args.atol:g})")
    return 0 if diff <= args.atol else 1
