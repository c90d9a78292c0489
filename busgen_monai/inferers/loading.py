"""Load a trained generator (network + condition codec) from a pretraining checkpoint or an exported model file.

A pretraining checkpoint (``bundles/busgen_pretrain``) is a dict with ``network``, ``ema`` (an
:class:`torch.optim.swa_utils.AveragedModel` state: ``module.*`` weights and ``n_averaged``), ``codec``,
``optimizer``... An exported model file (``models/model.pt`` of a packaged bundle) holds ``network`` and ``codec``
only. Both carry ``network_kwargs``, the network's full constructor arguments, so :func:`load_generator` rebuilds
exactly the trained network (old files without them fall back to a preset, with a warning). It reads either file
with ``weights_only=True`` and prefers the EMA weights when the checkpoint has them.

Two generator families: the pixel :class:`~busgen_monai.networks.ConditionalDiffusionUNet` and the latent
:class:`~busgen_monai.networks.ConditionalDiT` (``bundles/busgen_latent``). A checkpoint names its class in
``network_class``, looked up in the allow-list :data:`busgen_monai.networks.GENERATOR_NETWORKS` (nothing is imported
from a file); files without it hold the U-Net. A latent checkpoint also carries its first-stage autoencoder
(``autoencoder``: class, constructor arguments, weights, latent ``scale_factor``), and :func:`load_generator` returns
a :class:`~busgen_monai.inferers.latent.LatentDiffusionModel` for it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..engines.checkpoints import resolve_checkpoint

__all__ = [
    "read_checkpoint", "generator_state", "network_kwargs_of", "generator_settings", "load_generator",
    "export_generator", "resolve_checkpoint", "default_generator",
]


def default_generator() -> Path:
    """The generator the project ships: ``bundles/busgen_sample/models/model.pt``, trained on the BUS-BRA training
    split at 64 px (``cpu`` preset; model card: ``docs/model_card.md``). The default of ``busgen sample``, of the
    sample bundle and of the adapt bundle's base."""
    from ..plugins import builtin_bundles

    bundle = builtin_bundles().get("busgen_sample")
    path = bundle / "models" / "model.pt" if bundle else None
    if path is None or not path.is_file():
        raise FileNotFoundError("the shipped generator (bundles/busgen_sample/models/model.pt) is not installed; "
                                "pass a checkpoint of your own (--checkpoint PATH)")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a generator checkpoint or model file with ``torch.load(weights_only=True)``: tensors and plain containers
    only, so a shared file can never run code while it loads."""
    path = resolve_checkpoint(path)
    try:
        if path.suffix == ".safetensors":  # zoo layout with safetensors weights (no pickle at all)
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read checkpoint {path} (weights-only loading: tensors and plain containers; "
                         f"a file holding pickled objects is refused): {str(err).splitlines()[0]}") from err
    if _is_bare_state_dict(state):
        state = _with_spec(path, state)
    if not isinstance(state, Mapping) or "network" not in state or "codec" not in state:
        keys = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path} is not a busgen generator checkpoint (needs 'network' and 'codec'; has {keys})")
    return dict(state)


#: what the model zoo's layout keeps beside ``models/model.pt`` (a bare state dict), in ``models/model.json``
SPEC_KEYS = ("network_class", "network_kwargs", "codec", "settings", "provenance")


def _is_bare_state_dict(state: Any) -> bool:
    return isinstance(state, Mapping) and bool(state) and "network" not in state and \
        all(isinstance(v, torch.Tensor) for v in state.values())


def _with_spec(path: Path, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A zoo-layout model file: the weights from ``path`` plus the network arguments, codec and settings from the JSON
    file of the same name next to it."""
    import json

    spec_path = path.with_suffix(".json")
    if not spec_path.is_file():
        raise ValueError(f"{path} is a bare state dict (the model zoo's layout); the network arguments, condition codec "
                         f"and settings that rebuild its network belong in {spec_path.name} next to it, which is "
                         "missing: copy it along, or export a one-file model with `busgen export`")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{spec_path}: not readable JSON ({err})") from err
    missing = [k for k in ("network_kwargs", "codec", "settings") if k not in spec]
    if missing:
        raise ValueError(f"{spec_path} lacks {missing}; re-export the model (busgen export --layout zoo)")
    return {"network": dict(weights), **{k: spec[k] for k in SPEC_KEYS if k in spec}}


