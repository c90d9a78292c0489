"""BUSGen's conditional pixel-space diffusion U-Net on top of :class:`monai.networks.nets.DiffusionModelUNet`.

:class:`ConditionalDiffusionUNet` *is a* ``DiffusionModelUNet`` (same blocks, same state-dict names, same
``forward(x, timesteps, context=None, class_labels=None, ...)``) with three additions:

1. **Condition embedding** (:class:`ConditionEmbedding`, stored as ``condition_embedding``): pathology, device and
   BI-RADS each have their own table whose row 0 is the null value (``padding_idx=0``: a fixed zero vector, as in
   BUSGen), optionally a Fourier embedding of the lesion boxes pooled over the boxes (zero vector when there is no
   box); the pieces are concatenated and an MLP maps them to the time-embedding width.
2. **Injection** of that embedding next to the time embedding. ``condition_injection="project"`` (default, BUSGen):
   every residual block gets its *own* projection of the condition embedding, implemented by feeding the blocks
   ``[t_emb, c_emb]`` and widening each block's ``time_emb_proj`` to ``2 * time_embed_dim`` inputs
   (``W [silu(t); silu(c)] = W_t silu(t) + W_c silu(c)``, exactly BUSGen's ``temb_proj + cond_proj``).
   ``"add"`` is MONAI's class-embedding path: ``emb = t_emb + c_emb`` shared by all blocks.
   With ``cross_attention=True`` the conditions are also given as tokens (one per condition and one per box) to
   MONAI's cross-attention transformer blocks at the attention levels.
3. **Box mask channel** (``box_condition`` ``"mask"`` or ``"both"``, BUSGen's released code): the network renders
   the boxes of the condition as a binary mask and concatenates it to the image, so the wrapped U-Net has
   ``in_channels = image_channels + 1``. ``"fourier"`` / ``"both"`` add the paper's Fourier box embedding.

**How conditions are passed.** One packed float tensor ``(B, 1, K)`` (see :mod:`busgen_monai.data.conditions`)
given as ``context`` (what :class:`monai.inferers.DiffusionInferer` passes in its default ``"crossattn"`` mode, both
for the training loss and for ``sample(conditioning=..., cfg=..., cfg_fill_value=-1)``) or as ``class_labels``.
``class_labels`` may also be a ``(B,)`` integer tensor of pathology ids (other conditions null) and either argument
may be a dict ``{"pathology": (B,), "device": (B,), "birads": (B,), "boxes": (B, M, 4)}``. ``None`` means fully
unconditional. ``x`` has ``image_channels`` channels; a 4-channel ``x`` (mask already concatenated) is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock, get_timestep_embedding
from torch import nn

from ..data.conditions import Conditions, render_box_mask, resolve_conditions

__all__ = [
    "BOX_CONDITION_MODES",
    "CONDITION_INJECTION_MODES",
    "FourierBoxEmbedding",
    "ConditionEmbedding",
    "ConditionalDiffusionUNet",
    "count_parameters",
]

BOX_CONDITION_MODES = ("mask", "fourier", "both", "none")
CONDITION_INJECTION_MODES = ("project", "add")
_INIT_ARG_NAMES = (
    "spatial_dims", "image_channels", "channels", "num_res_blocks", "attention_levels", "norm_num_groups", "norm_eps",
    "resblock_updown", "num_head_channels", "transformer_num_layers", "upcast_attention", "include_fc",
    "use_combined_linear", "use_flash_attention", "dropout", "num_pathology_embeds", "num_device_embeds",
    "num_birads_embeds", "conditions", "box_condition", "num_box_freqs", "condition_embed_dim", "condition_injection",
    "cross_attention",
)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class FourierBoxEmbedding(nn.Module):
    """Fourier features of box coordinates followed by an MLP (the paper's box encoding).

    Each coordinate ``v`` of ``x1, y1, x2, y2`` becomes ``sin(2^k pi v), cos(2^k pi v)`` for ``k = 0..F-1``
    (``8 F`` features per box), then ``Linear -> SiLU -> Linear`` to ``embed_dim``.

    Args:
        embed_dim: output width.
        num_freqs: ``F``, the number of octaves.
    """

    def __init__(self, embed_dim: int, num_freqs: int = 8) -> None:
        super().__init__()
        self.num_freqs = int(num_freqs)
        self.register_buffer("freqs", (2.0 ** torch.arange(self.num_freqs)) * math.pi, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(8 * self.num_freqs, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, M, 4)`` normalised boxes -> ``(B, M, embed_dim)``."""
        ang = boxes.to(self.freqs.dtype)[..., None] * self.freqs  # (B, M, 4, F)
        feats = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)  # (B, M, 8F)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class ConditionEmbedding(nn.Module):
    """Embed unpacked :class:`~busgen_monai.data.conditions.Conditions` into one vector (and tokens).

    Args:
        out_dim: width of the output vector (the U-Net's time-embedding width).
        embed_dim: width of each condition's embedding (and of the cross-attention tokens).
        num_pathology_embeds, num_device_embeds, num_birads_embeds: table sizes (row 0 = null).
        conditions: which of ``pathology``, ``device``, ``birads`` are embedded.
        box_fourier: embed the boxes with :class:`FourierBoxEmbedding` (mean over the valid boxes; zeros if none).
        num_box_freqs: octaves of the Fourier features.
    """

    def __init__(
        self,
        out_dim: int,
        embed_dim: int,
        num_pathology_embeds: int = 3,
        num_device_embeds: int = 20,
        num_birads_embeds: int = 11,
        conditions: Sequence[str] = ("pathology", "device"),
        box_fourier: bool = False,
        num_box_freqs: int = 8,
    ) -> None:
        super().__init__()
        unknown = set(conditions) - {"pathology", "device", "birads"}
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; choose from pathology, device, birads")
        self.conditions = tuple(c for c in ("pathology", "device", "birads") if c in conditions)
        sizes = {"pathology": num_pathology_embeds, "device": num_device_embeds, "birads": num_birads_embeds}
        self.tables = nn.ModuleDict(
            {c: nn.Embedding(int(sizes[c]), embed_dim, padding_idx=0) for c in self.conditions}
        )
        self.box_embedding = FourierBoxEmbedding(embed_dim, num_box_freqs) if box_fourier else None
        n_parts = len(self.conditions) + int(box_fourier)
        if n_parts == 0:
            raise ValueError("ConditionEmbedding needs at least one condition")
        self.embed_dim = embed_dim
        self.mlp = nn.Sequential(nn.Linear(n_parts * embed_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def _ids(self, cond: Conditions, name: str) -> torch.Tensor:
        ids = getattr(cond, name)
        n = self.tables[name].num_embeddings
        if ids.numel() and int(ids.max()) >= n:
            raise IndexError(
                f"{name} id {int(ids.max())} is outside the network's {name} table ({n} rows, ids 0..{n - 1}); "
                f"build the network with num_{name}_embeds >= {int(ids.max()) + 1} (ConditionCodec.network_kwargs())"
            )
        return ids

    def parts(self, cond: Conditions) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-condition vectors ``(B, embed_dim)`` and per-box tokens ``(B, M, embed_dim)`` (zeros for empty slots)."""
        vecs = [self.tables[c](self._ids(cond, c)) for c in self.conditions]
        box_tokens = None
        if self.box_embedding is not None:
            box_tokens = self.box_embedding(cond.boxes.clamp(0, 1))
            box_tokens = box_tokens * cond.box_valid[..., None].to(box_tokens.dtype)
        return vecs, box_tokens

    def forward(self, cond: Conditions) -> torch.Tensor:
        vecs, box_tokens = self.parts(cond)
        if box_tokens is not None:
            count = cond.box_valid.sum(1, keepdim=True).clamp(min=1).to(box_tokens.dtype)
            vecs.append(box_tokens.sum(1) / count)
        return self.mlp(torch.cat(vecs, dim=-1))

    def tokens(self, cond: Conditions) -> torch.Tensor:
        """Cross-attention context ``(B, n_conditions + M, embed_dim)``: one token per condition and per box slot."""
        vecs, box_tokens = self.parts(cond)
        toks = [v[:, None] for v in vecs]
        if box_tokens is not None:
            toks.append(box_tokens)
        return torch.cat(toks, dim=1)


class _InputDropout:
    """Forward pre-hook applying dropout to a module's input (BUSGen's dropout before the second conv of a residual
    block) without changing state-dict names."""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (nn.functional.dropout(args[0], self.p, module.training), *args[1:])


def _json_safe(value):
    """Constructor arguments as plain JSON types (tuples -> lists), so they can travel inside a checkpoint that
    loads with ``torch.load(weights_only=True)`` and inside a bundle's JSON."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"network argument of type {type(value).__name__} cannot be saved with the weights: {value!r}")


class ConditionalDiffusionUNet(DiffusionModelUNet):
    """Class/device/box/BI-RADS-conditional :class:`~monai.networks.nets.DiffusionModelUNet` (BUSGen's generator).

    Args:
        spatial_dims: number of spatial dimensions (2 for ultrasound frames).
        image_channels: image channels (1: grey B-mode, the default of every preset; 3: RGB, e.g. colour
            Doppler); also the number of output channels (epsilon).
        channels, num_res_blocks, attention_levels, norm_num_groups, norm_eps, resblock_updown, num_head_channels,
        transformer_num_layers, upcast_attention, include_fc, use_combined_linear, use_flash_attention:
            as in :class:`~monai.networks.nets.DiffusionModelUNet`.
        dropout: dropout before the second convolution of every residual block (BUSGen: 0.15).
        num_pathology_embeds, num_device_embeds, num_birads_embeds: condition table sizes, null row included
            (use :meth:`ConditionCodec.network_kwargs`).
        conditions: conditions embedded as vectors, any of ``pathology``, ``device``, ``birads``.
        box_condition: ``mask`` (box mask input channel), ``fourier`` (Fourier box embedding), ``both`` or ``none``.
        num_box_freqs: octaves of the Fourier box features.
        condition_embed_dim: width of each condition's embedding (default ``channels[0]``, as BUSGen).
        condition_injection: ``project`` (own projection per residual block, BUSGen) or ``add`` (MONAI class path).
        cross_attention: also feed condition tokens to cross-attention blocks at the attention levels.

    Shapes: ``x`` ``(B, image_channels, H, W)``, ``timesteps`` ``(B,)`` or ``(1,)``, conditions ``(B, 1, K)``;
    returns ``(B, image_channels, H, W)``.

    ``init_args`` holds every constructor argument as plain JSON types; training saves it in each checkpoint
    (``network_kwargs``) so :func:`busgen_monai.inferers.load_generator` rebuilds exactly the trained network.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        image_channels: int = 1,
        channels: Sequence[int] = (128, 256, 256, 256),
        num_res_blocks: Sequence[int] | int = 2,
        attention_levels: Sequence[bool] = (False, True, True, True),
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        resblock_updown: bool = False,
        num_head_channels: int | Sequence[int] = 64,
        transformer_num_layers: int = 1,
        upcast_attention: bool = False,
        include_fc: bool = True,
        use_combined_linear: bool = False,
        use_flash_attention: bool = False,
        dropout: float = 0.0,
        num_pathology_embeds: int = 3,
        num_device_embeds: int = 20,
        num_birads_embeds: int = 11,
        conditions: Sequence[str] = ("pathology", "device"),
        box_condition: str = "mask",
        num_box_freqs: int = 8,
        condition_embed_dim: int | None = None,
        condition_injection: str = "project",
        cross_attention: bool = False,
    ) -> None:
        if box_condition not in BOX_CONDITION_MODES:
            raise ValueError(f"box_condition must be one of {BOX_CONDITION_MODES}, got {box_condition!r}")
        if condition_injection not in CONDITION_INJECTION_MODES:
            raise ValueError(
                f"condition_injection must be one of {CONDITION_INJECTION_MODES}, got {condition_injection!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        init_args = {k: v for k, v in locals().items() if k in _INIT_ARG_NAMES}
        embed_dim = int(condition_embed_dim or channels[0])
        self.image_channels = int(image_channels)
        self.box_mask_channel = box_condition in ("mask", "both")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=self.image_channels + int(self.box_mask_channel),
            out_channels=self.image_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            resblock_updown=resblock_updown,
            num_head_channels=num_head_channels,
            with_conditioning=cross_attention,
            transformer_num_layers=transformer_num_layers,
            cross_attention_dim=embed_dim if cross_attention else None,
            num_class_embeds=None,
            upcast_attention=upcast_attention,
            include_fc=include_fc,
            use_combined_linear=use_combined_linear,
            use_flash_attention=use_flash_attention,
        )
        self.init_args = _json_safe(init_args)
        self.spatial_dims = spatial_dims
        self.box_condition = box_condition
        self.condition_injection = condition_injection
        self.cross_attention = bool(cross_attention)
        self.dropout = float(dropout)
        time_embed_dim = channels[0] * 4
        self.condition_embedding = ConditionEmbedding(
            out_dim=time_embed_dim,
            embed_dim=embed_dim,
            num_pathology_embeds=num_pathology_embeds,
            num_device_embeds=num_device_embeds,
            num_birads_embeds=num_birads_embeds,
            conditions=conditions,
            box_fourier=box_condition in ("fourier", "both"),
            num_box_freqs=num_box_freqs,
        )
        for block in self.modules():
            if not isinstance(block, DiffusionUNetResnetBlock):
                continue
            if condition_injection == "project":
                block.time_emb_proj = nn.Linear(2 * time_embed_dim, block.out_channels)
            if self.dropout > 0:
                block.conv2.register_forward_pre_hook(_InputDropout(self.dropout))

    # ------------------------------------------------------------------ conditions
    def _conditions(self, context, class_labels, batch: int, device: torch.device) -> Conditions:
        return resolve_conditions(context, class_labels, batch, device)

    def box_mask(
        self, cond: Conditions, spatial_size: Sequence[int], dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The box-mask channel ``(B, 1, H, W)`` the network concatenates to its input."""
        return render_box_mask(cond.boxes, cond.box_valid, spatial_size, dtype)

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | Mapping | None = None,
        class_labels: torch.Tensor | Mapping | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: noisy images ``(B, image_channels, H, W)`` (or with the box mask already concatenated).
            timesteps: ``(B,)`` or ``(1,)`` diffusion steps.
            context: packed conditions ``(B, 1, K)`` (or a dict / ``None``); see the module docstring.
            class_labels: alternative to ``context``; a ``(B,)`` long tensor means pathology ids only.
            down_block_additional_residuals, mid_block_additional_residual: ControlNet residuals (MONAI).
        """
        batch = x.shape[0]
        cond = self._conditions(context, class_labels, batch, x.device)
        if self.box_mask_channel and x.shape[1] == self.image_channels:
            x = torch.cat([x, self.box_mask(cond, x.shape[2:], x.dtype)], dim=1)
        elif x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels; expected {self.image_channels} (image) "
                + (f"or {self.in_channels} (image + box mask)" if self.box_mask_channel else "")
            )

        # 1. time and condition embeddings
        timesteps = timesteps.reshape(-1)
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype)
        emb = self.time_embed(t_emb)
        if emb.shape[0] != batch:
            emb = emb.expand(batch, -1)
        c_emb = self.condition_embedding(cond).to(dtype=x.dtype)
        emb = torch.cat([emb, c_emb], dim=1) if self.condition_injection == "project" else emb + c_emb
        tokens = self.condition_embedding.tokens(cond).to(dtype=x.dtype) if self.cross_attention else None

        # 2. U-Net (as monai.networks.nets.DiffusionModelUNet.forward)
        h = self.conv_in(x)
        down_block_res_samples: list[torch.Tensor] = [h]
        for downsample_block in self.down_blocks:
            h, res_samples = downsample_block(hidden_states=h, temb=emb, context=tokens)
            down_block_res_samples.extend(res_samples)
        if down_block_additional_residuals is not None:
            down_block_res_samples = [
                s + r for s, r in zip(down_block_res_samples, down_block_additional_residuals)
            ]
        h = self.middle_block(hidden_states=h, temb=emb, context=tokens)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual
        for upsample_block in self.up_blocks:
            idx: int = -len(upsample_block.resnets)  # type: ignore[arg-type]
            res_samples = down_block_res_samples[idx:]
            down_block_res_samples = down_block_res_samples[:idx]
            h = upsample_block(hidden_states=h, res_hidden_states_list=res_samples, temb=emb, context=tokens)
        output: torch.Tensor = self.out(h)
        return output
