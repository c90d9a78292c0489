"""A conditional diffusion transformer (DiT, Peebles & Xie, ICCV 2023) for latent diffusion, CoLDiT style.

CoLDiT (Research 2024, DOI 10.34133/research.0532) generates breast ultrasound images with a latent diffusion model
whose denoiser is a DiT conditioned on BI-RADS; it has no public code and MONAI has no DiT (only an open request in
MONAI GenerativeModels). :class:`ConditionalDiT` is written here from MONAI blocks:

- **patchify**: :class:`monai.networks.blocks.PatchEmbeddingBlock` (convolutional patch projection, fixed 2-D
  sin-cos positional embedding);
- **timestep**: the sinusoidal embedding of MONAI's diffusion U-Net
  (:func:`monai.networks.nets.diffusion_model_unet.get_timestep_embedding`) followed by an MLP;
- **conditions**: one learned table per condition (BI-RADS and, when configured, pathology and device) whose row 0 is
  the *null class* used for classifier-free guidance (a learned vector, as DiT's label embedder), optionally the
  Fourier box embedding of :class:`~busgen_monai.networks.FourierBoxEmbedding`; the embeddings are summed with the
  timestep embedding into one conditioning vector ``c``;
- **blocks**: :class:`DiTBlock` = pre-norm :class:`monai.networks.blocks.SABlock` self-attention and
  :class:`monai.networks.blocks.MLPBlock`, each modulated by ``c`` with *adaLN-Zero*: a zero-initialised linear maps
  ``c`` to shift, scale and gate, so every block is exactly the identity at initialisation;
- **unpatchify**: a final adaLN-modulated layer (zero-initialised) and a rearrangement back to
  ``(B, latent_channels, H, W)``.

Its forward signature is :class:`~busgen_monai.networks.ConditionalDiffusionUNet`'s: ``forward(x, timesteps,
context=None, class_labels=None)`` with the packed condition tensor of :mod:`busgen_monai.data.conditions`, so
:class:`monai.inferers.DiffusionInferer` / :class:`~busgen_monai.inferers.GuidedDiffusionInferer` (CFG by the
all ``-1`` null condition), sampling guards and :class:`monai.inferers.LatentDiffusionInferer` drive it unchanged.
``init_args`` holds the constructor arguments as plain JSON (saved with every checkpoint).

Sizes (Peebles & Xie, Table 1): DiT-S (hidden 384, depth 12, 6 heads), DiT-B (768, 12, 12); ``/2`` is the patch
size. :data:`DIT_SIZES` lists them and the tiny CPU sizes of this project.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks import MLPBlock, PatchEmbeddingBlock, SABlock
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from ..data.conditions import Conditions, resolve_conditions
from .conditional_unet import FourierBoxEmbedding, _json_safe

__all__ = ["DIT_SIZES", "DiTBlock", "DiTFinalLayer", "ConditionalDiT"]

#: hidden size, depth, heads of the DiT sizes used by the presets (S and B from Peebles & Xie; tiny/cpu for CPUs).
DIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "depth": 2, "num_heads": 4},
    "cpu": {"hidden_size": 192, "depth": 6, "num_heads": 6},
    "S": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "B": {"hidden_size": 768, "depth": 12, "num_heads": 12},
}

_CONDITION_NAMES = ("pathology", "device", "birads")
_BOX_MODES = ("none", "fourier")


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block: ``x + g1 * SA(mod(LN(x))) ; x + g2 * MLP(mod(LN(x)))`` with shifts,
    scales and gates ``g`` computed from the conditioning vector by a zero-initialised linear layer."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 use_flash_attention: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SABlock(hidden_size, num_heads, dropout_rate=dropout, qkv_bias=True,
                            use_flash_attention=use_flash_attention)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = MLPBlock(hidden_size, int(hidden_size * mlp_ratio), dropout_rate=dropout, act=("GELU", {"approximate": "tanh"}))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a[:, None] * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class DiTFinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to ``patch_size**2 * out_channels`` (zero init)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        for layer in (self.linear, self.adaLN_modulation[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class ConditionalDiT(nn.Module):
    """Class-conditional DiT denoiser (epsilon prediction) for 2-D latents, with BUSGen's condition contract.

    Args:
        spatial_dims: 2 (only 2-D is supported).
        in_channels: latent channels (also the output channels: epsilon).
        input_size: latent height = width (the positional embedding is built for it).
        patch_size: patch edge (``/2`` in DiT names).
        hidden_size, depth, num_heads: transformer width, number of blocks, attention heads.
        mlp_ratio: MLP width / hidden size.
        dropout: dropout in attention and MLP.
        num_pathology_embeds, num_device_embeds, num_birads_embeds: table sizes, null row 0 included
            (:meth:`ConditionCodec.network_kwargs`).
        conditions: which of ``pathology``, ``device``, ``birads`` are embedded (CoLDiT: ``birads``).
        box_condition: ``none`` (default, CoLDiT) or ``fourier`` (mean Fourier embedding of the valid boxes).
        num_box_freqs: octaves of the Fourier box features.
        use_flash_attention: torch scaled-dot-product attention in :class:`~monai.networks.blocks.SABlock`.

    Shapes: ``x`` ``(B, in_channels, input_size, input_size)``, ``timesteps`` ``(B,)`` or ``(1,)``, conditions
    ``(B, 1, K)`` packed (or a dict, a ``(B,)`` pathology-id tensor, or ``None`` = unconditional); returns ``x``'s
    shape.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        input_size: int = 16,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_pathology_embeds: int = 3,
        num_device_embeds: int = 20,
        num_birads_embeds: int = 11,
        conditions: Sequence[str] = ("birads",),
        box_condition: str = "none",
        num_box_freqs: int = 8,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        init_args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if spatial_dims != 2:
            raise ValueError(f"ConditionalDiT supports spatial_dims=2 only, got {spatial_dims}")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        unknown = set(conditions) - set(_CONDITION_NAMES)
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {list(_CONDITION_NAMES)}")
        if box_condition not in _BOX_MODES:
            raise ValueError(f"box_condition must be one of {_BOX_MODES} for ConditionalDiT, got {box_condition!r}")
        self.init_args = _json_safe(init_args)
        self.spatial_dims = 2
        self.in_channels = self.out_channels = self.image_channels = int(in_channels)
        self.input_size = int(input_size)
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)
        self.conditions = tuple(c for c in _CONDITION_NAMES if c in conditions)
        self.box_condition = box_condition
        self.patch_embed = PatchEmbeddingBlock(
            in_channels=self.in_channels, img_size=self.input_size, patch_size=self.patch_size,
            hidden_size=self.hidden_size, num_heads=num_heads, proj_type="conv", pos_embed_type="sincos",
            dropout_rate=0.0, spatial_dims=2,
        )
        self.time_embed = nn.Sequential(nn.Linear(self.hidden_size, self.hidden_size), nn.SiLU(),
                                        nn.Linear(self.hidden_size, self.hidden_size))
        sizes = {"pathology": num_pathology_embeds, "device": num_device_embeds, "birads": num_birads_embeds}
        # row 0 = the learned null class (no padding_idx: DiT learns its null embedding)
        self.class_embed = nn.ModuleDict({c: nn.Embedding(int(sizes[c]), self.hidden_size) for c in self.conditions})
        for table in self.class_embed.values():
            nn.init.normal_(table.weight, std=0.02)
        self.box_embed = FourierBoxEmbedding(self.hidden_size, num_box_freqs) if box_condition == "fourier" else None
        self.blocks = nn.ModuleList([
            DiTBlock(self.hidden_size, num_heads, mlp_ratio, dropout, use_flash_attention) for _ in range(depth)
        ])
        self.final_layer = DiTFinalLayer(self.hidden_size, self.patch_size, self.out_channels)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)

    # ------------------------------------------------------------------ conditions
    def _conditions(self, context, class_labels, batch: int, device: torch.device) -> Conditions:
        return resolve_conditions(context, class_labels, batch, device)

    def condition_vector(self, cond: Conditions) -> torch.Tensor:
        """Sum of the condition embeddings ``(B, hidden_size)`` (null rows for null conditions)."""
        out = None
        for name in self.conditions:
            ids = getattr(cond, name)
            table = self.class_embed[name]
            if ids.numel() and int(ids.max()) >= table.num_embeddings:
                raise IndexError(
                    f"{name} id {int(ids.max())} is outside the network's {name} table ({table.num_embeddings} rows);"
                    f" build it with num_{name}_embeds >= {int(ids.max()) + 1} (ConditionCodec.network_kwargs())")
            emb = table(ids.clamp(min=0))
            out = emb if out is None else out + emb
        if self.box_embed is not None:
            tok = self.box_embed(cond.boxes.clamp(0, 1)) * cond.box_valid[..., None].to(torch.float32)
            count = cond.box_valid.sum(1, keepdim=True).clamp(min=1).to(tok.dtype)
            box = tok.sum(1) / count
            out = box if out is None else out + box
        return out

    # ------------------------------------------------------------------ forward
    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, p*p*C)`` -> ``(B, C, H, W)``."""
        b, n, _ = tokens.shape
        g = int(math.isqrt(n))
        p, c = self.patch_size, self.out_channels
        x = tokens.reshape(b, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, g * p, g * p)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | Mapping | None = None,
        class_labels: torch.Tensor | Mapping | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: noisy latents ``(B, in_channels, input_size, input_size)``.
            timesteps: ``(B,)`` or ``(1,)`` diffusion steps.
            context: packed conditions ``(B, 1, K)`` (or a dict / ``None``), as for ConditionalDiffusionUNet.
            class_labels: alternative to ``context``; a ``(B,)`` long tensor means pathology ids only.
        """
        b = x.shape[0]
        if tuple(x.shape[2:]) != (self.input_size, self.input_size):
            raise ValueError(f"ConditionalDiT was built for {self.input_size}x{self.input_size} latents, got "
                             f"{tuple(x.shape[2:])} (input_size = image_size / autoencoder downsampling)")
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        c = self.time_embed(get_timestep_embedding(t, self.hidden_size).to(x.dtype))
        if self.conditions or self.box_embed is not None:
            c = c + self.condition_vector(self._conditions(context, class_labels, b, x.device)).to(c.dtype)
        h = self.patch_embed(x)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))
