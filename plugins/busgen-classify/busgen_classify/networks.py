"""Classifier backbones from MONAI behind one builder, plus the hooks the evaluation needs.

Backbones (``build_classifier(backbone=...)``):

=============== ============================================================ ==================
name            network                                                      meant for
=============== ============================================================ ==================
``resnet_tiny`` ``monai.networks.nets.ResNet``, basic blocks [1, 1, 1, 1],    CPU tests (0.3 M)
                widths 16-32-64-128
``resnet10``    ``monai.networks.nets.resnet10`` (2-D)                        CPU (4.9 M)
``resnet18``    ``monai.networks.nets.resnet18`` (2-D)                        CPU / GPU (11 M)
``resnet50``    ``monai.networks.nets.resnet50`` (2-D)                        GPU (23 M)
``vit_s16``     :class:`ViTClassifier` (ViT-S/16: 384 wide, 12 layers, 6 heads) GPU (22 M)
``vit_b16``     :class:`ViTClassifier` (ViT-B/16: 768 wide, 12 layers, 12 heads) paper scale (86 M)
=============== ============================================================ ==================

All return logits ``(B, num_classes)`` for an input ``(B, C, H, W)`` and are TorchScript-scriptable,
so ``python -m monai.bundle ckpt_export`` works. ResNets use a stride-2 first convolution (the 2-D
ImageNet layout); MONAI's default stride 1 is meant for 3-D volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet, ViT, resnet10, resnet18, resnet50
from torch import nn

__all__ = ["BACKBONES", "ViTClassifier", "build_classifier", "head_of", "default_cam_layer", "FeatureHook"]

BACKBONES = ("resnet_tiny", "resnet10", "resnet18", "resnet50", "vit_s16", "vit_b16")


class ViTClassifier(ViT):
    """``monai.networks.nets.ViT`` with a classification head whose ``forward`` returns only the logits.

    MONAI's ViT returns ``(logits, hidden_states)``; engines, losses and TorchScript export want a single
    tensor. Same constructor as ``ViT`` (``classification`` is forced on, ``post_activation`` off).

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["classification"] = True
        kwargs.setdefault("post_activation", None)
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.patch_embedding(x)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.classification_head(x[:, 0])


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {size}")
    return size  # type: ignore[return-value]


def build_classifier(
    backbone: str = "resnet18",
    num_classes: int = 2,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (128, 128),
    dropout: float = 0.0,
    patch_size: int = 16,
) -> nn.Module:
    """Build a 2-D classifier.

    Args:
        backbone: one of :data:`BACKBONES`.
        num_classes: output logits.
        in_channels: input channels (3: RGB; grey images are replicated by the loader).
        image_size: (H, W) input size (needed by ViT; ResNets accept any size).
        dropout: dropout rate (ViT: inside the transformer).
        patch_size: ViT patch size.

    Returns:
        ``nn.Module`` mapping ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``.
    """
    size = _pair(image_size)
    common = {"spatial_dims": 2, "n_input_channels": in_channels, "num_classes": num_classes,
              "conv1_t_size": 7, "conv1_t_stride": 2}
    if backbone == "resnet_tiny":
        return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128], **common)
    if backbone == "resnet10":
        return resnet10(**common)
    if backbone == "resnet18":
        return resnet18(**common)
    if backbone == "resnet50":
        return resnet50(**common)
    if backbone in ("vit_s16", "vit_b16"):
        if any(s % patch_size for s in size):
            raise ValueError(f"ViT: image_size {list(size)} must be a multiple of patch_size {patch_size}")
        width, heads = (384, 6) if backbone == "vit_s16" else (768, 12)
        return ViTClassifier(in_channels=in_channels, img_size=size, patch_size=patch_size, hidden_size=width,
                             mlp_dim=4 * width, num_layers=12, num_heads=heads, proj_type="conv",
                             dropout_rate=dropout, spatial_dims=2, num_classes=num_classes)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {list(BACKBONES)}")


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else net


def head_of(net: nn.Module) -> nn.Module:
    """The final linear layer (its input is the penultimate feature vector)."""
    net = _unwrap(net)
    if isinstance(net, ResNet) and net.fc is not None:
        return net.fc
    if isinstance(net, ViT) and hasattr(net, "classification_head"):
        return net.classification_head
    for name in ("fc", "classifier", "head", "classification_head"):
        mod = getattr(net, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise ValueError(f"cannot find the classification head of {type(net).__name__}; "
                     "give the feature layer explicitly")


def default_cam_layer(net: nn.Module) -> str:
    """Name of the layer Grad-CAM should look at: the last convolutional stage (``layer4`` for ResNets).

    ViTs have no spatial feature map in MONAI's implementation, so Grad-CAM is not defined for them here.
    """
    net = _unwrap(net)
    if isinstance(net, ResNet):
        return "layer4"
    raise ValueError(f"Grad-CAM needs a convolutional backbone; {type(net).__name__} has no default CAM layer "
                     "(set 'gradcam_layer' to a convolutional layer name, or 'gradcam_n' to 0)")


class FeatureHook:
    """Capture the input of a module (by default the classifier head: the penultimate features) on every
    forward pass. Use as a context manager or call :meth:`remove`.

    ``features`` is a list of ``(B, D)`` CPU tensors, one per forward pass.
    """

    def __init__(self, net: nn.Module, module: nn.Module | None = None) -> None:
        self.module = module if module is not None else head_of(net)
        self.features: list[torch.Tensor] = []
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.features.append(inputs[0].detach().flatten(1).float().cpu())

    def pop(self) -> torch.Tensor | None:
        """The features of the last forward pass (and forget the rest)."""
        last = self.features[-1] if self.features else None
        self.features.clear()
        return last

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> FeatureHook:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
