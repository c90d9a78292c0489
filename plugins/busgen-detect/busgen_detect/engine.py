"""Pieces that put ``monai.apps.detection`` into MONAI's ignite engines (``SupervisedTrainer`` /
``SupervisedEvaluator``) as the bundle configs use them.

A detector's forward takes a list of targets and returns a loss dict (training) or a list of box dicts
(inference), so the engines get an ``iteration_update`` (``decollate=False``):

* :class:`DetectionLoss` - the engine's ``loss_function``: ``cls_weight * classification + box_regression``.
* :func:`detection_train_iteration` - one optimiser step (AMP aware), returns ``{"loss", "cls_loss", "box_loss"}``.
* :func:`detection_eval_iteration` - inference; returns predictions and ground truth, both as *normalised*
  ``[x1, y1, x2, y2]`` boxes, with image / patient ids.
* :class:`DetectionAP` - ignite ``Metric`` (AP at an IoU threshold) for ``key_val_metric``, so MONAI's
  best-metric tracking, ``CheckpointSaver(save_key_metric=True)`` and ``EarlyStopHandler`` work unchanged.
* :class:`DetectionCollector` - handler keeping every prediction of a run (for the report / CSV).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from .metrics import ap_from_matches, match_detections
from .transforms import boxes_to_normalised, stack_images

from busgen_monai.engines import attach_handlers  # noqa: E402  (re-exported: the bundle configs call it here)

__all__ = [
    "DetectionLoss",
    "prepare_detection_batch",
    "detection_train_iteration",
    "detection_eval_iteration",
    "DetectionAP",
    "DetectionCollector",
    "attach_handlers",
    "latest_checkpoint",
    "write_json",
    "training_summary",
    "load_detector_weights",
    "require_file",
]



class DetectionLoss:
    """``cls_weight * losses["classification"] + losses["box_regression"]`` (RetinaNet's focal/BCE + smooth L1)."""

    def __init__(self, cls_weight: float = 1.0, box_weight: float = 1.0) -> None:
        self.cls_weight, self.box_weight = float(cls_weight), float(box_weight)

    def __call__(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.cls_weight * losses["classification"] + self.box_weight * losses["box_regression"]


def prepare_detection_batch(batch: Sequence[Mapping[str, Any]], device: torch.device | str,
                            box_key: str = "boxes", label_key: str = "labels") -> tuple[torch.Tensor, list[dict]]:
    """List of items (``monai.data.utils.no_collation``) -> ``(B, C, H, W)`` images and the target list."""
    images = stack_images(batch).to(device)
    targets = [{box_key: torch.as_tensor(b[box_key]).float().reshape(-1, 4).to(device),
                label_key: torch.as_tensor(b[label_key]).long().reshape(-1).to(device)} for b in batch]
    return images, targets


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


def detection_train_iteration(engine: Engine, batchdata: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One training step of a MONAI ``SupervisedTrainer`` whose network is a ``RetinaNetDetector``."""
    if batchdata is None:
        raise ValueError("must provide batch data for current iteration.")
    images, targets = prepare_detection_batch(batchdata, engine.state.device)
    engine.network.train()
    engine.optimizer.zero_grad(set_to_none=True)
    if engine.amp and engine.scaler is not None:
        with torch.autocast("cuda", **getattr(engine, "amp_kwargs", {})):
            losses = engine.network(images, targets)
            loss = engine.loss_function(losses)
        engine.scaler.scale(loss).backward()
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
    else:
        losses = engine.network(images, targets)
        loss = engine.loss_function(losses)
        loss.backward()
        engine.optimizer.step()
    return {"loss": loss.detach(), "cls_loss": losses["classification"].detach(),
            "box_loss": losses["box_regression"].detach()}


def detection_eval_iteration(engine: Engine, batchdata: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Inference step of a MONAI ``SupervisedEvaluator``: predictions and truth as normalised boxes."""
    images = stack_images(batchdata).to(engine.state.device)
    net = engine.network
    net.eval()
    det = _unwrap(net)
    with torch.no_grad():
        if engine.amp:
            with torch.autocast("cuda"):
                outs = det(images)
        else:
            outs = det(images)
    h, w = int(images.shape[-2]), int(images.shape[-1])
    preds, truths = [], []
    score_key = getattr(det, "pred_score_key", "labels_scores")
    box_key = getattr(det, "target_box_key", "boxes")
    for item, out in zip(batchdata, outs):
        preds.append({"boxes": boxes_to_normalised(out[box_key], h, w),
                      "scores": out[score_key].detach().float().cpu().numpy().astype(np.float64)})
        truths.append({"boxes": np.asarray(item.get("boxes_norm", []), dtype=np.float64).reshape(-1, 4)})
    return {"pred": preds, "truth": truths,
            "image_id": [str(b.get("image_id", "")) for b in batchdata],
            "patient_id": [str(b.get("patient_id", "")) for b in batchdata],
            "image_path": [str(b.get("image_path") or "") for b in batchdata],
            "has_truth": [bool(b.get("has_truth", True)) for b in batchdata]}


class DetectionAP(Metric):
    """AP at ``iou_threshold`` over every image an evaluator saw (ignite ``Metric``; single process).
    Reads ``(pred, truth)`` from the engine output (see :func:`detection_eval_iteration`)."""

    required_output_keys = ("pred", "truth")

    def __init__(self, iou_threshold: float = 0.5, output_transform: Any = lambda x: x, device: Any = "cpu") -> None:
        self.iou_threshold = float(iou_threshold)
        self._preds: list = []
        self._truths: list = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._preds, self._truths = [], []

    def update(self, output: Sequence[Any]) -> None:
        preds, truths = output
        self._preds += list(preds)
        self._truths += list(truths)

    def compute(self) -> float:
        if not self._truths:
            return float("nan")
        ap = ap_from_matches(match_detections(self._preds, self._truths, self.iou_threshold))
        return 0.0 if not np.isfinite(ap) else float(ap)


class DetectionCollector:
    """Handler collecting every prediction of an evaluator run: ``records()`` returns one dict per image
    ``{"image_id", "patient_id", "image_path", "boxes", "scores", "truth"}`` (normalised boxes)."""

    def __init__(self) -> None:
        self._records: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)

    def _reset(self, engine: Engine) -> None:
        self._records = []

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for i, (p, t) in enumerate(zip(out["pred"], out["truth"])):
            self._records.append({"image_id": out["image_id"][i], "patient_id": out["patient_id"][i],
                                  "image_path": out["image_path"][i], "boxes": np.asarray(p["boxes"]),
                                  "scores": np.asarray(p["scores"]), "truth": np.asarray(t["boxes"]),
                                  "has_truth": out["has_truth"][i]})

    def records(self) -> list[dict]:
        return list(self._records)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """The newest resumable ``<prefix>_epoch=N.pt`` (highest N) in ``ckpt_dir``, or ``None``."""
    from busgen_monai.engines import latest_checkpoint as _latest

    return _latest(ckpt_dir, f"{prefix}_*.pt")


def write_json(path: str | os.PathLike, payload: Any) -> str:
    """JSON written atomically (``busgen_monai.utils.io``)."""
    from busgen_monai.utils.io import atomic_write_text, to_jsonable

    return str(atomic_write_text(Path(path), json.dumps(to_jsonable(payload), indent=2) + "\n"))


def training_summary(trainer: Any, evaluator: Any = None, output_dir: str | os.PathLike = ".",
                     extra: Mapping | None = None) -> str:
    """``training_summary.json``: epochs, iterations, last loss, wall time, best validation AP."""
    state = trainer.state
    out = state.output if isinstance(state.output, Mapping) else {}
    summary: dict[str, Any] = {
        "epochs": int(state.epoch), "iterations": int(state.iteration), "max_epochs": int(state.max_epochs or 0),
        "last_loss": float(out["loss"]) if "loss" in out else None,
        "train_seconds": float(state.times.get("COMPLETED") or 0.0) if hasattr(state, "times") else None,
    }
    if evaluator is not None and getattr(evaluator.state, "best_metric", None) is not None:
        summary["best_val_metric"] = float(evaluator.state.best_metric)
        summary["best_val_epoch"] = int(evaluator.state.best_metric_epoch)
    summary.update(dict(extra or {}))
    return write_json(Path(output_dir) / "training_summary.json", summary)


def load_detector_weights(network: torch.nn.Module, path: str | os.PathLike, device: Any = "cpu") -> torch.nn.Module:
    """Load a ``CheckpointSaver`` file (``{"model": state_dict}`` or a bare state dict) with
    ``weights_only=True`` (``busgen_monai.safe_load``)."""
    from busgen_monai.safe_load import load_weights

    if not Path(path).is_file():
        raise FileNotFoundError(f"detector weights {path} not found (config key 'model_path'); train first")
    obj = load_weights(path, what="detector checkpoint", map_location=device)
    state = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    _unwrap(network).load_state_dict(state)
    return network


def require_file(path: str | os.PathLike, key: str, hint: str = "train the detector first (configs/train.json)") -> str:
    """``path`` if it is a file, else one ``FileNotFoundError`` naming the config ``key`` and the fix."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist (config key '{key}'); {hint} or point '{key}' at a checkpoint")
    return str(path)
