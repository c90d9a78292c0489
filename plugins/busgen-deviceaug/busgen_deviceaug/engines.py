"""Cycle-consistent adversarial training (CycleGAN, Zhu et al. 2017) as a ``monai.engines.Trainer``.

MONAI's :class:`~monai.engines.GanTrainer` / :class:`~monai.engines.AdversarialTrainer` train one generator
against one discriminator. :class:`CycleGANTrainer` follows the same conventions (an ``_iteration(engine,
batchdata)`` that returns a dict of outputs and losses, ``prepare_batch``, ``amp`` with a grad scaler, custom
iteration events, handlers, ``state_dict`` through ignite) for the two-generator / two-discriminator case.

Losses for domains A (source set) and B (target device), generators ``G_AB``, ``G_BA`` and discriminators
``D_A``, ``D_B``, least-squares GAN (Mao et al. 2017):

.. math::

    L_G &= \\mathrm{MSE}(D_B(G_{AB}(a)), 1) + \\mathrm{MSE}(D_A(G_{BA}(b)), 1)
          + \\lambda_c (\\|G_{BA}(G_{AB}(a)) - a\\|_1 + \\|G_{AB}(G_{BA}(b)) - b\\|_1)
          + \\lambda_c \\lambda_i (\\|G_{AB}(b) - b\\|_1 + \\|G_{BA}(a) - a\\|_1)

    L_{D_B} &= \\tfrac12 (\\mathrm{MSE}(D_B(b), 1) + \\mathrm{MSE}(D_B(\\tilde b), 0))

with :math:`\\lambda_c = 10`, :math:`\\lambda_i = 0.5` and :math:`\\tilde b` drawn from a pool of the last 50
generated images (Shrivastava et al. 2017); likewise for ``D_A``. The generators are updated first, then both
discriminators. Discriminator gradients accumulated during the generator step are discarded (set to None)
before the discriminator step, so ``requires_grad`` is never toggled and the networks can be wrapped in
``DistributedDataParallel``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.engines.trainer import Trainer
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.inferers import SimpleInferer
from monai.losses import PatchAdversarialLoss
from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils.enums import CommonKeys
from torch.optim.optimizer import Optimizer

if TYPE_CHECKING:
    from ignite.engine import EventEnum
else:
    EventEnum, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "EventEnum", as_type="base"
    )

__all__ = [
    "CycleGANKeys",
    "CycleGANEvents",
    "CycleGANPrepareBatch",
    "ImagePool",
    "LinearDecay",
    "CycleGANTrainer",
    "loss_outputs",
    "latest_checkpoint",
]


class CycleGANKeys:
    """Keys of the dict returned by :meth:`CycleGANTrainer._iteration` (``engine.state.output``)."""

    REAL_A = "real_a"
    REAL_B = "real_b"
    FAKE_A = "fake_a"  # G_BA(real_b)
    FAKE_B = "fake_b"  # G_AB(real_a)
    REC_A = "rec_a"  # G_BA(G_AB(real_a))
    REC_B = "rec_b"  # G_AB(G_BA(real_b))
    G_LOSS = "g_loss"
    G_ADV_LOSS = "g_adv_loss"
    CYCLE_LOSS = "cycle_loss"  # |rec_a - a|_1 + |rec_b - b|_1 (unweighted)
    CYCLE_A = "cycle_a"
    CYCLE_B = "cycle_b"
    IDENTITY_LOSS = "identity_loss"  # unweighted
    D_LOSS = "d_loss"
    D_A_LOSS = "d_a_loss"
    D_B_LOSS = "d_b_loss"
    LOSS = CommonKeys.LOSS  # = g_loss, for handlers that expect "loss"

    IMAGES = (REAL_A, REAL_B, FAKE_A, FAKE_B, REC_A, REC_B)
    LOSSES = (G_LOSS, G_ADV_LOSS, CYCLE_LOSS, CYCLE_A, CYCLE_B, IDENTITY_LOSS, D_LOSS, D_A_LOSS, D_B_LOSS)


class CycleGANEvents(EventEnum):
    """Events fired inside one :class:`CycleGANTrainer` iteration (registered on the engine)."""

    GENERATOR_FORWARD_COMPLETED = "cyclegan_generator_forward_completed"
    GENERATOR_LOSS_COMPLETED = "cyclegan_generator_loss_completed"
    GENERATOR_BACKWARD_COMPLETED = "cyclegan_generator_backward_completed"
    DISCRIMINATOR_LOSS_COMPLETED = "cyclegan_discriminator_loss_completed"
    DISCRIMINATOR_BACKWARD_COMPLETED = "cyclegan_discriminator_backward_completed"


class CycleGANPrepareBatch(PrepareBatch):
    """Take the two unpaired images from a batch dict and move them to the device.

    Args:
        key_a: batch key of the domain-A images (default ``"image_a"``).
        key_b: batch key of the domain-B images (default ``"image_b"``).

    Returns ``(real_a, real_b)`` as float tensors ``(B, C, H, W)``.
    """

    def __init__(self, key_a: str = "image_a", key_b: str = "image_b") -> None:
        self.key_a = key_a
        self.key_b = key_b

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [k for k in (self.key_a, self.key_b) if k not in batchdata]
        if missing:
            raise KeyError(f"CycleGANPrepareBatch: batch has no key(s) {missing}; it has {sorted(batchdata)} "
                           "(use busgen_deviceaug.data.UnpairedDataset or set key_a/key_b)")

        def _to(x: Any) -> torch.Tensor:
            x = torch.as_tensor(x)
            if hasattr(x, "as_tensor"):
                x = x.as_tensor()
            return x.to(device=device, non_blocking=non_blocking, **kwargs).float()

        return _to(batchdata[self.key_a]), _to(batchdata[self.key_b])


class ImagePool:
    """History of generated images for the discriminator update (Shrivastava et al. 2017).

    Until the pool is full every query image is stored and returned; afterwards each image is, with
    probability 0.5, swapped for a random stored one (which it replaces), else returned as is.

    Args:
        pool_size: images kept; 0 disables the pool (queries are returned unchanged).
        seed: seed of the pool's own random generator (reproducible runs).
    """

    def __init__(self, pool_size: int = 50, seed: int = 0) -> None:
        self.pool_size = int(pool_size)
        self.images: list[torch.Tensor] = []
        self.rng = np.random.default_rng(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` detached images -> ``(B, ...)`` images for the discriminator."""
        if self.pool_size <= 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(img.clone())
                out.append(img)
            elif self.rng.random() < 0.5:
                k = int(self.rng.integers(len(self.images)))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)


