"""Latent diffusion (the CoLDiT-style second generator family): training and sampling glue around MONAI.

Training (``bundles/busgen_latent``) runs :class:`monai.engines.SupervisedTrainer` with MONAI's
:class:`monai.inferers.LatentDiffusionInferer`: the frozen first-stage autoencoder
(:class:`~busgen_monai.networks.LatentAutoencoderKL`, trained by ``bundles/busgen_autoencoder``) encodes each batch,
the latent is multiplied by ``scale_factor`` (``1 / std`` of the training latents, as in Rombach et al. 2022), and the
denoiser (:class:`~busgen_monai.networks.ConditionalDiT`) learns epsilon in latent space:

- :class:`LatentTrainingInferer` binds the autoencoder to MONAI's inferer, so the trainer calls it like a plain
  ``DiffusionInferer``: ``inferer(images, network, noise=..., timesteps=..., condition=..., mode="crossattn")``;
- :class:`LatentDiffusionPrepareBatch` draws the noise in the latent's shape (the pixel prepare-batch draws it in the
  image's shape), with the same condition dropout for classifier-free guidance;
- :class:`AutoencoderRecord` and :class:`NetworkClassRecord` are checkpoint entries: the autoencoder's class, weights,
  constructor arguments and ``scale_factor`` travel *inside* the latent checkpoint (``autoencoder``), and the
  denoiser's class name (``network_class``, resolved through the allow-list
  :data:`busgen_monai.networks.GENERATOR_NETWORKS`, never as an importable path).

Sampling: :func:`busgen_monai.inferers.load_generator` returns a :class:`LatentDiffusionModel` for a latent
checkpoint. It *is* the latent denoiser for everything that drives a denoiser (``forward(x, timesteps, context)``):
:class:`~busgen_monai.inferers.GuidedDiffusionInferer` (DPM-Solver++, CFG) and the sampling guards run in latent
space, one step per solver step as for pixel models; :func:`~busgen_monai.inferers.generate_dataset` draws the start
noise in :meth:`LatentDiffusionModel.latent_shape` and decodes the result (:meth:`LatentDiffusionModel.decode`), so
post-hoc filters and the written PNGs see images.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.inferers import LatentDiffusionInferer
from torch import nn

from ..engines.prepare_batch import ConditionalDiffusionPrepareBatch

__all__ = [
    "LatentDiffusionModel", "LatentTrainingInferer", "LatentDiffusionPrepareBatch", "AutoencoderRecord",
    "NetworkClassRecord", "centre_latents", "latent_scale_factor", "load_autoencoder", "read_autoencoder_checkpoint",
    "autoencoder_from_state", "network_class_of", "is_latent", "configure_latent_sampler",
]


def _unwrap(network: nn.Module) -> nn.Module:
    return getattr(network, "module", network)


class LatentDiffusionModel(nn.Module):
    """A latent denoiser with its (frozen) autoencoder: what :func:`load_generator` returns for a latent checkpoint.

    ``forward(x, timesteps, context=None, class_labels=None)`` is the denoiser's (latents in, epsilon out), so
    inferers and guards use it as they use a pixel U-Net. ``image_channels`` are the *image* channels (of the
    decoded output), :meth:`latent_shape` the shape of the start noise, :meth:`decode` latents -> images in [-1, 1].

    Args:
        diffusion_model: the denoiser (:class:`~busgen_monai.networks.ConditionalDiT`).
        autoencoder: the first stage (:class:`~busgen_monai.networks.LatentAutoencoderKL`).
        scale_factor: latents are ``scale_factor * z`` in diffusion space (decode divides by it).
        latent_clip: if set, samplers clip the data (``x0``) prediction to ``[-latent_clip, latent_clip]`` in
            diffusion space, as pixel models clip to ``[-1, 1]`` (:func:`busgen_monai.inferers.run_generation` applies
            it); saved as ``settings["latent_clip"]``. Unclipped, the x0 prediction at the first, noisiest steps of
            the linear schedule (``1 / sqrt(abar_T)`` about 150) carries the denoiser's error into the trajectory;
            with a CPU-trained DiT the sampled latents then came out with about 4x the training latents' spread.
    """

    def __init__(self, diffusion_model: nn.Module, autoencoder: nn.Module, scale_factor: float = 1.0,
                 latent_clip: float | None = None) -> None:
        super().__init__()
        if latent_clip is not None and not float(latent_clip) > 0:
            raise ValueError(f"latent_clip must be > 0 or None (no clipping), got {latent_clip}")
        self.diffusion_model = diffusion_model
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)
        self.latent_clip = None if latent_clip is None else float(latent_clip)
        self.image_channels = int(getattr(autoencoder, "image_channels", 1))
        self.init_args = getattr(diffusion_model, "init_args", None)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, class_labels: Any = None,
                **kwargs: Any) -> torch.Tensor:
        return self.diffusion_model(x, timesteps, context=context, class_labels=class_labels, **kwargs)

    def latent_shape(self, image_size: int | Sequence[int]) -> tuple[int, ...]:
        """``(latent_channels, H / f, W / f)``; the denoiser must have been trained at that size."""
        shape = tuple(self.autoencoder.latent_shape(image_size))
        size = getattr(self.diffusion_model, "input_size", None)
        if size is not None and tuple(shape[1:]) != (size, size):
            raise ValueError(f"image size {image_size} gives {shape[1]}x{shape[2]} latents but the denoiser was "
                             f"trained on {size}x{size} latents; sample at the checkpoint's image_size")
        return shape

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents: the posterior sample, as LatentDiffusionInferer encodes, or with
        ``sample=False`` the posterior mean (deterministic, e.g. for the CPSampling protector)."""
        if sample:
            return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor
        return self.autoencoder.encode(images)[0] * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (clamped to [-1, 1])."""
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor).clamp(-1, 1)


def is_latent(network: Any) -> bool:
    """Whether ``network`` is a latent generator (start noise in latent shape, outputs decoded)."""
    return isinstance(_unwrap(network), LatentDiffusionModel)


def configure_latent_sampler(network: Any, scheduler: Any) -> None:
    """Set a sampler's data-prediction clipping for a latent generator: ``[-c, c]`` with the model's
    ``latent_clip`` c, otherwise off (the ``[-1, 1]`` clip and Imagen thresholding are for pixels; a warning says
    when a config had them on). Pixel generators are left alone."""
    model = _unwrap(network)
    if not isinstance(model, LatentDiffusionModel):
        return
    bound = model.latent_clip
    if bound is not None:
        scheduler.clip_sample = True
        scheduler.clip_sample_values = [-bound, bound]
        if hasattr(scheduler, "thresholding"):
            scheduler.thresholding = False
        return
    if getattr(scheduler, "clip_sample", False) or getattr(scheduler, "thresholding", False):
        import warnings

        warnings.warn("latent generator: the scheduler's clip_sample/thresholding (for [-1, 1] pixels) is switched "
                      "off; latents are not bounded (set clip_sample false in the config to silence this, or give "
                      "the model a latent_clip)", stacklevel=3)
        scheduler.clip_sample = False
        if hasattr(scheduler, "thresholding"):
            scheduler.thresholding = False


class LatentTrainingInferer(LatentDiffusionInferer):
    """MONAI's :class:`~monai.inferers.LatentDiffusionInferer` with its autoencoder bound, so that
    :class:`monai.engines.SupervisedTrainer` calls it as a plain diffusion inferer ``inferer(images, network, ...)``.

    Args:
        scheduler: the training noise scheduler.
        autoencoder: the frozen first stage (put in eval mode, no gradients).
        scale_factor: latent scaling (:func:`latent_scale_factor`).
    """

    def __init__(self, scheduler: Any, autoencoder: nn.Module, scale_factor: float = 1.0) -> None:
        super().__init__(scheduler, scale_factor=float(scale_factor))
        self.autoencoder = autoencoder.eval().requires_grad_(False)

    def __call__(self, inputs: torch.Tensor, diffusion_model: nn.Module, noise: torch.Tensor,  # type: ignore[override]
                 timesteps: torch.Tensor, condition: torch.Tensor | None = None, mode: str = "crossattn",
                 seg: torch.Tensor | None = None) -> torch.Tensor:
        self.autoencoder.to(inputs.device)
        return super().__call__(inputs, self.autoencoder, diffusion_model, noise, timesteps, condition, mode, seg)


class LatentDiffusionPrepareBatch(ConditionalDiffusionPrepareBatch):
    """:class:`~busgen_monai.engines.ConditionalDiffusionPrepareBatch` whose noise has the latent's shape.

    Args:
        latent_shape: ``(latent_channels, h, w)`` (``LatentAutoencoderKL.latent_shape(image_size)``).
        other arguments: as the pixel prepare-batch.
    """

    def __init__(self, num_train_timesteps: int, latent_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(num_train_timesteps, **kwargs)
        self.latent_shape = tuple(int(s) for s in latent_shape)

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn((images.shape[0], *self.latent_shape), device=images.device)


@torch.no_grad()
def _posterior_means(autoencoder: nn.Module, batches: Any, max_batches: int, device: str | torch.device,
                     who: str) -> torch.Tensor:
    ae = autoencoder.eval().to(device)
    zs = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            images = batch["image"] if isinstance(batch, Mapping) else batch
            images = torch.as_tensor(images).float().to(device)
            if images.dim() == 3:
                images = images[None]
            z_mu, _ = ae.encode(images)
            zs.append(z_mu.transpose(0, 1).flatten(1))  # (C, B*H*W)
    if not zs:
        raise ValueError(f"{who}: no images to estimate the latent statistics from (empty training split?)")
    return torch.cat(zs, 1)


def latent_scale_factor(autoencoder: nn.Module, batches: Any, max_batches: int = 4,
                        device: str | torch.device = "cpu") -> float:
    """``1 / std`` of the autoencoder's latents over the first ``max_batches`` batches (dicts with ``image``, or
    tensors) of a loader or dataset, so diffusion runs on latents of unit variance (Rombach et al. 2022). The
    posterior *mean* is used, so the value is deterministic (a resumed run recomputes the same scale); with the
    small KL weight of the first stage the posterior spread is negligible next to it."""
    std = float(_posterior_means(autoencoder, batches, max_batches, device, "latent_scale_factor").std())
    if not std > 0:
        raise ValueError("latent_scale_factor: the autoencoder's latents have zero variance; train it first")
    return 1.0 / std


def centre_latents(autoencoder: nn.Module, batches: Any, max_batches: int = 4,
                   device: str | torch.device = "cpu") -> nn.Module:
    """Standardise the autoencoder's latents per channel (zero mean, unit std over the first ``max_batches``
    batches, posterior means), folded exactly into its weights by
    :meth:`~busgen_monai.networks.LatentAutoencoderKL.standardise_latents_`; returns the autoencoder. Deterministic,
    so a resumed run rebuilds the same first stage (the checkpoint's copy is compared on resume)."""
    z = _posterior_means(autoencoder, batches, max_batches, device, "centre_latents")
    std = z.std(1)
    if not bool((std > 0).all()):
        raise ValueError("centre_latents: a latent channel has zero variance; train the autoencoder first")
    _unwrap(autoencoder).standardise_latents_(z.mean(1), std)
    return autoencoder


class NetworkClassRecord:
    """Checkpoint entry ``network_class``: the generator's class name, one of
    :data:`busgen_monai.networks.GENERATOR_NETWORKS` (a resume with another class is refused)."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, str]:
        from ..networks import GENERATOR_NETWORKS

        name = type(_unwrap(self.network)).__name__
        if name not in GENERATOR_NETWORKS:
            raise TypeError(f"{name} is not a generator network ({sorted(GENERATOR_NETWORKS)})")
        return {"name": name}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        saved = state_dict.get("name") if isinstance(state_dict, Mapping) else state_dict
        if saved != self.state_dict()["name"]:
            raise ValueError(f"the checkpoint to resume from holds a {saved}, the config builds a "
                             f"{self.state_dict()['name']}; use a new output_dir / --resume false")


class AutoencoderRecord:
    """Checkpoint entry ``autoencoder``: ``{"network_class", "network_kwargs", "network", "scale_factor"}`` of the
    frozen first stage, so a latent checkpoint samples on its own. On resume, an autoencoder with other arguments
    or another scale factor is refused (the denoiser's latents would not match)."""

    def __init__(self, autoencoder: nn.Module, scale_factor: float) -> None:
        self.autoencoder = autoencoder
        self.scale_factor = float(scale_factor)

    def state_dict(self) -> dict[str, Any]:
        ae = _unwrap(self.autoencoder)
        args = getattr(ae, "init_args", None)
        if args is None:
            raise TypeError(f"{type(ae).__name__} has no init_args; use busgen_monai.networks.LatentAutoencoderKL")
        return {"network_class": type(ae).__name__, "network_kwargs": copy.deepcopy(dict(args)),
                "network": {k: v.detach().cpu() for k, v in ae.state_dict().items()},
                "scale_factor": self.scale_factor}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        mine = self.state_dict()
        if dict(state_dict.get("network_kwargs") or {}) != mine["network_kwargs"]:
            raise ValueError("the checkpoint to resume from was trained on another autoencoder (network_kwargs "
                             "differ); use the same autoencoder checkpoint, or a new output_dir / --resume false")
        if abs(float(state_dict.get("scale_factor", 0.0)) - self.scale_factor) > 1e-6 * max(1.0, self.scale_factor):
            raise ValueError(f"the checkpoint to resume from used latent scale_factor "
                             f"{state_dict.get('scale_factor')} but the config computes {self.scale_factor}; pass "
                             "--scale_factor with the saved value")
        saved = state_dict.get("network") or {}
        differs = [k for k, v in mine["network"].items()
                   if k in saved and not torch.allclose(torch.as_tensor(saved[k]).float(), v.float(), atol=1e-5)]
        if differs:
            raise ValueError(f"the checkpoint to resume from was trained on other autoencoder weights ({differs[0]} "
                             "differs: another autoencoder checkpoint, or other centre_latents statistics); use the "
                             "same autoencoder and settings, or a new output_dir / --resume false")


def read_autoencoder_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read an autoencoder checkpoint (``bundles/busgen_autoencoder``: ``network`` + ``network_kwargs``; a folder
    means its newest ``*.pt``) with ``torch.load(weights_only=True)``."""
    from ..engines.checkpoints import resolve_checkpoint

    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read autoencoder checkpoint {path} (weights-only loading): "
                         f"{str(err).splitlines()[0]}") from err
    if not isinstance(state, Mapping) or "network" not in state or not state.get("network_kwargs"):
        keys = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path} is not an autoencoder checkpoint of bundles/busgen_autoencoder (needs 'network' and "
                         f"'network_kwargs'; has {keys})")
    return dict(state)


def autoencoder_from_state(state: Mapping[str, Any], source: str = "checkpoint", use_ema: bool = False) -> nn.Module:
    """Rebuild the autoencoder a state holds (an autoencoder checkpoint, or a latent checkpoint's ``autoencoder``)
    from the allow-list :data:`busgen_monai.networks.AUTOENCODER_NETWORKS`."""
    from ..networks import AUTOENCODER_NETWORKS

    name = state.get("network_class", "LatentAutoencoderKL")
    if isinstance(name, Mapping):
        name = name.get("name")
    cls = AUTOENCODER_NETWORKS.get(name)
    if cls is None:
        raise ValueError(f"{source}: autoencoder class {name!r} is not one of {sorted(AUTOENCODER_NETWORKS)}")
    try:
        ae = cls(**dict(state["network_kwargs"]))
    except TypeError as err:
        raise ValueError(f"{source}: its autoencoder network_kwargs do not build a {name}: {err}") from err
    ema = state.get("ema") or {}
    weights = ({k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
               if use_ema and ema else dict(state["network"]))
    try:
        ae.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except RuntimeError as err:
        raise ValueError(f"{source}: autoencoder weights do not fit its network_kwargs: "
                         f"{str(err).splitlines()[0]}") from err
    return ae.eval()


def load_autoencoder(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The trained autoencoder of ``bundles/busgen_autoencoder`` (a ``.pt`` file or its ``models/`` folder)."""
    state = read_autoencoder_checkpoint(checkpoint)
    return autoencoder_from_state(state, source=str(checkpoint)).to(device)


def network_class_of(state: Mapping[str, Any]) -> str:
    """The generator class a checkpoint names (``network_class``); old checkpoints without it hold the U-Net."""
    from ..networks import GENERATOR_NETWORKS

    name = state.get("network_class") or "ConditionalDiffusionUNet"
    if isinstance(name, Mapping):
        name = name.get("name")
    if name not in GENERATOR_NETWORKS:
        raise ValueError(f"the checkpoint names network class {name!r}, which is not a generator of this library "
                         f"({sorted(GENERATOR_NETWORKS)}); nothing is imported from a checkpoint")
    return str(name)


def unknown_preset(name: str, presets: Mapping[str, Any]) -> None:
    """Raise the bundle's error for a preset name it does not define."""
    raise KeyError(f"unknown preset {name!r}; choose one of {sorted(presets)} (bundle: --preset_name cpu_tiny)")


@torch.no_grad()
def reconstruction_report(autoencoder: nn.Module, dataset: Sequence, out_file: str | os.PathLike,
                          device: str | torch.device = "cpu", grid: str | os.PathLike | None = None,
                          grid_size: int = 8) -> dict[str, Any]:
    """Reconstruction quality of the autoencoder on ``dataset`` (dicts with ``image`` in [-1, 1]): mean absolute
    error and PSNR (range 2, averaged over images as :class:`monai.metrics.PSNRMetric`) of ``decode(encode(x))`` with
    the posterior mean, written as JSON (atomically) and, with ``grid``, a PNG of originals (top) over
    reconstructions (bottom). Local to the calling process (no collective call: rank 0 runs it alone under DDP)."""
    import json

    from ..utils.io import atomic_write_text

    ae = _unwrap(autoencoder).eval().to(device)
    errs, psnrs, shown = [], [], []
    for item in dataset:
        x = torch.as_tensor(item["image"]).float()[None].to(device)
        z_mu, _ = ae.encode(x)
        rec = ae.decode(z_mu).clamp(-1, 1)
        errs.append(float((rec - x).abs().mean()))
        mse = float(((rec - x) ** 2).mean())
        psnrs.append(20 * math.log10(2.0) - 10 * math.log10(max(mse, 1e-12)))
        if len(shown) < grid_size:
            shown.append((x[0].cpu(), rec[0].cpu()))
    if not errs:
        raise ValueError("reconstruction_report: the evaluation set is empty")
    report = {"num_images": len(errs), "mae": float(sum(errs) / len(errs)),
              "psnr_db": float(sum(psnrs) / len(psnrs)), "image_range": [-1, 1],
              "latent_shape": list(getattr(ae, "latent_shape")(tuple(shown[0][0].shape[1:]))) if shown else None}
    atomic_write_text(out_file, json.dumps(report, indent=1))
    if grid is not None and shown:
        import numpy as np

        from ..utils.io import atomic_save_png

        def _u8(t):
            return ((t[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()

        top = np.concatenate([_u8(a) for a, _ in shown], axis=1)
        bottom = np.concatenate([_u8(b) for _, b in shown], axis=1)
        atomic_save_png(np.concatenate([top, bottom], axis=0), grid)
    return report
