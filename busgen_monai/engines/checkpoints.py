"""Checkpoints of diffusion training: :class:`TrainerCheckpointSaver` / :class:`ResumeCheckpointLoader` (MONAI's
``CheckpointSaver`` / ``CheckpointLoader`` that also save and restore the engine they are attached to, so a bundle
lists them in ``train_handlers`` without a trainer <-> handler cycle; the loader is a no-op when there is nothing
to resume), :class:`NetworkArgsRecord` / :class:`SettingsRecord` (the network's constructor arguments and the
training settings, stored in every checkpoint) and :func:`latest_checkpoint`, the project's one checkpoint finder.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch import nn

from ._common import unwrap_network

__all__ = ["NetworkArgsRecord", "SettingsRecord", "TrainerCheckpointSaver", "ResumeCheckpointLoader", "latest_checkpoint",
           "resolve_checkpoint", "attach_handlers"]

logger = logging.getLogger(__name__)

class _EngineRef:
    """Checkpoint entry standing for the engine a handler gets attached to (``state_dict`` = its counters)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def state_dict(self) -> dict[str, Any]:
        if self.engine is None:
            raise RuntimeError("checkpoint handler is not attached to an engine")
        return dict(self.engine.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if self.engine is None:
            raise RuntimeError("checkpoint handler is not attached to an engine")
        self.engine.load_state_dict(state_dict)

class NetworkArgsRecord:
    """Checkpoint entry holding the network's full constructor arguments (``network.init_args``: preset plus every
    override), saved as ``network_kwargs`` so whatever loads the checkpoint rebuilds exactly the trained network.

    On resume, ``load_state_dict`` refuses a checkpoint trained with different network arguments (naming the keys
    that differ) instead of failing later with a tensor size mismatch.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, Any]:
        net = unwrap_network(self.network)
        args = getattr(net, "init_args", None)
        if args is None:
            raise TypeError(f"{type(net).__name__} has no init_args; only busgen networks record their arguments")
        return copy.deepcopy(dict(args))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        current = self.state_dict()
        differ = sorted(k for k in set(current) | set(state_dict) if current.get(k) != state_dict.get(k))
        if differ:
            detail = ", ".join(f"{k}: checkpoint {state_dict.get(k)!r} vs config {current.get(k)!r}" for k in differ)
            raise ValueError(f"the checkpoint to resume from was trained with other network arguments ({detail}); "
                             "use the same settings, or a new output_dir / --resume false to start over")

class SettingsRecord:
    """Checkpoint entry holding the training settings (the preset as actually trained, see
    :func:`busgen_monai.presets.trained_settings`), saved as ``settings``: image size, channels, noise schedule,
    guidance weight, so a sampler rebuilds the whole generator from the checkpoint alone.

    On resume, a checkpoint trained at another image size, channel count or noise schedule is refused.
    """

    _MUST_MATCH = ("image_size", "image_channels", "num_train_timesteps", "beta_start", "beta_end")

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = copy.deepcopy(dict(settings))

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.settings)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        differ = [k for k in self._MUST_MATCH if k in state_dict and state_dict[k] != self.settings.get(k)]
        if differ:
            detail = ", ".join(f"{k}: checkpoint {state_dict[k]!r} vs config {self.settings.get(k)!r}" for k in differ)
            raise ValueError(f"the checkpoint to resume from was trained with other settings ({detail}); "
                             "use the same settings, or a new output_dir / --resume false to start over")

class TrainerCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` that also saves the engine it is attached to under ``engine_key``.

    All other arguments are ``CheckpointSaver``'s; ``save_dict`` holds the network, optimizer, LR scheduler, EMA,
    condition codec... (anything with ``state_dict``).
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        if engine_key in save_dict:
            raise ValueError(f"save_dict already has {engine_key!r}; the saver adds the engine under that key itself")
        self._engine_ref = _EngineRef()
        super().__init__(save_dir, {**save_dict, engine_key: self._engine_ref}, **kwargs)

    def attach(self, engine: Engine) -> None:
        self._engine_ref.engine = engine
        super().attach(engine)

class ResumeCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` that also restores the engine it is attached to (``engine_key``), so
    training continues at the saved iteration with the saved optimizer/scheduler/EMA state.

    ``load_path=None`` (no checkpoint yet, e.g. ``latest_checkpoint(ckpt_dir)`` of a fresh run) makes it a no-op.
    Attach it before handlers that act on ``Events.STARTED`` so they see the restored state.
    """

    def __init__(self, load_path: str | None, load_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        if engine_key in load_dict:
            raise ValueError(f"load_dict already has {engine_key!r}; the loader adds the engine under that key itself")
        self._engine_ref = _EngineRef()
        self.enabled = load_path is not None
        path = str(load_path) if load_path is not None else "<none>"
        super().__init__(path, {**load_dict, engine_key: self._engine_ref}, **kwargs)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            logger.info("no checkpoint to resume from: training starts at iteration 0")
            return
        self._engine_ref.engine = engine
        super().attach(engine)

_CKPT = re.compile(r"(?:iteration|epoch)=(\d+)")

def latest_checkpoint(ckpt_dir: str | os.PathLike | None, pattern: str = "*.pt") -> str | None:
    """Newest checkpoint in ``ckpt_dir`` matching ``pattern`` (``None`` if there is none): the highest
    ``iteration=N`` or ``epoch=N`` in the file names written by ``CheckpointSaver`` (interval and final
    checkpoints), the newest file on ties; files without a number count lowest. The one checkpoint finder of the
    project: plugins call it with their own pattern (e.g. ``"checkpoint_*.pt"``)."""
    if not ckpt_dir or not Path(ckpt_dir).is_dir():
        return None
    files = [p for p in Path(ckpt_dir).glob(pattern) if p.is_file()]
    if not files:
        return None

    def key(p: Path) -> tuple[int, float]:
        m = _CKPT.search(p.name)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)

    return str(max(files, key=key))


def attach_handlers(engine: Any, handlers: Any) -> Any:
    """Attach handlers after the engine exists (``None`` entries, i.e. disabled components, are skipped). For
    handlers that hold the engine itself (a resume loader/saver, early stopping): listing them in the engine's own
    handler list in a bundle config would be a circular reference. Returns ``engine``."""
    for h in handlers or []:
        if h is not None:
            h.attach(engine)
    return engine


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest ``*.pt`` in a folder (``models/`` of a training run)."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint (*.pt) in {path}; train first or point at a .pt file")
        return Path(found)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path
