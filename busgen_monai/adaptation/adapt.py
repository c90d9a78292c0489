"""Few-shot LoRA adaptation of a base generator: prepare, train-time handlers, save, load (bundle ``busgen_adapt``).

- :func:`prepare_adaptation` loads a base generator (pretraining checkpoint or exported ``model.pt``), extends its
  condition codec with new pathologies/devices (growing the embedding tables with trainable rows; base rows stay
  frozen) and injects LoRA. Only LoRA matrices and new condition rows are trainable.
- :class:`AdapterSaver` (ignite handler) writes the adapter-only file (:func:`~.lora.save_adapter`, with the extended
  codec and the base's identity in ``extra``) and the merged model (``{"network", "codec"}``, the export format of
  :func:`busgen_monai.inferers.export_generator`) when training completes.
- :class:`ValLossEarlyStopping` wraps ignite's ``EarlyStopping`` on the validation loss that
  :class:`~busgen_monai.engines.DiffusionValidationLossHandler` writes into ``engine.state.metrics``.
- :func:`load_adapted_generator` rebuilds ``(network, codec)`` from base + adapter for sampling.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..safe_load import load_weights
from ..utils.io import atomic_torch_save
from .lora import DEFAULT_TARGET_MODULES, _EXTRA_KEY, _condition_table, add_condition_values, inject_lora, merge_lora
from .lora import save_adapter, save_peft_adapter, state_dict_sha256

__all__ = ["extend_codec", "prepare_adaptation", "AdapterSaver", "ValLossEarlyStopping", "load_adapted_generator",
           "read_adapter", "save_merged"]

logger = logging.getLogger(__name__)


def extend_codec(codec, new_pathologies: Sequence[str] = (), new_devices: Sequence[str] = ()):
    """A copy of ``codec`` with ``new_pathologies`` appended and ``new_devices`` registered (known ones are kept)."""
    codec = copy.deepcopy(codec)
    for p in new_pathologies or ():
        if str(p) not in codec.pathologies:
            codec.pathologies.append(str(p))
    for d in new_devices or ():
        if codec.vocabulary.find(str(d)) is None:
            codec.vocabulary.add(str(d))
    return codec


def _grow_tables(network: nn.Module, codec) -> dict[str, list[int]]:
    """Grow pathology/device tables so every id of ``codec`` has a row; returns the new (trainable) ids."""
    grown = {}
    for cond, need in (("pathology", codec.num_pathology_embeds), ("device", codec.num_device_embeds)):
        try:
            have = _condition_table(network, cond).weight.shape[0]
        except KeyError:
            continue
        if need > have:
            grown[cond] = add_condition_values(network, cond, need - have)
    return grown


def prepare_adaptation(
    base_checkpoint: str | os.PathLike,
    preset: str | Mapping[str, Any] = "tiny",
    new_pathologies: Sequence[str] = (),
    new_devices: Sequence[str] = (),
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = DEFAULT_TARGET_MODULES,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
):
    """Load the base, extend the codec, grow condition tables, inject LoRA. Returns ``(network, codec)``.

    The returned network is in train mode with only LoRA matrices and new condition rows trainable.
    """
    from ..inferers import load_generator

    network, codec = load_generator(base_checkpoint, preset, use_ema=use_ema, device="cpu")
    base_hash = state_dict_sha256(network)
    codec = extend_codec(codec, new_pathologies, new_devices)
    grown = _grow_tables(network, codec)
    # the hash identifies the *unmodified* base: tables grown here are ExtendedEmbeddings whose base rows are hashed
    inject_lora(network, rank, alpha, dropout, target_modules)
    network._busgen_lora["base_sha256"] = base_hash
    if grown:
        logger.info("new condition rows (trainable): %s", grown)
    return network.to(device).train(), codec


def save_merged(network: nn.Module, codec, path: str | os.PathLike,
                settings: Mapping[str, Any] | None = None) -> Path:
    """Merge a copy of the adapted network and write it as ``{"network", "codec", "network_kwargs"[, "settings"]}``
    (loadable by ``load_generator`` with no preset: the base's constructor arguments with the extended codec's
    table sizes; ``settings``: the base's training settings, see :func:`busgen_monai.inferers.generator_settings`)."""
    merged = merge_lora(copy.deepcopy(network).cpu())
    payload: dict[str, Any] = {"network": merged.state_dict(), "codec": codec.to_dict()}
    base_args = getattr(merged, "init_args", None)
    if base_args:
        payload["network_kwargs"] = {**dict(base_args), **codec.network_kwargs()}
    if settings:
        payload["settings"] = dict(settings)
    return atomic_torch_save(payload, path)


class AdapterSaver:
    """Ignite handler: on ``COMPLETED`` write ``adapter.pt`` (adapter only) and ``model.pt`` (merged) to ``save_dir``.

    Args:
        network: the LoRA-injected network.
        codec: the extended condition codec (stored in the adapter's ``extra`` and the merged model).
        save_dir: output folder.
        base_info: what identifies the base (name, version, preset, file sha256), stored in ``extra``.
        adapter_name, merged_name: file names; ``merged_name=None`` skips the merged model.
        settings: the base's training settings, stored with the merged model.
    """

    def __init__(self, network: nn.Module, codec, save_dir: str | os.PathLike, base_info: Mapping[str, Any] | None = None,
                 adapter_name: str = "adapter.pt", merged_name: str | None = "model.pt",
                 settings: Mapping[str, Any] | None = None) -> None:
        self.network, self.codec, self.save_dir = network, codec, Path(save_dir)
        self.settings = dict(settings) if settings else None
        self.base_info = dict(base_info or {})
        self.adapter_name, self.merged_name = adapter_name, merged_name

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def save(self) -> dict[str, Path]:
        extra = {"codec": self.codec.to_dict(), "base": self.base_info}
        out = {"adapter": save_adapter(self.network, self.save_dir / self.adapter_name, extra=extra),
               # the same adapter in peft's own format (adapter_config.json + adapter_model.safetensors)
               "peft_adapter": save_peft_adapter(self.network, self.save_dir / "peft_adapter", extra=extra)}
        if self.merged_name:
            out["merged"] = save_merged(self.network, self.codec, self.save_dir / self.merged_name, self.settings)
        logger.info("saved %s", {k: str(v) for k, v in out.items()})
        return out

    def __call__(self, engine=None) -> None:
        self.save()


class ValLossEarlyStopping:
    """ignite ``EarlyStopping`` on ``engine.state.metrics[metric_name]`` (lower is better).

    Attach it *after* the :class:`~busgen_monai.engines.DiffusionValidationLossHandler` that computes the metric
    (same event); it is checked at every epoch end where the metric exists.
    """

    def __init__(self, patience: int = 3, metric_name: str = "val_loss", min_delta: float = 0.0,
                 epoch_level: bool = True) -> None:
        self.patience, self.metric_name, self.min_delta, self.epoch_level = int(patience), metric_name, min_delta, epoch_level
        self._stopper = None

    def attach(self, engine) -> None:
        from ignite.engine import Events
        from ignite.handlers import EarlyStopping

        if self.patience <= 0:  # disabled
            return
        name = self.metric_name
        self._stopper = EarlyStopping(self.patience, lambda e: -float(e.state.metrics[name]), engine,
                                      min_delta=self.min_delta)
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event, self)

    def __call__(self, engine) -> None:
        if self.metric_name in engine.state.metrics and self.patience > 0:
            self._stopper(engine)


