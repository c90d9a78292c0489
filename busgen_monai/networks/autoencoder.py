"""The first stage of latent diffusion: :class:`monai.networks.nets.AutoencoderKL` with recorded arguments, and its loss.

:class:`LatentAutoencoderKL` *is a* MONAI ``AutoencoderKL`` (same blocks, same state-dict names, same
``encode_stage_2_inputs`` / ``decode_stage_2_outputs`` used by :class:`monai.inferers.LatentDiffusionInferer`)
that keeps its constructor arguments in ``init_args`` (plain JSON), like
:class:`~busgen_monai.networks.ConditionalDiffusionUNet`, so a checkpoint rebuilds exactly the trained network.
It downsamples by ``2 ** (len(channels) - 1)`` (:attr:`LatentAutoencoderKL.downsample`).

:class:`AutoencoderLoss` is the training objective of ``bundles/busgen_autoencoder``:

    L = w_l1 * |x - x_rec|_1 + w_kl * KL(N(mu, sigma) || N(0, 1)) [+ w_ssim * (1 - SSIM)] [+ w_adv * adversarial]

The perceptual (LPIPS) term of the latent-diffusion papers is left out: MONAI's ``PerceptualLoss`` downloads
pretrained weights, which an offline install cannot. An optional SSIM term (:class:`monai.losses.SSIMLoss`) takes
its place for structure. The optional adversarial term uses MONAI's :class:`~monai.networks.nets.PatchDiscriminator`
and :class:`~monai.losses.PatchAdversarialLoss` (least squares); the loss owns the discriminator and its optimizer
and takes one discriminator step per generator step (training mode only), off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from .conditional_unet import _json_safe

__all__ = ["LatentAutoencoderKL", "AutoencoderLoss", "kl_divergence"]


class LatentAutoencoderKL(AutoencoderKL):
    """:class:`monai.networks.nets.AutoencoderKL` that records ``init_args`` (see the module docstring).

    Args: as :class:`~monai.networks.nets.AutoencoderKL` (``spatial_dims`` 2, ``in_channels = out_channels``:
    1 for grey B-mode).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        num_res_blocks: Sequence[int] | int = (2, 2, 2),
        channels: Sequence[int] = (64, 128, 128),
        attention_levels: Sequence[bool] = (False, False, False),
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        with_encoder_nonlocal_attn: bool = True,
        with_decoder_nonlocal_attn: bool = True,
        use_convtranspose: bool = False,
        include_fc: bool = True,
        use_flash_attention: bool = False,
    ) -> None:
        out_channels = in_channels if out_channels is None else out_channels
        init_args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(channels)
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            num_res_blocks=tuple(num_res_blocks), channels=tuple(channels), attention_levels=tuple(attention_levels),
            latent_channels=latent_channels, norm_num_groups=norm_num_groups, norm_eps=norm_eps,
            with_encoder_nonlocal_attn=with_encoder_nonlocal_attn,
            with_decoder_nonlocal_attn=with_decoder_nonlocal_attn, use_convtranspose=use_convtranspose,
            include_fc=include_fc, use_flash_attention=use_flash_attention,
        )
        self.init_args = _json_safe(init_args)
        self.image_channels = int(in_channels)
        self.downsample = 2 ** (len(channels) - 1)

    def latent_shape(self, image_size: int | Sequence[int]) -> tuple[int, int, int]:
        """``(latent_channels, H / f, W / f)`` for images of ``image_size``."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        bad = [s for s in size if int(s) % self.downsample]
        if bad:
            raise ValueError(f"image size {size} is not a multiple of the autoencoder's downsampling {self.downsample}")
        return (self.latent_channels, *(int(s) // self.downsample for s in size))

    @torch.no_grad()
    def standardise_latents_(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        """Fold a per-channel latent standardisation into the 1x1 convolutions around the latent space, in place.

        Afterwards ``encode`` returns ``(z_mu - mean) / std`` (and ``z_sigma / std``) and ``decode`` undoes it, so
        ``decode(encode(x))`` is unchanged while the latents the diffusion model sees have zero mean and unit variance
        per channel. A first stage trained with the usual tiny KL weight (1e-6) leaves channel means of one to two
        standard deviations; a single ``scale_factor`` (Rombach et al. 2022) cannot centre them, and the denoiser
        then spends capacity on the offsets (wrong offsets show as over- or under-exposed images). The map is exact
        (linear layers), the state-dict keys stay MONAI's, and the scale of a later :func:`latent_scale_factor` is 1.
        """
        c = self.latent_channels
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() != c or std.numel() != c:
            raise ValueError(f"standardise_latents_: need {c} means and stds (one per latent channel), got "
                             f"{mean.numel()} and {std.numel()}")
        if not bool((std > 0).all()) or not bool(torch.isfinite(mean).all()):
            raise ValueError(f"standardise_latents_: stds must be > 0 and means finite, got {std.tolist()} / "
                             f"{mean.tolist()}")
        mu_conv = self.quant_conv_mu.conv
        w = mu_conv.weight
        mean, std = mean.to(w), std.to(w)
        view = (-1,) + (1,) * (w.dim() - 1)
        mu_conv.weight.div_(std.view(view))
        mu_conv.bias.sub_(mean).div_(std)
        self.quant_conv_log_sigma.conv.bias.sub_(2 * torch.log(std))  # sigma / std
        post = self.post_quant_conv.conv  # z = z' * std + mean
        post.bias.add_((post.weight.flatten(1) @ mean))
        post.weight.mul_(std.view((1, -1) + (1,) * (w.dim() - 2)))


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch (MONAI tutorials' form)."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-8) - 1)
    return kl.flatten(1).sum(1).mean()


class AutoencoderLoss(nn.Module):
    """L1 reconstruction + KL (+ SSIM) (+ adversarial) loss for :class:`LatentAutoencoderKL` in a MONAI
    ``SupervisedTrainer``: called as ``loss(prediction, target)`` where ``prediction`` is the network's
    ``(reconstruction, z_mu, z_sigma)`` and ``target`` the input images (the bundle copies ``image`` to ``label``).

    Args:
        l1_weight, kl_weight: weights of the L1 and KL terms (MONAI's tutorials: 1 and 1e-6).
        ssim_weight: weight of ``1 - SSIM`` (0 disables; images in [-1, 1] are mapped to [0, 1] for it).
        adversarial_weight: weight of the generator's adversarial term (0 disables the discriminator).
        discriminator_channels, discriminator_layers: :class:`~monai.networks.nets.PatchDiscriminator` size.
        discriminator_lr: Adam learning rate of the discriminator.
        adversarial_start: generator steps before the adversarial terms switch on (warm-up on L1 + KL).
        spatial_dims, in_channels: of the images.

    :attr:`last_terms` holds the terms of the last call (for logging).
    """

    def __init__(self, l1_weight: float = 1.0, kl_weight: float = 1e-6, ssim_weight: float = 0.0,
                 adversarial_weight: float = 0.0, discriminator_channels: int = 32, discriminator_layers: int = 3,
                 discriminator_lr: float = 5e-4, adversarial_start: int = 0, spatial_dims: int = 2,
                 in_channels: int = 1) -> None:
        super().__init__()
        for name, w in {"l1_weight": l1_weight, "kl_weight": kl_weight, "ssim_weight": ssim_weight,
                        "adversarial_weight": adversarial_weight}.items():
            if float(w) < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.l1_weight, self.kl_weight = float(l1_weight), float(kl_weight)
        self.ssim_weight, self.adversarial_weight = float(ssim_weight), float(adversarial_weight)
        self.adversarial_start = int(adversarial_start)
        self.steps = 0
        self.ssim = None
        if self.ssim_weight > 0:
            from monai.losses import SSIMLoss

            self.ssim = SSIMLoss(spatial_dims=spatial_dims, data_range=1.0, win_size=7)
        self.discriminator = None
        if self.adversarial_weight > 0:
            from monai.losses import PatchAdversarialLoss
            from monai.networks.nets import PatchDiscriminator

            self.discriminator = PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=discriminator_layers,
                                                    channels=discriminator_channels, in_channels=in_channels,
                                                    out_channels=1)
            self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=float(discriminator_lr))
        self.last_terms: dict[str, float] = {}

    def forward(self, prediction, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(prediction, (tuple, list)) or len(prediction) != 3:
            raise TypeError("AutoencoderLoss expects the autoencoder's (reconstruction, z_mu, z_sigma)")
        recon, z_mu, z_sigma = prediction
        target = torch.as_tensor(target).to(recon)
        l1 = (recon - target).abs().mean()
        kl = kl_divergence(z_mu.float(), z_sigma.float())
        loss = self.l1_weight * l1 + self.kl_weight * kl
        terms = {"l1": float(l1.detach()), "kl": float(kl.detach())}
        if self.ssim is not None:
            s = self.ssim((recon.float().clamp(-1, 1) + 1) / 2, (target.float() + 1) / 2)
            loss = loss + self.ssim_weight * s
            terms["ssim_loss"] = float(s.detach())
        self.steps += int(self.training)
        if self.discriminator is not None and self.steps > self.adversarial_start:
            self.discriminator.to(recon.device)
            if self.training:  # one discriminator step on the detached reconstruction, before the generator term
                self.d_optimizer.zero_grad(set_to_none=True)
                d_fake = self.adv_loss(self.discriminator(recon.detach().float())[-1], target_is_real=False,
                                       for_discriminator=True)
                d_real = self.adv_loss(self.discriminator(target.float())[-1], target_is_real=True,
                                       for_discriminator=True)
                d_loss = 0.5 * (d_fake + d_real) * self.adversarial_weight
                d_loss.backward()
                self.d_optimizer.step()
                self.d_optimizer.zero_grad(set_to_none=True)
                terms["d_loss"] = float(d_loss.detach())
            g_adv = self.adv_loss(self.discriminator(recon.float())[-1], target_is_real=True, for_discriminator=False)
            loss = loss + self.adversarial_weight * g_adv
            terms["g_adv"] = float(g_adv.detach())
        self.last_terms = terms
        return loss
