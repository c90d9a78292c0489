"""Model/training presets of the BUSGen pretraining stage: ``paper``, ``toy`` and ``tiny``.

One code path for all three; a preset only fills in numbers. The pretrain bundle reads them with
``"preset": "$busgen_monai.presets.get_preset(@preset_name)"`` and every network/scheduler/optimizer argument is a
separate config key, so ``--preset_name tiny`` selects a preset and ``--image_size 48`` (etc.) overrides one number.

=========  =======  ==================  =========================================  ==========  ===============
preset     pixels   U-Net widths        attention / res blocks                     parameters  use
=========  =======  ==================  =========================================  ==========  ===============
paper      160      128, 256, 256, 256  levels 2-4 (80, 40, 20 px), 2 per level    ~46 M       GPU pretraining
toy        128      as paper            as paper                                   ~46 M       BUSGen's toy set-up
tiny       32       16, 32              none, 1 per level                          ~0.2 M      CPU tests, demos
=========  =======  ==================  =========================================  ==========  ===============

All presets: T = 500 DDPM steps, linear betas 1e-4 ... 0.028, epsilon prediction, images in [-1, 1], RGB, box mask
input channel, pathology + device embeddings with own projections per residual block, CFG w = 1.8.

Paper/toy follow BUSGen's public code (base width 128, multipliers (1, 2, 2, 2), 2 residual blocks, GroupNorm 32,
dropout 0.15, AdamW lr 6.25e-6 warmed up x2.5 over 10 % of the epochs then cosine, weight decay 1e-4, grad clip 1,
batch 1, no EMA) translated to MONAI's ``DiffusionModelUNet``: BUSGen puts self-attention in every *down* block at
every resolution and in the middle block; MONAI's attention levels are symmetric (down and up), and attention at
160 x 160 (25,600 tokens) is skipped here, so attention runs at 80, 40 and 20 px. BUSGen's learned 3x3 + 5x5
down-sampling and 5x5 transposed-conv up-sampling are heavier than MONAI's; ``resblock_updown=True`` (learned
residual up/down blocks) is the MONAI counterpart and brings the count to ~46 M (BUSGen: ~48 M).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "PRESETS", "PRESET_NAMES", "SAMPLING_KEYS", "get_preset", "network_kwargs", "build_network", "build_scheduler",
    "trained_settings",
]

_DIFFUSION = {"num_train_timesteps": 500, "beta_start": 1e-4, "beta_end": 0.028, "guidance_w": 1.8}
# grey B-mode (one channel) everywhere; RGB (3) is an override for colour data: --image_channels 3
_IMAGE = {"image_channels": 1}
_LOSS_PLAIN = {"loss_weighting": "none", "min_snr_gamma": 5.0}

_PAPER_NET = {
    "channels": [128, 256, 256, 256],
    "num_res_blocks": 2,
    "attention_levels": [False, True, True, True],
    "norm_num_groups": 32,
    "num_head_channels": 64,
    "resblock_updown": True,
    "dropout": 0.15,
    "condition_embed_dim": 128,
    "use_flash_attention": True,  # torch SDPA: memory-efficient attention on GPU and CPU (2x faster on CPU at 160 px)
}

# CPU preset: widths 32-128, attention only at the lowest resolution (8 px at 64 px input), one residual block per
# level; measured choices in bundles/busgen_pretrain/docs/README.md ("Training on a CPU").
_CPU_NET = {
    "channels": [32, 64, 128, 128],
    "num_res_blocks": 1,
    "attention_levels": [False, False, False, True],
    "norm_num_groups": 8,
    "num_head_channels": 32,
    "resblock_updown": False,
    "dropout": 0.0,
    "condition_embed_dim": 64,
    "use_flash_attention": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "image_size": 160,
        **_IMAGE,
        **_PAPER_NET,
        **_LOSS_PLAIN,
        **_DIFFUSION,
        "batch_size": 1,
        "lr": 1.5625e-5,  # BUSGen: 6.25e-6 with a x2.5 warm-up multiplier -> peak 1.5625e-5
        "warmup_multiplier": 0.4,  # warm-up starts at 6.25e-6 = 0.4 * peak
        "warmup_fraction": 0.1,  # 7 of 70 epochs
        "max_epochs": 70,
        "weight_decay": 1e-4,
        "grad_clip": 1.0,
        "ema_decay": 0.0,  # BUSGen trains without EMA; 0 disables it
    },
    "toy": {
        "image_size": 128,
        **_IMAGE,
        **_PAPER_NET,
        **_LOSS_PLAIN,
        **_DIFFUSION,
        "batch_size": 1,
        "lr": 1.5625e-5,
        "warmup_multiplier": 0.4,
        "warmup_fraction": 0.1,
        "max_epochs": 70,
        "weight_decay": 1e-4,
        "grad_clip": 1.0,
        "ema_decay": 0.0,
    },
    "tiny": {
        "image_size": 32,
        **_IMAGE,
        **_LOSS_PLAIN,
        "channels": [16, 32],
        "num_res_blocks": 1,
        "attention_levels": [False, False],
        "norm_num_groups": 8,
        "num_head_channels": 16,
        "resblock_updown": False,
        "dropout": 0.0,
        "condition_embed_dim": 16,
        "use_flash_attention": False,
        **_DIFFUSION,
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_multiplier": 0.1,
        "warmup_fraction": 0.05,
        "max_epochs": 2,
        "weight_decay": 1e-4,
        "grad_clip": 1.0,
        "ema_decay": 0.99,
    },
    "cpu": {
        "image_size": 64,
        **_IMAGE,
        **_CPU_NET,
        **_DIFFUSION,
        "loss_weighting": "min_snr",
        "min_snr_gamma": 5.0,
        "batch_size": 16,
        "lr": 5e-4,
        "warmup_multiplier": 0.1,
        "warmup_fraction": 0.02,
        "max_epochs": 32,
        "weight_decay": 1e-4,
        "grad_clip": 1.0,
        "ema_decay": 0.999,
    },
}
PRESETS["cpu128"] = {**PRESETS["cpu"], "image_size": 128, "batch_size": 8}
PRESETS["cpu96"] = {**PRESETS["cpu"], "image_size": 96, "batch_size": 12}
PRESET_NAMES = tuple(PRESETS)

_NETWORK_KEYS = (
    "image_channels",
    "channels",
    "num_res_blocks",
    "attention_levels",
    "norm_num_groups",
    "num_head_channels",
    "resblock_updown",
    "dropout",
    "condition_embed_dim",
    "use_flash_attention",
)


def get_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of preset ``name`` with ``overrides`` applied; an unknown name or key raises with the choices."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {list(PRESETS)} (bundle: --preset_name tiny)")
    preset = copy.deepcopy(PRESETS[name])
    unknown = set(overrides) - set(preset)
    if unknown:
        raise KeyError(f"preset {name!r} has no keys {sorted(unknown)}; keys are {sorted(preset)}")
    preset.update(overrides)
    preset["name"] = name
    return preset


# what a sampler needs besides the network: the image size it was trained at and the noise schedule
SAMPLING_KEYS = ("image_size", "image_channels", "num_train_timesteps", "beta_start", "beta_end", "guidance_w")


def trained_settings(preset: dict[str, Any], **actual: Any) -> dict[str, Any]:
    """The preset as actually trained: ``preset`` with the values the run really used (``actual``, e.g. the bundle's
    ``image_size`` after ``--image_size 96``) applied. Training saves it in every checkpoint (``settings``) and in
    ``models/preset.json``, so sampling, adaptation and packaging read the image size and noise schedule back instead
    of asking for the preset again. Values are plain JSON types."""
    import json

    out = dict(preset)
    out.update({k: v for k, v in actual.items() if v is not None})
    return json.loads(json.dumps(out))


def network_kwargs(preset: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~busgen_monai.networks.ConditionalDiffusionUNet` arguments a preset sets."""
    return {k: copy.deepcopy(preset[k]) for k in _NETWORK_KEYS}


