"""An ignite handler that collects per-image predictions, labels, ids and penultimate features."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from monai.networks.utils import copy_model_state
from torch import nn

from busgen_monai.utils.io import atomic_open

from .networks import FeatureHook

__all__ = ["PredictionCollector", "PretrainedCheckpointLoader", "write_predictions_csv", "read_predictions_csv"]


def _label_value(v: Any) -> int:
    """An integer class index from a scalar label or a one-hot vector (``-1`` when unknown)."""
    if v is None:
        return -1
    t = torch.as_tensor(v).detach().cpu().reshape(-1)
    if t.numel() == 1:
        return int(t.item())
    return int(t.argmax().item())


def _rows(batch: Any, n: int) -> list[dict]:
    """Per-image dicts from a decollated (list) or collated (dict) batch."""
    if isinstance(batch, list):
        return [dict(b) for b in batch]
    rows: list[dict] = [{} for _ in range(n)]
    for key, value in dict(batch or {}).items():
        if isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
            vals = list(value)
        elif isinstance(value, (list, tuple)) and len(value) == n:
            vals = list(value)
        else:
            continue
        for r, v in zip(rows, vals):
            r[key] = v
    return rows


class PredictionCollector:
    """Collect, for every evaluated image, the class probabilities, the true label, ids and (optionally)
    the penultimate features (the input of the classifier head, captured with a forward hook).

    Attach it to a ``SupervisedEvaluator`` (put it in ``val_handlers``). The evaluator's postprocessing
    must turn ``pred`` into probabilities (``Activationsd(softmax=True)``); labels and ids are read from
    the collated batch (``label``, ``patient_id``, ``image_id``).

    Args:
        network: the evaluated network (for the feature hook); ``None`` skips features.
        features: capture penultimate features.
        pred_key, label_key: keys in the engine output / batch.
    """

    def __init__(self, network: nn.Module | None = None, features: bool = True, pred_key: str = "pred",
                 label_key: str = "label") -> None:
        self.network = network
        self.want_features = features and network is not None
        self.pred_key, self.label_key = pred_key, label_key
        self._hook: FeatureHook | None = None
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self.probs: list[np.ndarray] = []
        self.labels: list[int] = []
        self.patient_ids: list[str] = []
        self.image_ids: list[str] = []
        self.features: list[np.ndarray] = []
        if self._hook is not None:
            self._hook.features.clear()

    def attach(self, engine: Engine) -> None:
        if self.want_features and self._hook is None:
            self._hook = FeatureHook(self.network)
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._detach_hook)

    def _detach_hook(self, engine: Engine) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        batch = engine.state.batch
        items = output if isinstance(output, list) else [output]
        preds = [torch.as_tensor(o[self.pred_key]).detach().float().cpu().reshape(-1) for o in items]
        probs = torch.stack(preds).numpy()
        n = probs.shape[0]
        self.probs.append(probs)
        rows = _rows(batch, n)
        self.labels += [_label_value(r.get(self.label_key)) for r in rows]
        self.patient_ids += [str(r.get("patient_id", "")) for r in rows]
        self.image_ids += [str(r.get("image_id", "")) for r in rows]
        if self._hook is not None:
            feats = self._hook.pop()
            if feats is not None and feats.shape[0] == n:
                self.features.append(feats.numpy())

    def predictions(self) -> dict[str, Any]:
        """``{"probs": (N, C), "labels": (N,), "patient_ids": [...], "image_ids": [...], "features": (N, D) | None}``."""
        probs = np.concatenate(self.probs) if self.probs else np.zeros((0, 0))
        feats = np.concatenate(self.features) if self.features and sum(len(f) for f in self.features) == len(probs) else None
        return {"probs": probs, "labels": np.asarray(self.labels, dtype=np.int64), "patient_ids": list(self.patient_ids),
                "image_ids": list(self.image_ids), "features": feats}


class PretrainedCheckpointLoader(CheckpointLoader):
    """``monai.handlers.CheckpointLoader`` for transfer learning: with ``strict_shape=False`` it loads every
    layer whose name and shape match and skips the rest (e.g. a classification head with another number
    of classes). Same constructor as ``CheckpointLoader``.

    Why a subclass: in MONAI 1.6.1 the ``strict_shape=False`` path hands the outer checkpoint dict instead
    of the model's state dict to ``copy_model_state``, so nothing is loaded ("'dst' model updated: 0 of N
    variables"; MONAI pull request 8948). With ``strict_shape=True`` this class behaves exactly like its parent.

    A checkpoint that matches no layer at all raises an error instead of silently training from scratch.
    """

    def __call__(self, engine: Engine) -> None:
        if self.strict_shape:
            super().__call__(engine)
            return
        checkpoint = torch.load(self.load_path, map_location=self.map_location, weights_only=True)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and first not in checkpoint:
            checkpoint = {first: checkpoint}  # the file is a bare state dict
        for key, obj in self.load_dict.items():
            if not isinstance(obj, nn.Module):
                self.logger.warning(f"strict_shape=False: only models are loaded; skipping '{key}'")
                continue
            if key not in checkpoint:
                raise KeyError(f"checkpoint {self.load_path} has no entry '{key}'; it has {sorted(checkpoint)}")
            net = obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj
            _, updated, unchanged = copy_model_state(net, checkpoint[key], inplace=True)
            if not updated:
                raise ValueError(f"checkpoint {self.load_path} matches no layer of '{key}' (names or shapes all differ); "
                                 "is it a checkpoint of the same backbone?")
            self.logger.info(f"loaded {len(updated)} tensors of '{key}' from {self.load_path}; "
                             f"{len(unchanged)} kept their initial values (missing or shape mismatch): {unchanged[:8]}")


def write_predictions_csv(path: str | os.PathLike, predictions: dict[str, Any], classes: Sequence[str],
                          positive_index: int | None = None) -> Path:
    """One row per image: ``image_id, patient_id, label, label_name, prob_<class>..., score`` (``score`` =
    probability of the positive class). Written atomically."""
    path = Path(path)
    probs = predictions["probs"]
    pos = len(classes) - 1 if positive_index is None else positive_index
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "patient_id", "label", "label_name"] + [f"prob_{c}" for c in classes] + ["score"])
        for i in range(probs.shape[0]):
            lab = int(predictions["labels"][i])
            w.writerow([predictions["image_ids"][i], predictions["patient_ids"][i], lab,
                        classes[lab] if 0 <= lab < len(classes) else ""]
                       + [f"{p:.7g}" for p in probs[i]] + [f"{probs[i, pos]:.7g}"])
    return path


def read_predictions_csv(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``image_id -> {"score": float, "label": int, "patient_id": str}`` from :func:`write_predictions_csv`
    output (or any CSV with ``image_id`` and ``score`` columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    out: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image_id", "score"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"predictions file {path} lacks columns {sorted(missing)}")
        for row in reader:
            out[row["image_id"]] = {"score": float(row["score"]), "label": int(row["label"]) if row.get("label") else None,
                                    "patient_id": row.get("patient_id")}
    return out
