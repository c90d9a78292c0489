"""CPSampling guard: steer generation away from memorised training images (Kazdan et al., ICLR 2025).

:class:`CPSamplingGuard` implements :class:`busgen_monai.plugins.SamplingGuard`. At every solver step the guided
sampler (:class:`busgen_monai.inferers.GuidedDiffusionInferer`) calls it with the current ``x_t``, the timestep and
the (CFG-guided) noise prediction ``eps``. The protecting classifier (:mod:`busgen_cpsample.protector`), trained to
memorise random binary labels of the training images, gives ``p = sigmoid(f(x_t, t))``. Where it is confident,

    max(p, 1 - p) > 1 - alpha,

the trajectory is heading for a memorised image, and the guard adds a classifier-guidance term that pushes ``x_t``
toward ``p = 0.5``:

    eps' = eps + s * sqrt(1 - abar_t) * grad_x L(x_t),     L = BCE(p, 1/2) = -(log p + log(1 - p)) / 2

(``loss="abs_logit"`` uses ``L = |logit|``). Since the data prediction is ``x0 = (x_t - sqrt(1 - abar_t) eps') /
sqrt(abar_t)``, adding ``+grad L`` to ``eps`` moves the predicted image *down* the loss, i.e. toward the classifier's
decision boundary, away from the memorised point; this is classifier guidance (``eps - sqrt(1 - abar) grad log p``)
with ``log p`` replaced by ``-L``. Items where the classifier is unsure are returned bit-identical, and so is the
whole prediction when no item fires. The guard only changes ``eps``, so it works with any scheduler (DDPM, DDIM,
DPM-Solver++) and after classifier-free guidance.

The exact update rule of the official CPSample code is not verified (REFERENCE.md): the effect is demonstrated by
the privacy audit (:mod:`busgen_cpsample.audit`, ``benchmarks/bench_privacy.py``), not by matching a formula.

Configure it in the sampling bundle (``bundles/busgen_sample/configs/inference.json``)::

    "guards": [{"_target_": "busgen_cpsample.guard.CPSamplingGuard",
                "classifier": "/path/to/models/protector.pt", "alpha": 0.25, "strength": 100.0,
                "generator_checkpoint": "@checkpoint"}]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .protector import Protector, load_protector

__all__ = ["CPSamplingGuard", "LOSSES"]

LOSSES = ("bce", "abs_logit")
logger = logging.getLogger(__name__)


class CPSamplingGuard:
    """The CPSampling guard (see the module docstring).

    Args:
        classifier: a protector file path, a loaded :class:`~busgen_cpsample.protector.Protector`, or a classifier
            module called ``net(x_t, timesteps=t) -> (B, 1)`` logits (then no schedule/generator checks).
        alpha: fire where ``max(p, 1 - p) > 1 - alpha`` (CPSample: 0.5, 0.25, 0.001; smaller = fires less).
        strength: ``s``, the guidance strength (CPSample used up to 1000; the right value depends on the classifier's
            gradient scale: calibrate it with the privacy audit).
        loss: ``"bce"`` (cross-entropy against 1/2; gradient ``(p - 1/2) grad logit``) or ``"abs_logit"``.
        timestep_range: ``(t_min, t_max)``: only act when ``t_min <= t <= t_max`` (default: every step).
        max_update_rms: if set, clip each item's update ``s sqrt(1 - abar_t) grad L`` to this root-mean-square
            (in units of the noise prediction, whose RMS is about 1); ``None`` = no clipping.
        grad_blur_sigma: if set, smooth the gradient with a Gaussian of this standard deviation (pixels) before it
            is applied, so the guard moves the image along low-frequency directions (lesion/structure) instead of
            adding classifier-gradient noise; ``None`` = CPSample's raw gradient. Not part of CPSample.
        generator_checkpoint: the generator checkpoint being sampled (file or ``models/`` folder); its sha256 is
            compared with the one stored in the protector file.
        strict: a generator-hash or schedule mismatch raises (``True``, default) or only warns (``False``).
        check_schedule: compare the sampler's ``alphas_cumprod_t`` with the protector's schedule at every step.
        device: where the classifier runs (default: the device of ``x_t``).
    """

    def __init__(
        self,
        classifier: str | os.PathLike | Protector | nn.Module,
        alpha: float = 0.25,
        strength: float = 100.0,
        loss: str = "bce",
        timestep_range: Sequence[int] | None = None,
        max_update_rms: float | None = None,
        grad_blur_sigma: float | None = None,
        generator_checkpoint: str | os.PathLike | None = None,
        strict: bool = True,
        check_schedule: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if not 0.0 < float(alpha) <= 0.5:
            raise ValueError(f"alpha must be in (0, 0.5] (fire where max(p, 1-p) > 1 - alpha), got {alpha}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if float(strength) < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if isinstance(classifier, (str, os.PathLike)):
            classifier = load_protector(classifier)
        self.protector: Protector | None = classifier if isinstance(classifier, Protector) else None
        self.network: nn.Module = classifier.network if isinstance(classifier, Protector) else classifier
        if not isinstance(self.network, nn.Module):
            raise TypeError(f"classifier must be a protector path, a Protector or a torch module, got "
                            f"{type(classifier).__name__}")
        self.network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.strength = float(strength)
        self.loss = loss
        self.timestep_range = tuple(int(v) for v in timestep_range) if timestep_range is not None else None
        self.max_update_rms = None if max_update_rms is None else float(max_update_rms)
        self.grad_blur_sigma = None if not grad_blur_sigma else float(grad_blur_sigma)
        self._blur: nn.Module | None = None
        self.strict = bool(strict)
        self.check_schedule = bool(check_schedule) and self.protector is not None
        self.device = torch.device(device) if device is not None else None
        self._abar = self.protector.alphas_cumprod() if self.protector is not None else None
        self._schedule_checked = False
        if generator_checkpoint is not None:
            self.check_generator(generator_checkpoint)
        self._total: dict[str, Any] = self._empty_counters()
        self._total["runs"] = 0
        self.reset()

    # ------------------------------------------------------------------ checks
    def _complain(self, message: str) -> None:
        if self.strict:
            raise ValueError(message)
        logger.warning(message)

    def check_generator(self, checkpoint: str | os.PathLike) -> bool:
        """Compare the generator checkpoint's sha256 with the protector's; mismatch raises (strict) or warns."""
        if self.protector is None or not self.protector.generator_sha256:
            logger.warning("CPSamplingGuard: the protector records no generator hash; cannot check that it protects "
                           "%s", checkpoint)
            return False
        from busgen_monai.inferers import file_sha256, resolve_checkpoint

        actual = file_sha256(resolve_checkpoint(checkpoint))
        if actual != self.protector.generator_sha256:
            self._complain(
                f"CPSamplingGuard: protector {self.protector.path} was trained for generator sha256 "
                f"{self.protector.generator_sha256[:12]}..., but {checkpoint} has {actual[:12]}...; retrain the "
                "protector for this generator (busgen train-protector) or pass strict=False")
            return False
        return True

    def _check_alpha(self, t: int, alphas_cumprod_t: float) -> None:
        if self._abar is None or t >= self._abar.shape[0]:
            if self._abar is not None:
                self._complain(f"CPSamplingGuard: timestep {t} is outside the protector's schedule "
                               f"(T={self._abar.shape[0]})")
            return
        expected = float(self._abar[t])
        if abs(expected - float(alphas_cumprod_t)) > 1e-4 * max(1.0, expected):
            self._complain(
                f"CPSamplingGuard: the sampler's alphas_cumprod[{t}] = {float(alphas_cumprod_t):.6g} differs from the "
                f"protector's schedule ({expected:.6g}, {self.protector.schedule if self.protector else ''}); the "
                "protector must be trained with the generator's noise schedule")
        self._schedule_checked = True

    # ------------------------------------------------------------------ protocol
    @staticmethod
    def _empty_counters() -> dict[str, Any]:
        return {"steps": 0, "evaluated": 0, "fired": 0, "items": 0, "items_fired": 0, "fired_per_step": [],
                "evaluated_per_step": [], "max_confidence_per_step": [], "mean_update_rms_per_step": []}

    def reset(self) -> None:
        """Clear the per-run counters (called by the sampler before each ``sample`` call); totals are kept."""
        self._run = self._empty_counters()
        self._run_item_fired: torch.Tensor | None = None
        self._run_open = False
        self._auto_step = 0

    def reset_totals(self) -> None:
        """Clear the counters accumulated over all runs too."""
        self._total = self._empty_counters()
        self._total["runs"] = 0
        self.reset()

    def confidence(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``max(p, 1 - p)`` per item ``(B,)`` (no gradient)."""
        with torch.no_grad():
            logit = self._logits(x_t, t)
        p = torch.sigmoid(logit)
        return torch.maximum(p, 1 - p)

    def _logits(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        b = x.shape[0]
        tt = torch.as_tensor(t, device=x.device).reshape(-1).long()
        tt = tt.expand(b) if tt.numel() == 1 else tt
        if self.protector is not None and tuple(x.shape[2:]) != tuple(self.protector.image_size):
            raise ValueError(f"CPSamplingGuard: images are {tuple(x.shape[2:])} but the protector was trained at "
                             f"{tuple(self.protector.image_size)}; train the protector at the generator's image size")
        return self.network(x, timesteps=tt).reshape(b)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int, model_output: torch.Tensor,
                 alphas_cumprod_t: torch.Tensor | float | None = None, conditions: Any = None,
                 step: int | None = None, num_steps: int | None = None, **info: Any) -> torch.Tensor:
        eps = model_output
        t_int = int(torch.as_tensor(t).reshape(-1)[0])
        if alphas_cumprod_t is None:
            if self._abar is None:
                raise ValueError("CPSamplingGuard needs alphas_cumprod_t (or a protector file with its schedule)")
            alphas_cumprod_t = float(self._abar[t_int])
        elif self.check_schedule:
            self._check_alpha(t_int, float(alphas_cumprod_t))
        i = self._auto_step if step is None else int(step)
        self._auto_step = i + 1
        b = x_t.shape[0]
        if not self._run_open:
            self._run_open = True
            self._run["items"] = b
            self._run_item_fired = torch.zeros(b, dtype=torch.bool)
            self._total["runs"] += 1
            self._total["items"] += b
        device = self.device or x_t.device
        if next(self.network.parameters()).device != device:
            self.network.to(device)
        in_range = self.timestep_range is None or self.timestep_range[0] <= t_int <= self.timestep_range[1]

        with torch.enable_grad():
            x = x_t.detach().to(device=device, dtype=torch.float32).requires_grad_(True)
            logit = self._logits(x, t_int)
            p = torch.sigmoid(logit)
            conf = torch.maximum(p, 1 - p).detach()
            fire = (conf > 1.0 - self.alpha) if in_range else torch.zeros_like(conf, dtype=torch.bool)
            update_rms = 0.0
            if bool(fire.any()) and self.strength > 0:
                if self.loss == "bce":
                    per_item = 0.5 * (nn.functional.softplus(logit) + nn.functional.softplus(-logit))
                else:
                    per_item = logit.abs()
                grad = torch.autograd.grad((per_item * fire.to(per_item.dtype)).sum(), x)[0]
                if self.grad_blur_sigma:
                    grad = self._smooth(grad)
                scale = self.strength * float(1.0 - float(alphas_cumprod_t)) ** 0.5
                update = scale * grad
                rms = update.flatten(1).pow(2).mean(1).sqrt()
                if self.max_update_rms is not None:
                    factor = torch.clamp(self.max_update_rms / rms.clamp_min(1e-12), max=1.0)
                    update = update * factor.view(-1, *([1] * (update.ndim - 1)))
                    rms = rms * factor
                update_rms = float(rms[fire].mean())
                mask = fire.view(-1, *([1] * (eps.ndim - 1))).to(eps.device)
                eps = torch.where(mask, eps + update.to(device=eps.device, dtype=eps.dtype), eps)
        self._record(i, fire.cpu(), conf.cpu(), update_rms)
        return eps

    def _smooth(self, grad: torch.Tensor) -> torch.Tensor:
        if self._blur is None:
            from monai.networks.layers import GaussianFilter

            self._blur = GaussianFilter(spatial_dims=grad.ndim - 2, sigma=self.grad_blur_sigma)
        self._blur.to(grad.device)
        return self._blur(grad)

    def _record(self, i: int, fire: torch.Tensor, conf: torch.Tensor, update_rms: float) -> None:
        n_fired = int(fire.sum())
        for c in (self._run, self._total):
            for key in ("fired_per_step", "evaluated_per_step", "max_confidence_per_step",
                        "mean_update_rms_per_step"):
                while len(c[key]) <= i:
                    c[key].append(0 if key != "max_confidence_per_step" else 0.0)
            c["steps"] = max(c["steps"], i + 1) if c is self._run else c["steps"] + 1
            c["evaluated"] += int(fire.numel())
            c["fired"] += n_fired
            c["fired_per_step"][i] += n_fired
            c["evaluated_per_step"][i] += int(fire.numel())
            c["max_confidence_per_step"][i] = max(c["max_confidence_per_step"][i], float(conf.max()))
        self._run["mean_update_rms_per_step"][i] = update_rms
        if self._run_item_fired is not None and self._run_item_fired.shape == fire.shape:
            newly = fire & ~self._run_item_fired
            self._run_item_fired |= fire
            self._total["items_fired"] += int(newly.sum())
        self._run["items_fired"] = int(self._run_item_fired.sum()) if self._run_item_fired is not None else 0

    def stats(self) -> Mapping[str, Any]:
        """How often the guard fired: this run (since the last :meth:`reset`) and in total (all runs).

        ``fired`` counts item-steps where the guard changed the prediction, ``evaluated`` all item-steps,
        ``fire_rate = fired / evaluated``; ``items_fired`` counts images touched at least once;
        ``fired_per_step[i]`` is per solver step ``i``.
        """
        def view(c: Mapping[str, Any]) -> dict[str, Any]:
            out = {k: (list(v) if isinstance(v, list) else v) for k, v in c.items()}
            out["fire_rate"] = c["fired"] / c["evaluated"] if c["evaluated"] else 0.0
            out["items_fired_rate"] = c["items_fired"] / c["items"] if c["items"] else 0.0
            return out

        total = view(self._total)
        total.pop("mean_update_rms_per_step", None)
        return {"alpha": self.alpha, "strength": self.strength, "loss": self.loss,
                "timestep_range": list(self.timestep_range) if self.timestep_range else None,
                "protector": str(self.protector.path) if self.protector is not None and self.protector.path else None,
                "run": view(self._run), "total": total}

    def __repr__(self) -> str:
        return (f"CPSamplingGuard(alpha={self.alpha}, strength={self.strength}, loss={self.loss!r}, "
                f"timestep_range={self.timestep_range}, max_update_rms={self.max_update_rms}, "
                f"grad_blur_sigma={self.grad_blur_sigma})")
