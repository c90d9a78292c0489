"""End-to-end training on MONAI's SupervisedTrainer with the phantom: the loss goes down, and a resumed run
continues the iteration count and the optimizer/scheduler/EMA state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.inferers import DiffusionInferer

from busgen_monai import presets
from busgen_monai.data.dataset import ClassBalancedSampler, build_dataset, datalist_items
from busgen_monai.data.schema import load_datalist
from busgen_monai.data.transforms import bus_train_transforms
from busgen_monai.engines import (
    ConditionalDiffusionPrepareBatch,
    DiffusionValidationLossHandler,
    EMAHandler,
    GradientClipHandler,
    ResumeCheckpointLoader,
    TrainerCheckpointSaver,
    first_batch,
    latest_checkpoint,
    warmup_cosine_schedule,
)
from busgen_monai.networks import ConditionCodec


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from busgen_monai.data.phantom import write_dataset

    return load_datalist(write_dataset(tmp_path_factory.mktemp("phantom"), n=40, seed=0, size=(48, 48)))


def _setup(phantom, max_epochs, ckpt_dir=None, resume=False, seed=0):
    """The pretrain bundle's training set-up in Python (tiny preset, 32 px)."""
    torch.manual_seed(seed)
    p = presets.get_preset("tiny")
    codec = ConditionCodec.from_datalist(phantom)
    items = datalist_items(phantom, "training")
    ds = build_dataset(items, bus_train_transforms(codec, p["image_size"]))
    ds.transform.set_random_state(seed)
    loader = DataLoader(ds, batch_size=p["batch_size"], sampler=ClassBalancedSampler(items, seed=seed), num_workers=0)
    net = presets.build_network(p, codec)
    scheduler = presets.build_scheduler(p)
    opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    lr_sched = warmup_cosine_schedule(opt, max_epochs * len(loader), warmup_fraction=p["warmup_fraction"],
                                      warmup_multiplier=p["warmup_multiplier"])
    ema = EMAHandler(net, decay=p["ema_decay"])
    val_ds = build_dataset(datalist_items(phantom, "validation"), bus_train_transforms(codec, 32, augment=False))
    val = DiffusionValidationLossHandler(net, scheduler, first_batch(val_ds, 4), interval=1)
    prepare = ConditionalDiffusionPrepareBatch(p["num_train_timesteps"], drop_prob=0.1)
    state = {"network": net, "optimizer": opt, "lr_scheduler": lr_sched, "ema": ema, "codec": codec}
    handlers = [
        ResumeCheckpointLoader(latest_checkpoint(ckpt_dir) if resume else None, state),
        LrScheduleHandler(lr_sched, epoch_level=False, print_lr=False),
        GradientClipHandler(p["grad_clip"]),
        ema,
        val,
    ]
    if ckpt_dir is not None:
        handlers.append(TrainerCheckpointSaver(str(ckpt_dir), state, save_interval=4, epoch_level=False,
                                               save_final=True, n_saved=None))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader, network=net, optimizer=opt,
        loss_function=torch.nn.MSELoss(), inferer=DiffusionInferer(scheduler), prepare_batch=prepare,
        train_handlers=handlers,
    )
    return trainer, state, val, prepare


def test_tiny_training_lowers_the_fixed_validation_loss(phantom):
    trainer, _, val, prepare = _setup(phantom, max_epochs=6)
    trainer.run()
    losses = [loss for _, loss in val.history]
    assert val.history[0][0] == 0 and len(losses) == 7  # before training, then after every epoch
    assert losses[0] > 0.9  # zero-initialised output: MSE of the noise
    assert losses[-1] < 0.6 * losses[0], losses
    assert trainer.state.metrics["val_loss"] == losses[-1]
    assert prepare.num_items == 6 * len(trainer.data_loader.dataset)  # every item went through the dropout


def test_resume_continues_iteration_and_optimizer_state(phantom, tmp_path):
    ckpt_dir = tmp_path / "models"
    first, state1, _, _ = _setup(phantom, max_epochs=2, ckpt_dir=ckpt_dir)
    first.run()
    its = first.state.iteration
    assert its == 2 * len(first.data_loader)
    saved = Path(latest_checkpoint(ckpt_dir))
    assert saved.name == f"checkpoint_final_iteration={its}.pt"
    ckpt = torch.load(saved, weights_only=True)
    assert set(ckpt) == {"network", "optimizer", "lr_scheduler", "ema", "codec", "trainer"}
    assert ckpt["codec"]["pathologies"] == ["benign", "malignant"]
    assert "PhantomMed-C5" in [d["name"] for d in ckpt["codec"]["device_vocabulary"]["devices"]]

    second, state2, _, _ = _setup(phantom, max_epochs=3, ckpt_dir=ckpt_dir, resume=True, seed=1)
    seen = {}

    @second.on(Events.STARTED)
    def after_resume(engine):  # attached after the loader: sees the restored state
        opt_state = state2["optimizer"].state_dict()["state"]
        seen["iteration"] = engine.state.iteration
        seen["step"] = int(opt_state[0]["step"])
        seen["exp_avg_equal"] = all(
            torch.equal(opt_state[k]["exp_avg"], ckpt["optimizer"]["state"][k]["exp_avg"]) for k in opt_state
        )
        seen["net_equal"] = all(torch.equal(v, ckpt["network"][k]) for k, v in state2["network"].state_dict().items())
        seen["sched_epoch"] = state2["lr_scheduler"].last_epoch
        seen["ema_n"] = int(state2["ema"].averaged.n_averaged)

    first_iteration = []
    second.add_event_handler(Events.ITERATION_STARTED(once=its + 1),
                             lambda e: first_iteration.append(e.state.iteration))
    second.run()
    assert seen == {"iteration": its, "step": its, "exp_avg_equal": True, "net_equal": True, "sched_epoch": its,
                    "ema_n": its}
    assert first_iteration == [its + 1]
    assert second.state.iteration == 3 * len(second.data_loader)
    assert int(state2["optimizer"].state_dict()["state"][0]["step"]) == second.state.iteration
    assert latest_checkpoint(ckpt_dir).endswith(f"final_iteration={second.state.iteration}.pt")
