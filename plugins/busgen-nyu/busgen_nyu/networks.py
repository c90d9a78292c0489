"""The NYU breast-level model (Shen et al., Nat. Commun. 2021) on a MONAI 2-D ResNet.

Per image: ``monai.networks.nets.ResNet`` (grey input, classification head removed) -> a 1 x 1 convolution and a
sigmoid -> two saliency maps (benign, malignant), 8 x 8 for a 256 x 256 input with ResNet-18. The image-level
score of a class is the mean of the top ``t`` % saliency values of its map (:class:`TopTPooling`). Over the images
of one breast (a variable number, padded and masked) a gated attention module (Ilse et al., ICML 2018;
:class:`GatedAttention`) turns each image's representation (global average of the backbone features) into a
weight; the breast-level score of each class is the attention-weighted sum of the image scores.

MONAI has a gated-attention MIL network (``monai.networks.nets.MILModel``) but it pools transformer-encoded
patch features of a fixed-size bag and has neither saliency maps nor masking; top-t % pooling is not in MONAI.
Both layers are therefore written here (a few lines each, tested against a direct sort-based computation and
the attention identities).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["top_t_pool", "TopTPooling", "GatedAttention", "NYUBreastNet", "build_nyu_net", "BACKBONES"]

#: backbone name -> (MONAI ResNet block, layers per stage, channels per stage)
BACKBONES: dict[str, tuple[str, list[int], list[int]]] = {
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet10": ("basic", [1, 1, 1, 1], [64, 128, 256, 512]),
    "resnet_tiny": ("basic", [1, 1, 1, 1], [8, 16, 32, 64]),
}


def top_t_pool(maps: torch.Tensor, t: float) -> torch.Tensor:
    """Mean of the top ``t`` fraction of values of each map.

    Args:
        maps: (N, C, H, W) saliency maps.
        t: fraction in (0, 1]; ``k = max(1, round(t * H * W))`` values are averaged.

    Returns:
        (N, C) pooled scores.
    """
    if not 0.0 < float(t) <= 1.0:
        raise ValueError(f"top-t pooling: t must be a fraction in (0, 1], got {t}")
    flat = maps.flatten(2)
    k = max(1, int(round(float(t) * flat.shape[-1])))
    return flat.topk(k, dim=-1).values.mean(-1)


class TopTPooling(nn.Module):
    """:func:`top_t_pool` as a module (``t`` as a fraction, e.g. 0.02 for the top 2 %)."""

    def __init__(self, t: float = 0.02) -> None:
        super().__init__()
        if not 0.0 < float(t) <= 1.0:
            raise ValueError(f"TopTPooling: t must be a fraction in (0, 1], got {t}")
        self.t = float(t)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return top_t_pool(maps, self.t)


class GatedAttention(nn.Module):
    """Gated attention pooling (Ilse, Tomczak and Welling, "Attention-based deep multiple instance learning",
    ICML 2018): ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))`` over the unmasked instances of a bag.

    Args:
        in_features: dimension of the instance representations ``h_k``.
        hidden: dimension of ``V`` and ``U``.
    """

    def __init__(self, in_features: int, hidden: int = 128) -> None:
        super().__init__()
        self.attention_v = nn.Linear(in_features, hidden)
        self.attention_u = nn.Linear(in_features, hidden)
        self.attention_w = nn.Linear(hidden, 1)

    def weights(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights.

        Args:
            h: (B, K, D) instance representations (padded bags).
            mask: (B, K) 1 for real instances, 0 for padding (``None``: all real). Every bag needs one real instance.

        Returns:
            (B, K) weights, 0 on padding, summing to 1 over each bag.
        """
        logits = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))).squeeze(-1)
        if mask is not None:
            mask = mask.to(torch.bool)
            if not bool(mask.any(dim=1).all()):
                raise ValueError("GatedAttention: a bag has no unmasked instance (every breast needs an image)")
            logits = logits.masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=1)

    def forward(self, h: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool per-instance ``scores`` (B, K, C) with the weights of ``h`` (B, K, D); returns ``(pooled (B, C),
        weights (B, K))``."""
        a = self.weights(h, mask)
        return torch.einsum("bk,bkc->bc", a, scores), a


class NYUBreastNet(nn.Module):
    """Breast-level classifier with saliency maps, top-t % pooling and gated attention.

    Args:
        backbone: ``resnet18`` (paper), ``resnet10`` or ``resnet_tiny`` (tests), see :data:`BACKBONES`.
        in_channels: image channels (1: grey B-mode).
        num_classes: saliency maps / labels (2: benign, malignant).
        top_t: fraction of saliency values averaged into the image score.
        n_stages: ResNet stages kept (4: the full network, output stride 32; fewer give finer maps).
        no_max_pool: drop the stem max-pool (halves the output stride).
        attention_hidden: hidden size of the gated attention.

    ``forward(images, mask)`` takes ``images`` (B, K, H, W) or (B, K, C, H, W) (K images per breast, padded) and
    ``mask`` (B, K) (1 = real image) and returns a dict:

    * ``breast`` (B, C): breast-level probabilities (attention-weighted image scores);
    * ``image`` (B, K, C): image-level probabilities (top-t % pooled saliency);
    * ``saliency`` (B, K, C, h, w): the saliency maps (sigmoid);
    * ``attention`` (B, K): attention weights (0 on padding, sum 1);
    * ``mask`` (B, K): the mask used.
    """

    def __init__(self, backbone: str = "resnet18", in_channels: int = 1, num_classes: int = 2, top_t: float = 0.02,
                 n_stages: int = 4, no_max_pool: bool = False, attention_hidden: int = 128) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; use one of {sorted(BACKBONES)}")
        if not 1 <= int(n_stages) <= 4:
            raise ValueError(f"n_stages must be 1..4, got {n_stages}")
        block, layers, planes = BACKBONES[backbone]
        self.config = {"backbone": backbone, "in_channels": int(in_channels), "num_classes": int(num_classes),
                       "top_t": float(top_t), "n_stages": int(n_stages), "no_max_pool": bool(no_max_pool),
                       "attention_hidden": int(attention_hidden)}
        resnet = ResNet(block=block, layers=layers, block_inplanes=planes, spatial_dims=2, n_input_channels=in_channels,
                        conv1_t_size=7, conv1_t_stride=2, no_max_pool=no_max_pool, feed_forward=False)
        stem = [resnet.conv1, resnet.bn1, resnet.act] + ([] if no_max_pool else [resnet.maxpool])
        self.features = nn.Sequential(*stem, *[getattr(resnet, f"layer{i + 1}") for i in range(int(n_stages))])
        feat_dim = planes[int(n_stages) - 1]
        self.saliency = nn.Conv2d(feat_dim, num_classes, kernel_size=1)
        self.pool = TopTPooling(top_t)
        self.attention = GatedAttention(feat_dim, attention_hidden)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)

    @property
    def stride(self) -> int:
        """Output stride of the saliency maps relative to the input."""
        return 2 * (1 if self.config["no_max_pool"] else 2) * 2 ** (self.config["n_stages"] - 1)

    def forward_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) -> ``(saliency (N, classes, h, w), image scores (N, classes), representations (N, D))``."""
        f = self.features(x)
        sal = torch.sigmoid(self.saliency(f))
        return sal, self.pool(sal), f.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if images.ndim == 4:
            images = images.unsqueeze(2)
        if images.ndim != 5 or images.shape[2] != self.in_channels:
            raise ValueError(f"NYUBreastNet expects images (B, K, H, W) or (B, K, {self.in_channels}, H, W); "
                             f"got {tuple(images.shape)}")
        b, k = images.shape[:2]
        if mask is None:
            mask = torch.ones(b, k, dtype=torch.bool, device=images.device)
        mask = mask.to(device=images.device, dtype=torch.bool)
        if mask.shape != (b, k):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the images' (B, K) = {(b, k)}")
        flat_mask = mask.reshape(-1)
        # only real images pass the backbone (padding would also skew batch-norm statistics)
        sal_r, scores_r, h_r = self.forward_images(images.reshape(b * k, *images.shape[2:])[flat_mask].float())
        sal = sal_r.new_zeros(b * k, *sal_r.shape[1:])
        scores = scores_r.new_zeros(b * k, scores_r.shape[1])
        h = h_r.new_zeros(b * k, h_r.shape[1])
        sal[flat_mask], scores[flat_mask], h[flat_mask] = sal_r, scores_r, h_r
        sal = sal.reshape(b, k, *sal.shape[1:])
        scores = scores.reshape(b, k, -1)
        h = h.reshape(b, k, -1)
        breast, a = self.attention(h, scores, mask)
        return {"breast": breast.clamp(1e-6, 1 - 1e-6), "image": scores, "saliency": sal, "attention": a, "mask": mask}


def build_nyu_net(backbone: str = "resnet18", in_channels: int = 1, num_classes: int = 2, top_t: float = 0.02,
                  n_stages: int = 4, no_max_pool: bool = False, attention_hidden: int = 128,
                  image_size: Sequence[int] | None = None, **_: Any) -> NYUBreastNet:
    """Build :class:`NYUBreastNet`; warns (through an error) when ``image_size`` gives a saliency map under 2 x 2."""
    net = NYUBreastNet(backbone, in_channels, num_classes, top_t, n_stages, no_max_pool, attention_hidden)
    if image_size is not None:
        side = min(int(s) for s in image_size)
        if math.ceil(side / net.stride) < 2:
            raise ValueError(f"image_size {list(image_size)} gives a saliency map under 2 x 2 with output stride "
                             f"{net.stride}; use larger images, fewer n_stages or no_max_pool")
    return net
