"""Grad-CAM saliency maps (``monai.visualize.GradCAM``) and an overlay grid PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn

from busgen_monai.visualize import save_image_grid

from .networks import _unwrap, default_cam_layer

__all__ = ["gradcam_maps", "overlay_cam", "save_gradcam_grid"]


def gradcam_maps(
    network: nn.Module, images: torch.Tensor, class_index: int | None = None, target_layer: str | None = None
) -> torch.Tensor:
    """Grad-CAM maps for a batch.

    Args:
        network: classifier returning logits ``(B, C)``.
        images: ``(B, C_in, H, W)`` input batch (already preprocessed, on the network's device).
        class_index: class whose logit is explained (default: the predicted class of each image).
        target_layer: layer name (default: :func:`~busgen_classify.networks.default_cam_layer`).

    Returns:
        ``(B, 1, H, W)`` maps in [0, 1], same spatial shape as the images.
    """
    net = _unwrap(network)
    layer = target_layer or default_cam_layer(net)
    was_training = net.training
    net.eval()
    try:
        cam = GradCAM(nn_module=net, target_layers=layer)
        with torch.enable_grad():
            maps = cam(x=images, class_idx=class_index)
    finally:
        net.train(was_training)
    return maps.detach()


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a ``(H, W)`` map in [0, 1] (jet colour map) over an ``(H, W, 3)`` uint8 image."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    base = image.astype(np.float32) / 255.0
    return (np.clip((1 - alpha) * base + alpha * heat, 0, 1) * 255).round().astype(np.uint8)


def _to_uint8_hwc(img: torch.Tensor) -> np.ndarray:
    arr = img.detach().float().cpu().numpy()
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo + 1e-8)
    arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return (arr[..., :3] * 255).round().astype(np.uint8)


def save_gradcam_grid(
    network: nn.Module,
    dataset: Sequence[dict],
    path: str | os.PathLike,
    n: int = 16,
    class_index: int | None = None,
    target_layer: str | None = None,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    indices: Sequence[int] | None = None,
) -> tuple[Path, torch.Tensor]:
    """Grad-CAM overlays for ``n`` images of a (preprocessed) dataset as one PNG grid.

    Each tile shows the image with the map of ``class_index`` (default: the predicted class) and a caption
    ``truth / p(positive)``. Images are picked evenly over the dataset unless ``indices`` are given.

    Returns:
        ``(png_path, maps)`` with maps ``(n, 1, H, W)``.
    """
    if len(dataset) == 0:
        raise ValueError("save_gradcam_grid: empty dataset")
    n = min(int(n), len(dataset))
    if indices is None:
        indices = np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()
    items = [dataset[int(i)] for i in indices]
    dev = torch.device(device) if device is not None else next(network.parameters()).device
    x = torch.stack([torch.as_tensor(it["image"]).float() for it in items]).to(dev)
    maps = gradcam_maps(network, x, class_index=class_index, target_layer=target_layer)
    with torch.no_grad():
        was_training = network.training
        network.eval()
        probs = torch.softmax(network(x), dim=1).cpu()
        network.train(was_training)
    pos = probs.shape[1] - 1
    tiles, labels = [], []
    for k, it in enumerate(items):
        tiles.append(overlay_cam(_to_uint8_hwc(x[k]), maps[k, 0].cpu().numpy()))
        lab = int(torch.as_tensor(it.get("label", -1)).reshape(-1)[0]) if torch.as_tensor(it.get("label", -1)).numel() == 1 \
            else int(torch.as_tensor(it["label"]).argmax())
        name = class_names[lab] if class_names is not None and 0 <= lab < len(class_names) else str(lab)
        labels.append(f"{name} / p={probs[k, pos]:.2f}")
    title = "Grad-CAM" + (f" ({class_names[class_index]})" if class_names and class_index is not None else " (predicted class)")
    out = save_image_grid(tiles, path, labels=labels, ncols=min(8, n), title=title)
    return out, maps.cpu()
