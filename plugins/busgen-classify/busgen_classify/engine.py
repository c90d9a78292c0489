"""Small helpers the bundle configs call: resumable checkpoints and metric output transforms."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from busgen_monai.engines import attach_handlers  # noqa: E402  (re-exported: the bundle configs call it here)

__all__ = ["attach_handlers", "latest_checkpoint", "accuracy_output_transform", "write_json", "training_summary"]



def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """The newest resumable checkpoint ``<prefix>_epoch=N.pt`` (highest N) in ``ckpt_dir``, or ``None``."""
    from busgen_monai.engines import latest_checkpoint as _latest

    return _latest(ckpt_dir, f"{prefix}_*.pt")


def accuracy_output_transform(output: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor]):
    """``(probabilities (B, C), class index (B,))`` from decollated engine output whose ``label`` is one-hot,
    the form ``ignite.metrics.Accuracy`` expects for multi-class accuracy."""
    if isinstance(output, Mapping):
        output = [output]
    pred = torch.stack([torch.as_tensor(o["pred"]).float().reshape(-1) for o in output])
    label = torch.stack([torch.as_tensor(o["label"]).reshape(-1).argmax() for o in output])
    return pred, label


def write_json(path: str | os.PathLike, payload: Any) -> str:
    """Write JSON atomically (temporary file, then rename); returns the path."""
    from busgen_monai.data.schema import atomic_write_text
    from busgen_monai.evaluation import to_jsonable

    return str(atomic_write_text(Path(path), json.dumps(to_jsonable(payload), indent=2) + "\n"))


def training_summary(trainer: Any, evaluator: Any = None, output_dir: str | os.PathLike = ".", extra: Mapping | None = None,
                     training_args: Mapping | None = None) -> str:
    """Write ``training_summary.json`` (epochs, iterations, best validation metric, wall time) to ``output_dir``.

    ``training_args`` (the config's ``training_args``: output folder, data, labels, backbone, input size, crop) go to
    ``models/training_args.json``, a MONAI ``args_file``: evaluating or predicting later needs only
    ``--args_file runs/clf/models/training_args.json`` instead of repeating every training argument."""
    if training_args is not None:
        write_json(Path(output_dir) / "models" / "training_args.json", json.loads(json.dumps(dict(training_args))))
    state = trainer.state
    summary: dict[str, Any] = {
        "epochs": int(state.epoch),
        "iterations": int(state.iteration),
        "max_epochs": int(state.max_epochs or 0),
        "last_loss": float(state.output[0]["loss"]) if isinstance(state.output, list) and state.output
        and "loss" in state.output[0] else None,
        "train_seconds": float(state.times.get("COMPLETED") or 0.0) if hasattr(state, "times") else None,
    }
    if evaluator is not None and getattr(evaluator.state, "best_metric", None) is not None:
        summary["best_val_metric"] = float(evaluator.state.best_metric)
        summary["best_val_epoch"] = int(evaluator.state.best_metric_epoch)
        summary["val_metrics"] = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    summary.update(dict(extra or {}))
    return write_json(Path(output_dir) / "training_summary.json", summary)
