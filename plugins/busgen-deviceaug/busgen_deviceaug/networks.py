"""CycleGAN generator built from MONAI blocks.

The generator follows the ResNet-style design of Johnson et al. (2016) used by CycleGAN (Zhu et al., 2017)::

    c7s1-k  ->  d2k -> d4k ... (num_downsample stride-2 convs)  ->  R(k * 2**n) x num_res_blocks
            ->  u...  -> u2k -> uk (num_downsample upsampling steps)  ->  c7s1-out  ->  tanh

where ``c7s1-k`` is a 7x7 stride-1 convolution with ``k`` filters, instance norm and ReLU, ``d`` a 3x3
stride-2 convolution, ``R`` a residual block of two 3x3 convolutions and ``u`` a stride-1/2 (transposed)
convolution. Convolutions are :class:`monai.networks.blocks.Convolution`; padding is reflection padding
(as in CycleGAN) from :data:`monai.networks.layers.factories.Pad`-style torch layers, so borders are not
darkened. The discriminator is MONAI's :class:`monai.networks.nets.PatchDiscriminator` (70 x 70 PatchGAN
with ``num_layers_d=3``), used as is.

Shapes: input ``(B, in_channels, H, W)`` in [-1, 1], output ``(B, out_channels, H, W)`` in [-1, 1]; H and W
must be divisible by ``2 ** num_downsample``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.blocks import Convolution
from monai.networks.utils import normal_init
from torch import nn

__all__ = ["ResidualBlock", "CycleGANGenerator", "build_generator"]


def _reflect_pad(spatial_dims: int, pad: int) -> nn.Module:
    if pad == 0:
        return nn.Identity()
    return {1: nn.ReflectionPad1d, 2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d}[spatial_dims](pad)


class ResidualBlock(nn.Module):
    """``x + conv(act(norm(conv(x))))`` with two 3x3 MONAI convolutions and reflection padding.

    Args:
        spatial_dims: 2 or 3.
        channels: feature channels (unchanged by the block).
        norm: MONAI norm name/tuple (default instance norm, as in CycleGAN).
        act: MONAI activation name/tuple for the first convolution.
        dropout: dropout probability between the two convolutions.
    """

    def __init__(self, spatial_dims: int, channels: int, norm: Any = "INSTANCE", act: Any = "RELU",
                 dropout: float | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _reflect_pad(spatial_dims, 1),
            Convolution(spatial_dims, channels, channels, kernel_size=3, padding=0, norm=norm, act=act,
                        dropout=dropout),
            _reflect_pad(spatial_dims, 1),
            Convolution(spatial_dims, channels, channels, kernel_size=3, padding=0, norm=norm, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CycleGANGenerator(nn.Module):
    """ResNet-style image-to-image generator (CycleGAN).

    Args:
        spatial_dims: number of spatial dimensions (2 for ultrasound frames).
        in_channels: input channels (3: busgen works in RGB).
        out_channels: output channels.
        channels: filters of the first layer ``k`` (64 in CycleGAN; 8-16 is enough for CPU tests).
        num_downsample: stride-2 down/up-sampling steps (2 in CycleGAN).
        num_res_blocks: residual blocks at the bottleneck (9 for 256 px, 6 for 128 px in CycleGAN).
        norm: MONAI norm (default ``"INSTANCE"``).
        act: MONAI activation (default ``"RELU"``).
        dropout: dropout in the residual blocks (CycleGAN: none).
        upsample: ``"transpose"`` (transposed convolutions, as CycleGAN) or ``"resize"`` (nearest upsampling
            followed by a 3x3 convolution; avoids checkerboard artefacts).
        init_std: std of the normal initialisation of convolution weights (``monai.networks.utils.normal_init``).

    Example:
        >>> g = CycleGANGenerator(channels=8, num_res_blocks=2)
        >>> g(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 3,
        channels: int = 64,
        num_downsample: int = 2,
        num_res_blocks: int = 9,
        norm: Any = "INSTANCE",
        act: Any = "RELU",
        dropout: float | None = None,
        upsample: str = "transpose",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if upsample not in ("transpose", "resize"):
            raise ValueError(f"upsample must be 'transpose' or 'resize', got {upsample!r}")
        if channels < 1 or num_downsample < 0 or num_res_blocks < 0:
            raise ValueError("channels must be >= 1, num_downsample and num_res_blocks >= 0")
        self._config: dict[str, Any] = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels,
            "channels": channels, "num_downsample": num_downsample, "num_res_blocks": num_res_blocks,
            "norm": norm, "act": act, "dropout": dropout, "upsample": upsample, "init_std": init_std,
        }
        self.spatial_dims = spatial_dims
        self.num_downsample = num_downsample
        layers: list[nn.Module] = [
            _reflect_pad(spatial_dims, 3),
            Convolution(spatial_dims, in_channels, channels, kernel_size=7, padding=0, norm=norm, act=act),
        ]
        ch = channels
        for _ in range(num_downsample):
            layers.append(Convolution(spatial_dims, ch, ch * 2, strides=2, kernel_size=3, padding=1, norm=norm, act=act))
            ch *= 2
        layers += [ResidualBlock(spatial_dims, ch, norm=norm, act=act, dropout=dropout) for _ in range(num_res_blocks)]
        for _ in range(num_downsample):
            if upsample == "transpose":
                layers.append(Convolution(spatial_dims, ch, ch // 2, strides=2, kernel_size=3, padding=1,
                                          output_padding=1, is_transposed=True, norm=norm, act=act))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           Convolution(spatial_dims, ch, ch // 2, kernel_size=3, padding=1, norm=norm, act=act)]
            ch //= 2
        layers += [
            _reflect_pad(spatial_dims, 3),
            Convolution(spatial_dims, ch, out_channels, kernel_size=7, padding=0, conv_only=True),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)
        self.apply(lambda m: normal_init(m, std=init_std))

    #: TorchScript (``torch.jit.script``, MONAI's ``ckpt_export``) compiles the network, not this Python-only property
    __jit_unused_properties__ = ["config"]

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable), so a saved generator can be rebuilt from a bank."""
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` in [-1, 1] -> ``(B, out_channels, H, W)`` in [-1, 1]."""
        m = 2 ** self.num_downsample
        for s in x.shape[2:]:  # written so that TorchScript compiles it too
            if s % m != 0:
                raise ValueError("CycleGANGenerator: spatial size " + str(s) + " must be divisible by " + str(m)
                                 + " (2 ** num_downsample); resize the image first")
        return self.model(x)


def build_generator(network: Mapping[str, Any]) -> nn.Module:
    """Rebuild a generator from ``{"_target_": dotted.path, **kwargs}`` (the form stored in ``bank.json``)."""
    from busgen_monai.plugins import locate

    cfg = dict(network)
    target = cfg.pop("_target_", "busgen_deviceaug.networks.CycleGANGenerator")
    return locate(target)(**cfg)