class LinearDecay:
    """LR multiplier for ``torch.optim.lr_scheduler.LambdaLR``: constant, then linear decay (CycleGAN schedule).

    ``factor(e) = 1`` for the first ``n_constant`` scheduler steps (epochs), then
    ``1 - (e - n_constant + 1) / (n_decay + 1)``, never below 0.

    A class rather than a lambda so that ``LambdaLR.state_dict`` (and so checkpoints) store it.
    """

    def __init__(self, n_constant: int, n_decay: int) -> None:
        self.n_constant = int(n_constant)
        self.n_decay = int(n_decay)

    def __call__(self, epoch: int) -> float:
        if epoch < self.n_constant:
            return 1.0
        return max(0.0, 1.0 - (epoch - self.n_constant + 1) / float(self.n_decay + 1))


def loss_outputs(output: Any) -> dict[str, float] | None:
    """``output_transform`` for ``StatsHandler``/``TensorBoardStatsHandler``: the scalar losses of an iteration."""
    if isinstance(output, list):  # decollated
        output = output[0] if output else None
    if not isinstance(output, dict):
        return None
    return {k: output[k] for k in CycleGANKeys.LOSSES if k in output}


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = "checkpoint_epoch=*.pt") -> str | None:
    """Newest interval checkpoint in ``ckpt_dir`` written by ``CheckpointSaver`` (highest epoch), or None.

    Used by the bundle to resume: ``CheckpointLoader`` is enabled only when this returns a path.
    """
    from busgen_monai.engines import latest_checkpoint as _latest

    return _latest(ckpt_dir, pattern)


