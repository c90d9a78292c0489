"""ConditionalDiffusionUNet: MONAI compatibility, every condition changes the output, null handling, presets."""

from __future__ import annotations

import time

import pytest
import torch
from monai.inferers import DiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from busgen_monai import presets
from busgen_monai.networks import ConditionalDiffusionUNet, ConditionCodec, count_parameters, pack_conditions

@pytest.fixture(autouse=True)
def _single_torch_thread(request):
    """Small CPU workloads: one intra-op thread is faster than two on cores shared with other jobs."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TINY = dict(channels=(16, 32), num_res_blocks=1, attention_levels=(False, False), norm_num_groups=8,
            num_head_channels=16)


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """MONAI zero-initialises the last conv of every block and of the output: a fresh network ignores its inputs.
    Give every all-zero weight random values so that input changes reach the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net.eval()


def _net(**kwargs) -> ConditionalDiffusionUNet:
    torch.manual_seed(0)
    args = {**TINY, "image_channels": 3, "num_device_embeds": 40, **kwargs}  # the RGB option (grey: tests below)
    return _randomize(ConditionalDiffusionUNet(**args))


def _cond(pathology=1, device=3, birads=4, boxes=((0.2, 0.2, 0.6, 0.7),), batch=2):
    return pack_conditions([pathology] * batch, [device] * batch, [birads] * batch, [list(boxes)] * batch,
                           max_boxes=4)


def test_is_a_monai_diffusion_unet_with_mask_channel():
    net = _net()
    assert isinstance(net, DiffusionModelUNet)
    assert net.in_channels == 4 and net.out_channels == 3  # image + box mask -> epsilon
    assert _net(box_condition="fourier").in_channels == 3
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.tensor([1, 400]), context=_cond()).shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"box_condition": "mask", "condition_injection": "project"},
        {"box_condition": "fourier", "condition_injection": "add"},
        {"box_condition": "both", "cross_attention": True, "attention_levels": (False, True)},
        {"box_condition": "none", "conditions": ("pathology",)},
    ],
)
def test_trains_and_samples_with_stock_monai_inferer(kwargs):
    net = _net(**kwargs)
    sched = DDPMScheduler(500, schedule="linear_beta", beta_start=1e-4, beta_end=0.028)
    inferer = DiffusionInferer(sched)
    x = torch.randn(2, 3, 16, 16)
    net.train()
    pred = inferer(x, net, noise=torch.randn_like(x), timesteps=torch.tensor([3, 300]), condition=_cond())
    torch.nn.functional.mse_loss(pred, x).backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if "condition_embedding" in n
               and "box_embedding" not in n and "birads" not in n)
    ddim = DDIMScheduler(500, schedule="linear_beta", beta_start=1e-4, beta_end=0.028)
    ddim.set_timesteps(3)
    out = inferer.sample(torch.randn(2, 3, 16, 16), net.eval(), scheduler=ddim, conditioning=_cond(), cfg=2.8,
                         cfg_fill_value=-1.0, verbose=False)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("box_condition", ["mask", "fourier"])
def test_each_condition_changes_the_output(box_condition):
    net = _net(box_condition=box_condition, conditions=("pathology", "device", "birads"))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([50, 250])
    with torch.no_grad():
        base = net(x, t, context=_cond())
        changed = {
            "pathology": net(x, t, context=_cond(pathology=2)),
            "device": net(x, t, context=_cond(device=7)),
            "birads": net(x, t, context=_cond(birads=9)),
            "boxes": net(x, t, context=_cond(boxes=((0.5, 0.1, 0.9, 0.4),))),
            "null": net(x, t, context=torch.full_like(_cond(), -1.0)),
        }
        again = net(x, t, context=_cond())
    assert torch.equal(base, again)  # deterministic in eval mode
    for name, out in changed.items():
        assert (out - base).abs().max() > 1e-4, f"{name} does not change the output"


def test_null_forms_agree():
    net = _net(conditions=("pathology", "device", "birads"))
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 20])
    with torch.no_grad():
        ref = net(x, t, context=torch.full((2, 1, 19), -1.0))
        assert torch.allclose(net(x, t), ref)
        assert torch.allclose(net(x, t, context=pack_conditions(batch_size=2, max_boxes=1)), ref)
        # class_labels: packed tensor, or (B,) pathology ids; a dict works as context
        packed = _cond()
        assert torch.allclose(net(x, t, class_labels=packed), net(x, t, context=packed))
        ids = torch.tensor([1, 2])
        assert torch.allclose(net(x, t, class_labels=ids), net(x, t, context=pack_conditions(pathology=ids)))
        as_dict = {"pathology": torch.tensor([1, 1]), "device": torch.tensor([3, 3]), "birads": torch.tensor([4, 4]),
                   "boxes": torch.tensor([[[0.2, 0.2, 0.6, 0.7]]] * 2)}
        assert torch.allclose(net(x, t, context=as_dict), net(x, t, context=packed))
        # a 4-channel input (mask already concatenated) equals letting the network draw the mask
        parts_mask = net.box_mask(net._conditions(packed, None, 2, x.device), (16, 16))
        assert torch.allclose(net(torch.cat([x, parts_mask], 1), t, context=packed), net(x, t, context=packed))
        # one condition row broadcasts over the batch, a (1,) timestep too
        assert torch.allclose(net(x, torch.tensor([10]), context=packed[:1]),
                              net(x, torch.tensor([10, 10]), context=packed), atol=1e-5)
    with pytest.raises(ValueError, match="either as `context` or as `class_labels`"):
        net(x, t, context=packed, class_labels=packed)


