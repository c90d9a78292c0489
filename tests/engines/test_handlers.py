"""Handlers: gradient clipping, EMA, LR schedule, sample grid, checkpoint helpers."""

from __future__ import annotations

import os
import time

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import DiffusionInferer
from PIL import Image

from busgen_monai import presets
from busgen_monai.engines import (
    ConditionalDiffusionPrepareBatch,
    EMAHandler,
    GradientClipHandler,
    ResumeCheckpointLoader,
    SampleGridHandler,
    TrainerCheckpointSaver,
    latest_checkpoint,
    unwrap_network,
    warmup_cosine_schedule,
)
from busgen_monai.networks import ConditionCodec


def _tiny(codec=None):
    torch.manual_seed(0)
    return presets.build_network("tiny", codec or ConditionCodec())


def _random_loader(codec, n=4, size=16):
    gen = torch.Generator().manual_seed(0)
    cond = codec.pack_names(["benign", "malignant"] * (n // 2), ["GE-LOGIQ-E9"] * n, boxes=[[[0.2, 0.2, 0.6, 0.6]]] * n)
    return [{"image": torch.rand(n, 1, size, size, generator=gen) * 2 - 1, "cond": cond[:, 0]}] * 2  # grey


def test_gradient_clip_bounds_the_step_norm():
    codec = ConditionCodec()
    net = _tiny(codec)
    norms = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=_random_loader(codec), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.MSELoss(),
        inferer=DiffusionInferer(presets.build_scheduler("tiny")), prepare_batch=ConditionalDiffusionPrepareBatch(500),
        train_handlers=[GradientClipHandler(max_norm=1e-3)],
    )

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def measure(engine):  # attached after the clip handler: sees the clipped gradients
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])))

    trainer.run()
    assert len(norms) == 4 and max(norms) <= 1e-3 * 1.001
    assert trainer.state.grad_norm > 1e-3  # the recorded pre-clip norm


def test_ema_follows_the_update_rule_and_saves():
    net = torch.nn.Linear(3, 2)
    ema = EMAHandler(net, decay=0.9, warmup=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema()  # first update copies
    assert torch.equal(ema.module.weight, net.weight)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema()
    assert torch.allclose(ema.module.weight, torch.full((2, 3), 1.1))
    state = ema.state_dict()
    other = EMAHandler(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.module.weight, ema.module.weight)
    assert int(state["n_averaged"]) == 2
    # warm-up: decay_t = min(decay, (1 + n) / (10 + n)) -> the second update uses 2 / 11
    warm = EMAHandler(net, decay=0.999)
    with torch.no_grad():
        net.weight.fill_(0.0)
    warm()
    with torch.no_grad():
        net.weight.fill_(11.0)
    warm()
    assert torch.allclose(warm.module.weight, torch.full((2, 3), 9.0))
    off = EMAHandler(net, decay=0.0)
    assert not off.enabled and off.module is net and off.state_dict() == {}
    ddp_like = torch.nn.DataParallel(net)
    assert unwrap_network(ddp_like) is net


def test_warmup_cosine_schedule_and_resume_keeps_configured_shape():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.5625e-5)
    sched = warmup_cosine_schedule(opt, total_steps=100, warmup_fraction=0.1, warmup_multiplier=0.4)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.4 * 1.5625e-5)  # BUSGen: 6.25e-6 warmed up x2.5
    assert max(lrs) == pytest.approx(1.5625e-5, rel=1e-3) and lrs.index(max(lrs)) == 10
    assert lrs[-1] < 0.01 * 1.5625e-5
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.5625e-5)
    longer = warmup_cosine_schedule(opt2, total_steps=200, warmup_fraction=0.1, warmup_multiplier=0.4)
    longer.load_state_dict(state)
    assert longer.t_total == 200 and longer.last_epoch == 100  # position from the checkpoint, shape from config


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None and latest_checkpoint(tmp_path) is None
    for name in ("checkpoint_iteration=20.pt", "checkpoint_iteration=100.pt", "checkpoint_final_iteration=60.pt"):
        (tmp_path / name).write_bytes(b"x")
        time.sleep(0.01)
    assert os.path.basename(latest_checkpoint(tmp_path)) == "checkpoint_iteration=100.pt"


def test_checkpoint_handlers_reject_explicit_engine_and_noop_without_path(tmp_path):
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="adds the engine"):
        TrainerCheckpointSaver(str(tmp_path), {"network": net, "trainer": net}, save_final=True)
    loader = ResumeCheckpointLoader(None, {"network": net})
    assert not loader.enabled
    from ignite.engine import Engine, Events

    engine = Engine(lambda e, b: None)
    loader.attach(engine)
    assert not engine.has_event_handler(loader, Events.STARTED)


def test_sample_grid_is_deterministic_and_saved(tmp_path):
    codec = ConditionCodec()
    net = _tiny(codec)
    handler = SampleGridHandler(
        net, codec, presets.build_scheduler("tiny", "ddim"), tmp_path, image_size=16,
        devices=["GE-LOGIQ-E9", "Philips-EPIQ7", "Mindray-M9"], num_inference_steps=3, seed=5,
    )
    cond, labels = handler.conditions()
    assert cond.shape[0] == 6 and labels[0] == "benign / GE-LOGIQ-E9" and labels[-1] == "malignant / Mindray-M9"
    a, b = handler.sample(), handler.sample()
    assert a.shape == (6, 1, 16, 16) and torch.equal(a, b)  # the network's channel count: grey
    assert net.training  # restored after sampling

    class _State:
        iteration = 7

    class _Engine:
        state = _State()

    handler(_Engine())
    png = tmp_path / "grid_iteration=0000007.png"
    assert png.is_file() and (tmp_path / "grid_latest.png").is_file()
    with Image.open(png) as im:
        assert im.size[0] > 100