def read_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """Read an adapter file; raises naming the file when it is not one."""
    try:
        state = load_weights(path, "LoRA adapter")
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - UnsafeFileError says it all; others name the file
        if isinstance(err, ValueError):
            raise
        raise ValueError(f"cannot read adapter {path}: {err}") from err
    if not isinstance(state, Mapping) or "lora" not in state or "config" not in state:
        raise ValueError(f"{path} is not a busgen LoRA adapter (needs 'lora' and 'config')")
    return dict(state)


def load_adapted_generator(
    base_checkpoint: str | os.PathLike,
    adapter: str | os.PathLike,
    preset: str | Mapping[str, Any] = "tiny",
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    merge: bool = False,
):
    """Base + adapter -> ``(network, codec)`` in eval mode; the codec is the adapter's extended one.

    Raises when the base's hash differs from the one the adapter was trained on.
    """
    from ..inferers import load_generator
    from ..data.conditions import ConditionCodec

    state = read_adapter(adapter)
    network, codec = load_generator(base_checkpoint, preset, use_ema=use_ema, device="cpu")
    from .lora import load_adapter

    load_adapter(network, state)
    extra = state.get(_EXTRA_KEY) or {}
    if extra.get("codec"):
        codec = ConditionCodec.from_dict(extra["codec"])
    if merge:
        merge_lora(network)
    return network.to(device).eval(), codec