def test_out_of_range_id_names_the_table():
    net = _net(num_device_embeds=5)
    with pytest.raises(IndexError, match=r"device id 7 .*\(5 rows"):
        net(torch.randn(1, 3, 16, 16), torch.tensor([1]), context=pack_conditions([1], [7]))


def test_dropout_only_in_training_mode():
    net = _net(dropout=0.5)
    x = torch.randn(1, 3, 16, 16)
    t = torch.tensor([5])
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x, t, context=_cond(batch=1)), net(x, t, context=_cond(batch=1)))
        net.train()
        assert not torch.equal(net(x, t, context=_cond(batch=1)), net(x, t, context=_cond(batch=1)))
    keys = set(net.state_dict())
    assert "down_blocks.0.resnets.0.conv2.conv.weight" in keys  # MONAI names kept


def test_project_injection_gives_each_block_its_own_condition_projection():
    net = _net(condition_injection="project")
    ted = 16 * 4
    projs = [m.time_emb_proj for m in net.modules() if hasattr(m, "time_emb_proj")]
    assert projs and all(p.in_features == 2 * ted for p in projs)
    add = _net(condition_injection="add")
    assert all(m.time_emb_proj.in_features == ted for m in add.modules() if hasattr(m, "time_emb_proj"))


def test_presets_and_paper_parameter_count():
    codec = ConditionCodec()
    for name in presets.PRESET_NAMES:
        p = presets.get_preset(name)
        assert p["num_train_timesteps"] == 500 and (p["beta_start"], p["beta_end"]) == (1e-4, 0.028)
        assert p["guidance_w"] == 1.8
    paper = presets.build_network("paper", codec)
    n = count_parameters(paper)
    assert 45e6 <= n <= 55e6, n
    assert list(paper.block_out_channels) == [128, 256, 256, 256] and presets.get_preset("paper")["image_size"] == 160
    assert count_parameters(presets.build_network("tiny", codec)) < 1e6
    betas = presets.build_scheduler("paper").betas
    assert torch.allclose(betas[[0, -1]], torch.tensor([1e-4, 0.028]))
    with pytest.raises(KeyError, match="choose one of"):
        presets.get_preset("huge")
    with pytest.raises(KeyError, match="no keys"):
        presets.get_preset("tiny", chanels=[8])


@pytest.mark.slow
def test_paper_preset_train_step_on_cpu_160px():
    """One AdamW step of the ~46 M-parameter paper network at 160 px on CPU (about 35 s on 2 free cores)."""
    codec = ConditionCodec()
    torch.manual_seed(0)
    net = presets.build_network("paper", codec)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    x = torch.randn(1, 1, 160, 160)  # grey B-mode, the preset's default
    cond = codec.pack_names(["malignant"], ["GE-LOGIQ-E9"], boxes=[[[0.3, 0.3, 0.6, 0.5]]])
    t0 = time.perf_counter()
    pred = DiffusionInferer(presets.build_scheduler("paper"))(x, net, noise=torch.randn_like(x),
                                                              timesteps=torch.tensor([250]), condition=cond)
    loss = torch.nn.functional.mse_loss(pred, torch.randn_like(x))
    loss.backward()
    before = net.conv_in.conv.weight.detach().clone()
    opt.step()
    assert pred.shape == (1, 1, 160, 160) and torch.isfinite(loss)
    assert not torch.equal(before, net.conv_in.conv.weight)
    print(f"paper preset CPU step: {time.perf_counter() - t0:.1f} s")


def test_grey_is_the_default_and_init_args_rebuild_the_network():
    """Every preset trains on grey B-mode: one image channel in, one out (no colour channel that could drift); the
    constructor arguments recorded on the network rebuild an identical network (they travel with the weights)."""
    for name in presets.PRESET_NAMES:
        assert presets.get_preset(name)["image_channels"] == 1, name
    net = _net(image_channels=1)
    assert net.in_channels == 2 and net.out_channels == 1  # grey image + box mask -> epsilon
    out = net(torch.randn(2, 1, 16, 16), torch.tensor([3, 300]), context=_cond())
    assert out.shape == (2, 1, 16, 16)
    twin = ConditionalDiffusionUNet(**net.init_args)
    twin.load_state_dict(net.state_dict())
    assert twin.init_args == net.init_args and net.init_args["image_channels"] == 1
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 5])
    assert torch.equal(twin.eval()(x, t, context=_cond()), net(x, t, context=_cond()))