def _build_network_impl(preset: dict[str, Any] | str, codec=None, **kwargs: Any):
    """Build the preset's :class:`~busgen_monai.networks.ConditionalDiffusionUNet` (table sizes from ``codec``).

    The one definition of the generator network: the pretrain bundle's ``network_def`` (which adapt and every
    packaged bundle inherit) is ``{"_target_": "busgen_monai.presets.build_network", "preset": "@preset", ...}``,
    and Python users, tests and benchmarks call it too. ``kwargs`` override single network arguments (a bundle's
    ``--network_def#channels "[32, 64]"`` arrives here); sampling rebuilds the network from the arguments saved in
    the checkpoint instead (:func:`busgen_monai.inferers.load_generator`)."""
    from busgen_monai.networks import ConditionalDiffusionUNet, ConditionCodec

    preset = get_preset(preset) if isinstance(preset, str) else preset
    codec = codec if codec is not None else ConditionCodec()
    args = {"spatial_dims": 2, **network_kwargs(preset), **codec.network_kwargs()}
    args.update(kwargs)
    return ConditionalDiffusionUNet(**args)


class _BuildNetwork:
    """Callable behind :func:`build_network` whose ``__signature__`` lists the network's arguments (computed on
    first use: importing the networks package here would import MONAI's networks with the presets)."""

    __qualname__ = "build_network"

    def __call__(self, preset: dict[str, Any] | str, codec=None, **kwargs: Any):
        return _build_network_impl(preset, codec, **kwargs)

    @property
    def __signature__(self):
        return _build_network_signature()



build_network = _BuildNetwork()
build_network.__doc__ = _build_network_impl.__doc__
build_network.__name__ = "build_network"


def _build_network_signature():
    """``build_network``'s signature as tools see it: ``preset``, ``codec`` and every keyword argument of
    :class:`~busgen_monai.networks.ConditionalDiffusionUNet` (the bundle config checker accepts
    ``--network_def#<argument>`` overrides from it)."""
    import inspect

    from busgen_monai.networks import ConditionalDiffusionUNet

    own = list(inspect.signature(_build_network_impl).parameters.values())[:2]
    net = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(ConditionalDiffusionUNet.__init__).parameters.values()
           if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return inspect.Signature(own + net)


def build_scheduler(preset: dict[str, Any] | str, kind: str = "ddpm", num_inference_steps: int | None = None,
                    **overrides: Any):
    """The preset's scheduler: :func:`busgen_monai.schedulers.build_scheduler` (``kind`` ``ddpm`` for training,
    ``ddim`` for validation grids, ``dpmpp`` for sampling) with a preset name accepted too."""
    from busgen_monai.schedulers import build_scheduler as _build

    preset = get_preset(preset) if isinstance(preset, str) else preset
    return _build(preset, kind, num_inference_steps, **overrides)
