"""Feature space of the privacy audit: fixed random convolutions + raw pixels (offline, no pretrained weights).

BUSGen measured cosine similarity in the feature space of a network trained on breast ultrasound. No such network
ships offline with this project, so the audit's default extractor, :class:`RandomConvPixelFeatures`, combines two
deterministic, training-free descriptors of a greyscale image (resized, then standardised to zero mean and unit
standard deviation per image, so brightness/contrast changes do not hide a copy):

- **pixel part**: the standardised image at ``pixel_size`` x ``pixel_size`` (area resampling), flattened;
- **random-convolution part**: a seeded, frozen stack of MONAI ``Convolution`` blocks (3x3, stride 2, LeakyReLU)
  whose last feature map is average-pooled to ``pool`` x ``pool`` cells and flattened. Random convolutional
  features are a classical training-free texture/structure descriptor; pooling gives some tolerance to small
  shifts that raw pixels lack.

The audit centres every part on the *training* set's mean feature, L2-normalises each part and weights them
(``parts`` attribute: name, width, weight), so the reported cosine is ``sum_k w_k cos_k`` (default 0.5 pixel + 0.5
random conv).

Limits (read before comparing numbers with the paper): the features are not semantic and not trained on
ultrasound; cosine values are *not* comparable with BUSGen's (0.896-0.939); they detect near-copies (same image up
to noise, small shifts, intensity changes) well, but not a copy that was flipped, strongly cropped or re-styled, and
two different images with the same layout (e.g. the same device's field of view) score higher than a semantic
metric would. Use the training set's own leave-one-out nearest-neighbour distribution (reported by the audit) as the
reference for thresholds. Any module mapping ``(B, 1, H, W)`` images in ``[0, 1]`` to ``(B, D)`` features can be
passed to the audit instead (e.g. the penultimate layer of a project-trained classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["RandomConvPixelFeatures", "standardise"]


def standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image zero mean / unit standard deviation over ``(C, H, W)``."""
    flat = x.flatten(1)
    mean = flat.mean(1).view(-1, *([1] * (x.ndim - 1)))
    std = flat.std(1).view(-1, *([1] * (x.ndim - 1)))
    return (x - mean) / (std + eps)


class RandomConvPixelFeatures(nn.Module):
    """Training-free image features: standardised pixels + frozen random convolutions (see the module docstring).

    Args:
        input_size: images are resized to ``input_size`` x ``input_size`` before the convolutions.
        pixel_size: side of the pixel part.
        channels: widths of the random convolution stages (each halves the resolution).
        pool: side of the pooled grid of the last feature map.
        pixel_weight: weight of the pixel part (the convolution part gets ``1 - pixel_weight``).
        seed: seed of the random weights (part of the audit's identity: keep it fixed to compare audits).

    Shapes: ``(B, 1, H, W)`` (or ``(B, 3, H, W)``, averaged to grey) in ``[0, 1]`` -> ``(B, D)`` with
    ``D = pixel_size**2 + channels[-1] * pool**2``.
    """

    def __init__(self, input_size: int = 64, pixel_size: int = 32, channels: Sequence[int] = (32, 64, 128),
                 pool: int = 2, pixel_weight: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        if not 0.0 <= pixel_weight <= 1.0:
            raise ValueError(f"pixel_weight must be in [0, 1], got {pixel_weight}")
        self.input_size = int(input_size)
        self.pixel_size = int(pixel_size)
        self.pool = int(pool)
        self.seed = int(seed)
        layers = []
        cin = 1
        for cout in channels:
            layers.append(Convolution(spatial_dims=2, in_channels=cin, out_channels=int(cout), strides=2,
                                      kernel_size=3, act=("leakyrelu", {"negative_slope": 0.2}), norm=None,
                                      bias=True))
            cin = int(cout)
        self.convs = nn.Sequential(*layers)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for m in self.convs.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    m.bias.zero_()
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        conv_dim = cin * self.pool * self.pool
        self.parts = [("pixel", self.pixel_size ** 2, float(pixel_weight)),
                      ("random_conv", conv_dim, 1.0 - float(pixel_weight))]
        self.out_dim = sum(p[1] for p in self.parts)

    def describe(self) -> dict:
        return {"name": "RandomConvPixelFeatures", "input_size": self.input_size, "pixel_size": self.pixel_size,
                "pool": self.pool, "seed": self.seed, "parts": [list(p) for p in self.parts],
                "channels": [m.conv.out_channels for m in self.convs]}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        f = nn.functional
        big = standardise(f.interpolate(x, size=(self.input_size, self.input_size), mode="area")
                          if x.shape[-2:] != (self.input_size, self.input_size) else x)
        small = standardise(f.interpolate(x, size=(self.pixel_size, self.pixel_size), mode="area")
                            if x.shape[-2:] != (self.pixel_size, self.pixel_size) else x)
        conv = f.adaptive_avg_pool2d(self.convs(big), self.pool).flatten(1)
        return torch.cat([small.flatten(1), conv], dim=1)
