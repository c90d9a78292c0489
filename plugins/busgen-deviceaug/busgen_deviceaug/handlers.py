"""Ignite handlers for the CycleGAN trainer: periodic sample grids and loss history."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from monai.utils import IgniteInfo, min_version, optional_import

from .engines import CycleGANKeys

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["CycleGANSampleSaver", "LossHistory", "EngineCheckpointSaver", "EngineCheckpointLoader"]


class EngineCheckpointSaver:
    """``monai.handlers.CheckpointSaver`` that also saves the engine it is attached to.

    A bundle config cannot list a saver whose ``save_dict`` names ``@train#trainer`` among that trainer's own
    handlers (circular reference). This wrapper builds the ``CheckpointSaver`` at ``attach`` time with
    ``{**save_dict, engine_key: engine}``, so the trainer's state (epoch, iteration) is checkpointed and a run
    can resume. All keyword arguments go to ``CheckpointSaver``.
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        self.save_dir, self.save_dict, self.engine_key, self.kwargs = save_dir, dict(save_dict), engine_key, kwargs
        self.saver: Any = None

    def attach(self, engine: Any) -> None:
        from monai.handlers import CheckpointSaver

        self.saver = CheckpointSaver(self.save_dir, {**self.save_dict, self.engine_key: engine}, **self.kwargs)
        self.saver.attach(engine)


class EngineCheckpointLoader:
    """``monai.handlers.CheckpointLoader`` that also restores the engine it is attached to (see
    :class:`EngineCheckpointSaver`). All keyword arguments go to ``CheckpointLoader``."""

    def __init__(self, load_path: str, load_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        self.load_path, self.load_dict, self.engine_key, self.kwargs = load_path, dict(load_dict), engine_key, kwargs
        self.loader: Any = None

    def attach(self, engine: Any) -> None:
        from monai.handlers import CheckpointLoader

        self.loader = CheckpointLoader(self.load_path, {**self.load_dict, self.engine_key: engine}, **self.kwargs)
        self.loader.attach(engine)


class CycleGANSampleSaver:
    """Save a PNG grid of the current iteration's images every ``interval`` epochs (or iterations).

    Each row is one sample: ``A | G_AB(A) | G_BA(G_AB(A)) | B | G_BA(B) | G_AB(G_BA(B))`` (original,
    translated, reconstructed, for both directions). Files: ``{output_dir}/{prefix}_epoch=0003.png``.

    Args:
        output_dir: folder for the PNGs (created on first save).
        interval: save every ``interval`` epochs (``epoch_level=True``) or iterations.
        epoch_level: count epochs (default) or iterations.
        n_samples: rows (at most the batch size of the last iteration).
        prefix: file-name prefix.
        name_a, name_b: domain names shown in the title.
    """

    def __init__(self, output_dir: str | os.PathLike, interval: int = 1, epoch_level: bool = True,
                 n_samples: int = 4, prefix: str = "samples", name_a: str = "A", name_b: str = "B") -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.output_dir = Path(output_dir)
        self.interval = int(interval)
        self.epoch_level = epoch_level
        self.n_samples = int(n_samples)
        self.prefix = prefix
        self.name_a, self.name_b = name_a, name_b
        self.saved: list[Path] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Any) -> None:
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self)

    def __call__(self, engine: Any) -> Path | None:
        from busgen_monai.visualize import save_image_grid

        out = engine.state.output
        if isinstance(out, list):  # decollated: one dict per sample
            out = {k: [o[k] for o in out] for k in CycleGANKeys.IMAGES if out and k in out[0]}
        if not isinstance(out, dict) or any(k not in out for k in CycleGANKeys.IMAGES):
            self.logger.warning("CycleGANSampleSaver: engine output lacks the CycleGAN images; nothing saved")
            return None
        K = CycleGANKeys
        cols = (K.REAL_A, K.FAKE_B, K.REC_A, K.REAL_B, K.FAKE_A, K.REC_B)
        a, b = self.name_a, self.name_b
        captions = ("A", "A->B", "A->B->A", "B", "B->A", "B->A->B")  # short: tiles are small
        n = min(self.n_samples, len(out[K.REAL_A]), len(out[K.REAL_B]))
        images, labels = [], []
        for i in range(n):
            for key, cap in zip(cols, captions):
                images.append(out[key][i].detach().float().cpu().clamp(-1, 1))
                labels.append(cap)
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        tag = "epoch" if self.epoch_level else "iteration"
        path = self.output_dir / f"{self.prefix}_{tag}={step:04d}.png"
        save_image_grid(images, path, labels=labels, ncols=6, tile=1.3,
                        title=f"CycleGAN A = {a}, B = {b}; {tag} {step}: original | translated | reconstructed")
        self.saved.append(path)
        return path


class LossHistory:
    """Record the scalar losses of every iteration (``history[key] -> list``), optionally dump JSON at the end.

    Args:
        path: JSON file written when the run completes (None: keep in memory only).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self.history: dict[str, list[float]] = {}

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        if self.path is not None:
            engine.add_event_handler(Events.COMPLETED, self.save)

    def record(self, engine: Any) -> None:
        out = engine.state.output
        if isinstance(out, list):
            out = out[0] if out else {}
        for k in CycleGANKeys.LOSSES:
            if isinstance(out, dict) and k in out:
                self.history.setdefault(k, []).append(float(out[k]))
        self.history.setdefault("iteration", []).append(int(engine.state.iteration))

    def save(self, engine: Any = None) -> Path | None:
        if self.path is None:
            return None
        from busgen_monai.data.schema import atomic_write_text

        # append to an existing history (resumed runs keep their earlier iterations)
        old: dict[str, list] = {}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                old = {}
        first_new = self.history.get("iteration", [None])[0]
        if old.get("iteration") and first_new is not None:
            keep = [i for i, it in enumerate(old["iteration"]) if it < first_new]
            merged = {k: [v[i] for i in keep] + self.history.get(k, []) for k, v in old.items()}
            for k, v in self.history.items():
                merged.setdefault(k, v)
        else:
            merged = self.history
        atomic_write_text(self.path, json.dumps(merged))
        return self.path
