"""Pieces the bundle configs hand to MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``: the batch
preparation (padded image stacks + mask), the loss, metric output transforms, a collector of breast- and
image-level outputs, weakly supervised localisation scores, and resumable-checkpoint helpers."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from busgen_monai.utils.io import atomic_write_json

from busgen_monai.engines import attach_handlers  # noqa: E402  (re-exported: the bundle configs call it here)

__all__ = ["prepare_breast_batch", "NYULoss", "breast_metric_transform", "loss_transform", "BreastCollector",
           "localisation_scores", "upsample_map", "POINTING_TOLERANCE", "attach_handlers", "latest_checkpoint", "training_summary",
           "unwrap", "BreastEnsemble", "load_ensemble"]



def prepare_breast_batch(batchdata: Mapping[str, Any], device: torch.device | str | None = None,
                         non_blocking: bool = False, **kwargs: Any):
    """``prepare_batch`` for MONAI engines: ``(images (B, K, H, W), labels (B, 2), (), {"mask": (B, K)})``; the
    network is then called as ``network(images, mask=mask)``."""
    images = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking, **kwargs)
    labels = torch.as_tensor(batchdata["label"]).float().to(device=device, non_blocking=non_blocking)
    mask = torch.as_tensor(batchdata["image_mask"]).to(device=device, non_blocking=non_blocking)
    return images, labels, (), {"mask": mask}


class NYULoss(nn.Module):
    """``BCE(breast probabilities, breast labels) + beta * L1(saliency)``.

    The L1 term is the mean absolute saliency value over the real (unmasked) images of the batch, per class map;
    it keeps the maps sparse so that they localise (Shen et al. 2021).

    Args:
        beta: weight of the saliency L1 term.
    """

    def __init__(self, beta: float = 1e-2) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, pred: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        breast = pred["breast"]
        target = target.to(breast)
        if target.shape != breast.shape:
            raise ValueError(f"NYULoss: labels {tuple(target.shape)} do not match predictions {tuple(breast.shape)}")
        bce = F.binary_cross_entropy(breast, target)
        mask = pred["mask"].to(torch.bool)
        sal = pred["saliency"][mask]  # (n_real, C, h, w)
        l1 = sal.abs().mean() if sal.numel() else breast.new_zeros(())
        return bce + self.beta * l1


def breast_metric_transform(class_index: int = 1):
    """Output transform for ``ROCAUC`` on non-decollated engine output: ``(p (B, 1), y (B, 1))`` of one class."""

    def transform(output: Mapping[str, Any]):
        pred = output["pred"]["breast"][:, class_index : class_index + 1].detach()
        return pred, output["label"][:, class_index : class_index + 1].detach()

    return transform


def loss_transform(output: Mapping[str, Any]) -> float:
    """The iteration loss as a float (for ``StatsHandler`` / ``TensorBoardStatsHandler``)."""
    return float(output["loss"].detach()) if isinstance(output["loss"], torch.Tensor) else float(output["loss"])


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside (Distributed)DataParallel."""
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