def generator_state(state: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The network weights to sample with: EMA weights when present (and ``use_ema``), else the trained ones."""
    ema = state.get("ema") or {}
    if use_ema and ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return dict(state["network"])


def _infer_image_channels(weights: Mapping[str, torch.Tensor]) -> int | None:
    """Image channels of a ConditionalDiffusionUNet state dict (its output convolution's out-channels)."""
    for key in ("out.2.conv.weight", "out.2.weight"):
        if key in weights:
            return int(weights[key].shape[0])
    return None


def network_kwargs_of(state: Mapping[str, Any], preset: str | Mapping[str, Any] | None = None,
                      source: str = "checkpoint", **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of the network a checkpoint holds.

    New checkpoints carry them (``network_kwargs``: preset plus every override used in training), and they win.
    An old checkpoint without them falls back to ``preset`` (with a warning), the saved codec's table sizes and the
    channel count read from the weights. ``overrides`` are applied last (for experiments; normally empty).
    """
    from ..data.conditions import ConditionCodec
    from ..presets import get_preset, network_kwargs

    saved = state.get("network_kwargs")
    if saved:
        return {**dict(saved), **overrides}
    if preset is None:
        raise ValueError(f"{source} has no network_kwargs (trained before they were saved); pass the preset it was "
                         "trained with (e.g. preset='tiny' / --preset_name tiny)")
    warnings.warn(f"{source} has no network_kwargs (an old checkpoint); rebuilding the network from preset "
                  f"{preset if isinstance(preset, str) else preset.get('name')!r} - retrain or re-export to embed them",
                  stacklevel=3)
    preset = get_preset(preset) if isinstance(preset, str) else dict(preset)
    codec = ConditionCodec.from_dict(state["codec"])
    args = {"spatial_dims": 2, **network_kwargs(preset), **codec.network_kwargs()}
    channels = _infer_image_channels(generator_state(state, use_ema=False))
    if channels is not None:
        args["image_channels"] = channels
    return {**args, **overrides}


def generator_settings(checkpoint: str | os.PathLike | Mapping[str, Any],
                       preset: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings a generator was trained with (image size, channels, noise schedule, guidance weight, ...).

    New checkpoints and model files carry them (``settings``, see :func:`busgen_monai.presets.trained_settings`) and
    they win: a sampler needs no preset. ``preset`` (a name or dict) is the fallback for old files without them
    (with a warning); with neither, the error names the option to pass. Returns a preset-like dict, so configs read
    ``@preset['image_size']`` either way.
    """
    from ..presets import SAMPLING_KEYS, get_preset

    state = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    source = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
    saved = state.get("settings")
    if saved:
        missing = [k for k in SAMPLING_KEYS if k not in saved]
        if missing:
            raise ValueError(f"{source}: its settings lack {missing}; re-export it with busgen_monai.inferers."
                             "export_generator(..., settings=...)")
        return dict(saved)
    if preset is None:
        raise ValueError(f"{source} has no saved settings (trained before they were saved); pass the preset it was "
                         "trained with (--preset_name tiny)")
    warnings.warn(f"{source} has no saved settings (an old checkpoint); using preset "
                  f"{preset if isinstance(preset, str) else preset.get('name')!r}", stacklevel=2)
    out = get_preset(preset) if isinstance(preset, str) else dict(preset)
    channels = _infer_image_channels(generator_state(state, use_ema=False))
    if channels is not None:
        out["image_channels"] = channels
    return out


def load_generator(
    checkpoint: str | os.PathLike,
    preset: str | Mapping[str, Any] | None = None,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    **network_overrides: Any,
):
    """Rebuild the trained network from the arguments saved with it and load its weights. Returns
    ``(network, codec)``.

    ``preset`` is only consulted for old checkpoints that carry no ``network_kwargs`` (see :func:`network_kwargs_of`).
    """
    from ..data.conditions import ConditionCodec
    from ..networks import GENERATOR_NETWORKS
    from .latent import LatentDiffusionModel, autoencoder_from_state, network_class_of

    path = resolve_checkpoint(checkpoint)
    state = read_checkpoint(path)
    codec = ConditionCodec.from_dict(state["codec"])
    class_name = network_class_of(state)
    if class_name != "ConditionalDiffusionUNet" and not state.get("network_kwargs"):
        raise ValueError(f"{path}: a {class_name} checkpoint must carry its network_kwargs (re-export it)")
    kwargs = network_kwargs_of(state, preset, source=str(path), **network_overrides)
    try:
        network = GENERATOR_NETWORKS[class_name](**kwargs)
    except TypeError as err:
        raise ValueError(f"{path}: its network_kwargs do not build a {class_name}: {err}") from err
    weights = generator_state(state, use_ema)
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        hint = ("drop the network overrides" if network_overrides else
                "the checkpoint's network_kwargs and weights disagree" if state.get("network_kwargs") else
                "train and sample with the same preset and network options")
        raise ValueError(f"checkpoint {path} does not fit the network rebuilt for it ({hint}): "
                         f"{str(err).splitlines()[0]}") from err
    if class_name == "ConditionalDiT":
        ae_state = state.get("autoencoder")
        if not isinstance(ae_state, Mapping) or "network" not in ae_state:
            raise ValueError(f"{path}: a latent ({class_name}) checkpoint must carry its autoencoder ('autoencoder': "
                             "weights, network_kwargs, scale_factor); train it with bundles/busgen_latent")
        autoencoder = autoencoder_from_state(ae_state, source=f"{path} (autoencoder)")
        network = LatentDiffusionModel(network, autoencoder, float(ae_state.get("scale_factor", 1.0)),
                                       latent_clip=(state.get("settings") or {}).get("latent_clip"))
    return network.to(device).eval(), codec


def export_generator(checkpoint: str | os.PathLike | Mapping[str, Any], out: str | os.PathLike, use_ema: bool = True,
                     network_kwargs: Mapping[str, Any] | None = None, preset: str | Mapping[str, Any] | None = None,
                     dtype: torch.dtype | str | None = None, settings: Mapping[str, Any] | None = None,
                     extra: Mapping[str, Any] | None = None, layout: str = "file") -> Path:
    """Write a small model file (weights to sample with + codec + network kwargs + settings) for packaging/sharing.

    ``layout="file"`` (default): one file holding everything. ``layout="zoo"``: the model zoo's layout, ``out`` is a
    bare state dict (``network_def.load_state_dict(torch.load(out, weights_only=True))`` works as MONAI's bundle
    tools expect; an ``out`` ending in ``.safetensors`` is written with safetensors instead of torch's format) and the
    network arguments, codec and settings go to ``out`` with suffix ``.json`` as plain JSON;
    :func:`read_checkpoint` reads the pair back. The latent family (which carries its autoencoder) only has the
    one-file layout.

    ``checkpoint``: a path, or a checkpoint already read with :func:`read_checkpoint`.
    ``network_kwargs`` and ``settings`` default to the checkpoint's own (``preset`` is the fallback for old
    checkpoints); ``dtype="float16"`` halves the file (floating-point weights only; :func:`load_generator` casts back
    to float32). ``extra``: further plain-JSON entries (e.g. ``provenance``). The file loads with
    ``torch.load(weights_only=True)``.
    """
    from ..utils.io import atomic_torch_save

    source = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
    state = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    kwargs = dict(network_kwargs) if network_kwargs else network_kwargs_of(state, preset, source=source)
    weights = generator_state(state, use_ema)
    if dtype is not None:
        dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        weights = {k: v.to(dt) if v.is_floating_point() else v for k, v in weights.items()}
    payload = {"network": weights, "codec": state["codec"], "network_kwargs": kwargs,
               "settings": dict(settings) if settings else generator_settings(state, preset)}
    if state.get("network_class") is not None:  # latent family: the class name and the first stage travel along
        from .latent import network_class_of

        payload["network_class"] = network_class_of(state)
    if state.get("autoencoder") is not None:
        payload["autoencoder"] = state["autoencoder"]
    if extra:
        payload.update({k: v for k, v in extra.items() if k not in payload})
    if layout == "zoo":
        import json

        from ..utils.io import atomic_write_text

        if "autoencoder" in payload:
            raise ValueError("a latent generator carries its autoencoder and ships as one file (layout='file')")
        spec = {k: v for k, v in payload.items() if k != "network"}
        text = json.dumps(spec, indent=1)  # plain JSON only: a spec with tensors or objects is refused here
        if Path(out).suffix == ".safetensors":
            from safetensors.torch import save_file

            tmp = Path(out).with_name(Path(out).name + ".tmp")
            save_file({k: v.contiguous() for k, v in payload["network"].items()}, str(tmp))
            path = Path(os.replace(tmp, out) or out)
        else:
            path = atomic_torch_save(payload["network"], out)
        atomic_write_text(Path(out).with_suffix(".json"), text + "\n")
        return path
    if layout != "file":
        raise ValueError(f"layout must be 'file' or 'zoo', got {layout!r}")
    return atomic_torch_save(payload, out)