class CycleGANTrainer(Trainer):
    """Unpaired image-to-image translation trainer: two generators, two PatchGAN discriminators.

    Each iteration reads ``(real_a, real_b)`` with ``prepare_batch`` (unpaired images of the two domains,
    ``(B, C, H, W)`` in [-1, 1]), updates both generators with adversarial + cycle + identity losses, then both
    discriminators against real images and pooled fakes, and returns a dict (keys in :class:`CycleGANKeys`):
    the six image batches (detached) and the scalar losses (Python floats).

    Args:
        device: torch device.
        max_epochs: epochs to train (constant-LR epochs + decay epochs in the CycleGAN schedule).
        train_data_loader: loader of unpaired batches (e.g. of :class:`busgen_deviceaug.data.UnpairedDataset`).
        g_ab: generator A -> B (the translator that is exported).
        g_ba: generator B -> A.
        d_a: discriminator of domain A (real A vs G_BA(b)); its output may be a tensor or, like
            :class:`monai.networks.nets.PatchDiscriminator`, a list whose last element is the logits map.
        d_b: discriminator of domain B.
        g_optimizer: optimizer over the parameters of both generators.
        d_optimizer: optimizer over the parameters of both discriminators.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        lambda_cycle: weight of the cycle-consistency L1 loss (10).
        lambda_identity: identity-loss weight relative to ``lambda_cycle`` (0.5; 0 disables the identity pass).
        pool_size: image pool size for the discriminator updates (50; 0 disables).
        adversarial_loss: loss on discriminator outputs with the signature of
            :class:`monai.losses.PatchAdversarialLoss` ``(logits, target_is_real, for_discriminator)``;
            default least-squares (LSGAN) without extra activation.
        cycle_loss: reconstruction loss (default L1).
        non_blocking, prepare_batch, iteration_update, postprocessing, key_train_metric, additional_metrics,
        metric_cmp_fn, train_handlers, amp, event_names, event_to_attr, decollate, to_kwargs, amp_kwargs:
            as in :class:`monai.engines.SupervisedTrainer`. ``decollate`` defaults to False so that
            ``engine.state.output`` keeps batch tensors (used by the sample-grid handler).
        optim_set_to_none: ``zero_grad(set_to_none=...)`` for the generator optimizer.
        pool_seed: seed of the image pools.
        g_inferer: inferer running the generators (default ``monai.inferers.SimpleInferer``).
        d_inferer: inferer running the discriminators (default ``SimpleInferer``).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        g_ab: torch.nn.Module,
        g_ba: torch.nn.Module,
        d_a: torch.nn.Module,
        d_b: torch.nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        epoch_length: int | None = None,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        pool_size: int = 50,
        adversarial_loss: Callable | None = None,
        cycle_loss: Callable | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = CycleGANPrepareBatch(),
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        pool_seed: int = 0,
        g_inferer: Any | None = None,
        d_inferer: Any | None = None,
    ) -> None:
        from monai.engines.utils import default_metric_cmp_fn

        event_names = list(event_names or []) + [CycleGANEvents]
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn or default_metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        if lambda_cycle < 0 or lambda_identity < 0:
            raise ValueError("lambda_cycle and lambda_identity must be >= 0")
        self.g_ab, self.g_ba, self.d_a, self.d_b = g_ab, g_ba, d_a, d_b
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.lambda_cycle = float(lambda_cycle)
        self.lambda_identity = float(lambda_identity)
        self.adversarial_loss = adversarial_loss or PatchAdversarialLoss(
            criterion="least_squares", no_activation_leastsq=True
        )
        self.cycle_loss = cycle_loss or torch.nn.L1Loss()
        self.pool_a = ImagePool(pool_size, seed=pool_seed)
        self.pool_b = ImagePool(pool_size, seed=pool_seed + 1)
        self.optim_set_to_none = optim_set_to_none
        self.g_inferer = SimpleInferer() if g_inferer is None else g_inferer
        self.d_inferer = SimpleInferer() if d_inferer is None else d_inferer

    @staticmethod
    def _logits(out: Any) -> Any:
        return out[-1] if isinstance(out, (list, tuple)) else out

    def _adv(self, disc: torch.nn.Module, x: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
        logits = self._logits(self.d_inferer(x, disc))
        return self.adversarial_loss(logits, target_is_real=real, for_discriminator=for_discriminator)

    def _autocast(self, enabled: bool) -> Any:
        return torch.autocast("cuda", **self.amp_kwargs) if enabled else contextlib.nullcontext()

    def _iteration(self, engine: CycleGANTrainer, batchdata: dict) -> dict[str, Any]:
        """One CycleGAN step: generators, then discriminators. Returns images (detached) and scalar losses."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        real_a, real_b = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        K = CycleGANKeys
        engine.state.output = {K.REAL_A: real_a, K.REAL_B: real_b}
        for net in (engine.g_ab, engine.g_ba, engine.d_a, engine.d_b):
            net.train()
        use_amp = engine.amp and engine.scaler is not None
        lam_c, lam_i = engine.lambda_cycle, engine.lambda_cycle * engine.lambda_identity

        # ---- generators
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast(use_amp):
            g_ab = lambda x: engine.g_inferer(x, engine.g_ab)  # noqa: E731
            g_ba = lambda x: engine.g_inferer(x, engine.g_ba)  # noqa: E731
            fake_b = g_ab(real_a)
            rec_a = g_ba(fake_b)
            fake_a = g_ba(real_b)
            rec_b = g_ab(fake_a)
            engine.state.output.update({K.FAKE_A: fake_a, K.FAKE_B: fake_b, K.REC_A: rec_a, K.REC_B: rec_b})
            engine.fire_event(CycleGANEvents.GENERATOR_FORWARD_COMPLETED)
            adv = engine._adv(engine.d_b, fake_b, True, False) + engine._adv(engine.d_a, fake_a, True, False)
            cyc_a = engine.cycle_loss(rec_a, real_a)
            cyc_b = engine.cycle_loss(rec_b, real_b)
            if lam_i > 0:
                idt = engine.cycle_loss(g_ab(real_b), real_b) + engine.cycle_loss(g_ba(real_a), real_a)
            else:
                idt = torch.zeros((), device=real_a.device)
            g_loss = adv + lam_c * (cyc_a + cyc_b) + lam_i * idt
        engine.fire_event(CycleGANEvents.GENERATOR_LOSS_COMPLETED)
        if use_amp:
            engine.scaler.scale(g_loss).backward()
            engine.fire_event(CycleGANEvents.GENERATOR_BACKWARD_COMPLETED)
            engine.scaler.step(engine.g_optimizer)
        else:
            g_loss.backward()
            engine.fire_event(CycleGANEvents.GENERATOR_BACKWARD_COMPLETED)
            engine.g_optimizer.step()

        # ---- discriminators (gradients from the generator step are dropped first)
        engine.d_optimizer.zero_grad(set_to_none=True)
        pooled_b = engine.pool_b.query(fake_b.detach())
        pooled_a = engine.pool_a.query(fake_a.detach())
        with engine._autocast(use_amp):
            d_b_loss = 0.5 * (engine._adv(engine.d_b, real_b, True, True) + engine._adv(engine.d_b, pooled_b, False, True))
            d_a_loss = 0.5 * (engine._adv(engine.d_a, real_a, True, True) + engine._adv(engine.d_a, pooled_a, False, True))
            d_loss = d_a_loss + d_b_loss
        engine.fire_event(CycleGANEvents.DISCRIMINATOR_LOSS_COMPLETED)
        if use_amp:
            engine.scaler.scale(d_loss).backward()
            engine.fire_event(CycleGANEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
            engine.scaler.step(engine.d_optimizer)
            engine.scaler.update()
        else:
            d_loss.backward()
            engine.fire_event(CycleGANEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
            engine.d_optimizer.step()

        out = engine.state.output
        for k in K.IMAGES:
            out[k] = out[k].detach()
        out.update({
            K.G_LOSS: g_loss.item(),
            K.LOSS: g_loss.item(),
            K.G_ADV_LOSS: adv.item(),
            K.CYCLE_A: cyc_a.item(),
            K.CYCLE_B: cyc_b.item(),
            K.CYCLE_LOSS: cyc_a.item() + cyc_b.item(),
            K.IDENTITY_LOSS: idt.item(),
            K.D_A_LOSS: d_a_loss.item(),
            K.D_B_LOSS: d_b_loss.item(),
            K.D_LOSS: d_loss.item(),
        })
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