def upsample_map(saliency: torch.Tensor | np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinearly upsample (h, w) or (C, h, w) saliency to ``size`` (H, W)."""
    t = torch.as_tensor(np.asarray(saliency, dtype=np.float32))
    squeeze = t.ndim == 2
    t = t[None] if squeeze else t
    up = F.interpolate(t[None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0]
    return (up[0] if squeeze else up).numpy()


#: pointing-game tolerance of Zhang et al. (ECCV 2016): 15 pixels at 224 x 224, here as a fraction of the image side
POINTING_TOLERANCE = 15.0 / 224.0


def localisation_scores(sal_map: np.ndarray, lesion: np.ndarray, threshold: float = 0.5,
                        relative: float = 0.5, tolerance: float = POINTING_TOLERANCE) -> dict[str, float]:
    """Weakly supervised localisation of one image: pointing game and Dice of the thresholded map.

    Args:
        sal_map: (H, W) saliency of the class of interest, at the mask's resolution.
        lesion: (H, W) binary lesion mask (non-empty).
        threshold: absolute threshold of the map for ``dice``.
        relative: threshold as a fraction of the map's maximum for ``dice_relative``.
        tolerance: pointing-game tolerance as a fraction of the shorter image side (the standard pointing game
            of Zhang et al., ECCV 2016, counts a hit within 15 pixels of the object at 224 px).

    Returns:
        ``{"hit": 0/1 (map maximum within the tolerance of the lesion), "hit_strict": 0/1 (inside the lesion),
        "dice", "dice_relative"}``.
    """
    from scipy.ndimage import distance_transform_edt

    lesion = np.asarray(lesion) > 0
    if not lesion.any():
        raise ValueError("localisation_scores: empty lesion mask")
    m = np.asarray(sal_map, dtype=np.float64)
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    dist = float(distance_transform_edt(~lesion)[y, x])

    def dice(pred: np.ndarray) -> float:
        return float(2.0 * np.logical_and(pred, lesion).sum() / (pred.sum() + lesion.sum()))

    return {"hit": float(dist <= tolerance * min(m.shape)), "hit_strict": float(lesion[y, x]),
            "dice": dice(m >= threshold), "dice_relative": dice(m >= relative * m.max())}


class BreastCollector:
    """Collect, per evaluated breast, the breast- and image-level probabilities, attention weights, low-resolution
    saliency maps and ids; per image with a lesion mask, the localisation scores of the map of the image's
    pathology class. Attach to a ``SupervisedEvaluator`` (``decollate=False``) in ``val_handlers``.

    Args:
        classes: class names (map order).
        dice_threshold: absolute saliency threshold for the Dice score.
    """

    def __init__(self, classes: Sequence[str] = ("benign", "malignant"), dice_threshold: float = 0.5) -> None:
        self.classes = [str(c) for c in classes]
        self.dice_threshold = float(dice_threshold)
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self.breasts: list[dict[str, Any]] = []
        self.localisation: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.collect(engine.state.batch, engine.state.output["pred"])

    def collect(self, batch: Mapping[str, Any], pred: Mapping[str, torch.Tensor]) -> None:
        """Add one batch (collated by :func:`~busgen_nyu.data.collate_breasts`) and the network output."""
        breast = pred["breast"].detach().float().cpu().numpy()
        image = pred["image"].detach().float().cpu().numpy()
        att = pred["attention"].detach().float().cpu().numpy()
        sal = pred["saliency"].detach().float().cpu().numpy()
        mask = pred["mask"].detach().cpu().numpy().astype(bool)
        labels = torch.as_tensor(batch["label"]).float().cpu().numpy()
        lesion = batch.get("lesion_mask")
        has = batch.get("has_mask")
        for b in range(breast.shape[0]):
            k = int(mask[b].sum())
            rec = {
                "breast_id": batch["breast_id"][b], "patient_id": batch["patient_id"][b],
                "label": labels[b].tolist(), "label_name": batch.get("label_name", [""] * len(labels))[b],
                "birads": float(batch["birads"][b]) if "birads" in batch else float("nan"),
                "prob": breast[b].tolist(), "image_ids": list(batch["image_ids"][b]), "images": list(batch["images"][b]),
                "image_prob": image[b, :k].tolist(), "attention": att[b, :k].tolist(),
                "saliency": sal[b, :k].astype(np.float16),
                "image_pathology": list(batch.get("image_pathology", [[""] * k] * len(labels))[b]),
            }
            self.breasts.append(rec)
            if lesion is None:
                continue
            paths = batch.get("image_pathology", [[]] * len(labels))[b]
            for j in range(k):
                path_j = paths[j] if j < len(paths) else ""
                if float(has[b, j]) <= 0 or path_j not in self.classes:
                    continue
                c = self.classes.index(path_j)
                les = torch.as_tensor(lesion[b, j]).cpu().numpy()
                up = upsample_map(sal[b, j, c], les.shape)
                self.localisation.append({"image_id": rec["image_ids"][j], "breast_id": rec["breast_id"],
                                          "patient_id": rec["patient_id"], "class": path_j,
                                          **localisation_scores(up, les, self.dice_threshold)})


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """The newest resumable ``<prefix>_epoch=N.pt`` (highest N) in ``ckpt_dir``, or ``None``."""
    from busgen_monai.engines import latest_checkpoint as _latest

    return _latest(ckpt_dir, f"{prefix}_*.pt")


def training_summary(trainer: Any, evaluator: Any = None, output_dir: str | os.PathLike = ".",
                     network: nn.Module | None = None, extra: Mapping | None = None) -> str:
    """Write ``training_summary.json`` (epochs, last loss, best validation metric, network config) to ``output_dir``."""
    state = trainer.state
    out = state.output if isinstance(state.output, Mapping) else {}
    summary: dict[str, Any] = {"epochs": int(state.epoch), "iterations": int(state.iteration),
                               "max_epochs": int(state.max_epochs or 0),
                               "last_loss": loss_transform(out) if "loss" in out else None}
    if evaluator is not None and getattr(evaluator.state, "best_metric", None) is not None:
        summary["best_val_metric"] = float(evaluator.state.best_metric)
        summary["best_val_epoch"] = int(evaluator.state.best_metric_epoch)
        summary["val_metrics"] = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    if network is not None:
        summary["network"] = dict(getattr(unwrap(network), "config", {}))
    summary.update(dict(extra or {}))
    path = Path(output_dir) / "training_summary.json"
    atomic_write_json(path, json.loads(json.dumps(summary, default=float)), indent=2)
    return str(path)


class BreastEnsemble(nn.Module):
    """Mean of several :class:`~busgen_nyu.networks.NYUBreastNet` outputs (breast / image probabilities, saliency
    maps, attention weights): the ensemble of the top-k runs of a random search (Shen et al. used the top 3 of 30)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("BreastEnsemble needs at least one network")
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outs = [m(images, mask) for m in self.members]
        if len(outs) == 1:
            return outs[0]
        merged = {k: torch.stack([o[k].float() for o in outs]).mean(0) for k in ("breast", "image", "saliency", "attention")}
        merged["mask"] = outs[0]["mask"]
        return merged


def load_ensemble(network_def: nn.Module, model_paths: Sequence[str | os.PathLike] | str,
                  device: torch.device | str = "cpu") -> BreastEnsemble:
    """Load one network per checkpoint (copies of ``network_def``; weights read with ``weights_only=True``) into
    an evaluation-mode :class:`BreastEnsemble`. When the checkpoint's run folder holds ``training_summary.json``, its
    ``top_t`` is used (it is not a weight; random-search runs differ in it) and its architecture is checked. A
    missing checkpoint raises one error naming it."""
    import copy

    from busgen_monai.safe_load import load_weights

    paths = [model_paths] if isinstance(model_paths, (str, os.PathLike)) else list(model_paths)
    members = []
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"checkpoint {p} does not exist; train first (configs/train.json) or set "
                                    "'model_path' / 'model_paths' to existing checkpoint files")
        state = load_weights(p, "NYU breast model checkpoint", map_location="cpu")
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        net = copy.deepcopy(unwrap(network_def)).cpu()
        # top_t is not a weight: take it (and check the architecture) from the run's training_summary.json
        summary = Path(p).resolve().parent.parent / "training_summary.json"
        trained = json.loads(summary.read_text()).get("network", {}) if summary.is_file() else {}
        if trained:
            mine = getattr(net, "config", {})
            diff = {k: (trained[k], mine.get(k)) for k in ("backbone", "n_stages", "no_max_pool", "attention_hidden")
                    if k in trained and trained[k] != mine.get(k)}
            if diff:
                raise ValueError(f"checkpoint {p} was trained with {{key: (trained, configured)}} = {diff}; "
                                 "configure the same network to load it")
            if "top_t" in trained:
                net.pool.t = float(trained["top_t"])
                net.config["top_t"] = float(trained["top_t"])
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"checkpoint {p} does not fit the configured network ({getattr(net, 'config', '')}): "
                             f"{str(err).splitlines()[0]}; use the same backbone / n_stages / no_max_pool as in training") from err
        members.append(net)
    return BreastEnsemble(members).to(device).eval()
