"""CycleGAN pieces: generator, image pool, LR schedule, and the trainer's iteration contract."""

from __future__ import annotations

import pytest
import torch

from monai.networks.nets import PatchDiscriminator  # noqa: E402

from busgen_deviceaug.engines import (  # noqa: E402
    CycleGANEvents,
    CycleGANKeys,
    CycleGANPrepareBatch,
    CycleGANTrainer,
    ImagePool,
    LinearDecay,
    latest_checkpoint,
    loss_outputs,
)
from busgen_deviceaug.networks import CycleGANGenerator, ResidualBlock, build_generator  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_generator_shapes_range_and_rebuild(upsample):
    g = CycleGANGenerator(channels=4, num_res_blocks=2, upsample=upsample)
    y = g(torch.randn(2, 3, 32, 24))
    assert y.shape == (2, 3, 32, 24) and y.abs().max() <= 1
    assert sum(isinstance(m, ResidualBlock) for m in g.modules()) == 2
    g2 = build_generator({"_target_": "busgen_deviceaug.networks.CycleGANGenerator", **g.config})
    g2.load_state_dict(g.state_dict())
    g.eval(), g2.eval()
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(g(x), g2(x))


def test_generator_exports_with_monai_ckpt_export(tmp_path):
    """MONAI's ckpt_export (torch.jit.script) on the bundle's network_def: the TorchScript file gives the same output."""
    from monai.bundle import ckpt_export

    from busgen_monai.plugins import discover_plugins

    bundle = discover_plugins()["deviceaug"].bundle_paths()["device_cyclegan"]
    g = CycleGANGenerator(channels=4, num_res_blocks=1).eval()
    torch.save(g.state_dict(), tmp_path / "g.pt")
    cfg = tmp_path / "net.json"
    cfg.write_text('{"network_def": {"_target_": "busgen_deviceaug.networks.CycleGANGenerator", "channels": 4, '
                   '"num_res_blocks": 1}}')
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "g.ts"), ckpt_file=str(tmp_path / "g.pt"),
                config_file=str(cfg), meta_file=str(bundle / "configs" / "metadata.json"), use_trace=False)
    ts = torch.jit.load(str(tmp_path / "g.ts"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ts(x), g(x), rtol=0, atol=0)
    with pytest.raises(Exception, match="divisible by 4"):
        ts(torch.zeros(1, 3, 30, 32))


def test_generator_rejects_bad_sizes_and_args():
    with pytest.raises(ValueError, match="divisible by 4"):
        CycleGANGenerator(channels=4, num_res_blocks=1)(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="upsample"):
        CycleGANGenerator(upsample="bicubic")


def test_image_pool():
    pool = ImagePool(pool_size=3, seed=0)
    first = torch.arange(3.0).view(3, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as is
    out = pool.query(torch.full((20, 1), 9.0))
    assert out.shape == (20, 1)
    assert 0 < int((out != 9).sum()) < 20  # about half swapped for history
    assert torch.equal(ImagePool(0).query(first), first)


def test_linear_decay():
    f = LinearDecay(n_constant=3, n_decay=4)
    assert [f(e) for e in range(3)] == [1.0, 1.0, 1.0]
    assert [round(f(e), 3) for e in range(3, 8)] == [0.8, 0.6, 0.4, 0.2, 0.0]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    assert "lr_lambdas" in sched.state_dict()  # a class, so checkpoints store it


def test_prepare_batch_names_missing_keys():
    with pytest.raises(KeyError, match="image_b"):
        CycleGANPrepareBatch()({"image_a": torch.zeros(1, 3, 8, 8)})


def _trainer(n_iter=3, **kwargs):
    torch.manual_seed(0)
    gs = [CycleGANGenerator(channels=4, num_res_blocks=1) for _ in range(2)]
    ds = [PatchDiscriminator(2, 8, 3, num_layers_d=2, norm="INSTANCE") for _ in range(2)]
    og = torch.optim.Adam([p for g in gs for p in g.parameters()], 2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam([p for d in ds for p in d.parameters()], 2e-4, betas=(0.5, 0.999))
    data = [{"image_a": torch.rand(2, 3, 16, 16) * 2 - 1, "image_b": torch.rand(2, 3, 16, 16) * 2 - 1}
            for _ in range(n_iter)]
    return CycleGANTrainer("cpu", 1, data, gs[0], gs[1], ds[0], ds[1], og, od, **kwargs)


def test_trainer_iteration_outputs_and_events():
    trainer = _trainer()
    fired = []
    for ev in CycleGANEvents:
        trainer.add_event_handler(ev, lambda e, ev=ev: fired.append(ev))
    d_before = [p.clone() for p in trainer.d_a.parameters()]
    g_before = [p.clone() for p in trainer.g_ab.parameters()]
    trainer.run()
    out = trainer.state.output
    for k in CycleGANKeys.IMAGES:
        assert out[k].shape == (2, 3, 16, 16) and not out[k].requires_grad
    for k in CycleGANKeys.LOSSES:
        assert isinstance(out[k], float)
    assert out[CycleGANKeys.LOSS] == out[CycleGANKeys.G_LOSS]
    assert out[CycleGANKeys.CYCLE_LOSS] == pytest.approx(out[CycleGANKeys.CYCLE_A] + out[CycleGANKeys.CYCLE_B])
    assert out[CycleGANKeys.G_LOSS] == pytest.approx(
        out[CycleGANKeys.G_ADV_LOSS] + 10 * out[CycleGANKeys.CYCLE_LOSS] + 5 * out[CycleGANKeys.IDENTITY_LOSS], rel=1e-4)
    assert fired.count(CycleGANEvents.GENERATOR_FORWARD_COMPLETED) == 3
    assert fired.count(CycleGANEvents.DISCRIMINATOR_BACKWARD_COMPLETED) == 3
    assert any(not torch.equal(a, b) for a, b in zip(d_before, trainer.d_a.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.g_ab.parameters()))
    assert set(loss_outputs(out)) == set(CycleGANKeys.LOSSES)
    assert len(trainer.pool_a.images) == 6


def test_trainer_without_identity_loss():
    trainer = _trainer(n_iter=1, lambda_identity=0.0, pool_size=0)
    trainer.run()
    assert trainer.state.output[CycleGANKeys.IDENTITY_LOSS] == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        _trainer(lambda_cycle=-1)


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for e in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={e}.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")
