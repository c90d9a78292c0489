"""ConditionalDiT: shapes, adaLN-Zero identity at init, the null class (CFG batched == two passes), conditions reach
the output, the U-Net's condition contract, init_args round trip, MONAI's DiffusionInferer drives it."""

from __future__ import annotations

import json

import pytest
import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler

from busgen_monai.inferers import GuidedDiffusionInferer
from busgen_monai.networks import GENERATOR_NETWORKS, ConditionalDiT, ConditionCodec, DiTBlock, pack_conditions

TINY = dict(in_channels=4, input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4,
            conditions=("pathology", "device", "birads"))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """adaLN-Zero and the final layer start at zero (the network outputs 0); give those weights random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def _cond(b: int = 3) -> torch.Tensor:
    return pack_conditions([1, 2, 1][:b], [3, 0, 1][:b], [4, 6, 9][:b], [[[.2, .2, .5, .5]], [], []][:b], max_boxes=2)


def test_output_shape_and_patch_grid():
    torch.manual_seed(0)
    net = _randomize(ConditionalDiT(**TINY))
    x = torch.randn(3, 4, 8, 8)
    out = net(x, torch.tensor([5, 100, 400]), context=_cond())
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert net.patch_embed.n_patches == 16  # (8 / 2) ** 2 tokens
    with pytest.raises(ValueError, match="built for 8x8"):
        net(torch.randn(1, 4, 16, 16), torch.tensor([1]))


def test_adaln_zero_block_is_identity_and_network_outputs_zero_at_init():
    torch.manual_seed(0)
    net = ConditionalDiT(**TINY)
    h = torch.randn(2, 16, 32)
    c = torch.randn(2, 32)
    for block in net.blocks:
        assert isinstance(block, DiTBlock)
        assert torch.equal(block(h, c), h)
    out = net(torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), context=_cond(2))
    assert torch.equal(out, torch.zeros_like(out))
    # after training moves the modulation away from zero the block is no longer the identity
    _randomize(net)
    assert not torch.allclose(net.blocks[0](h, c), h)


def test_every_condition_and_the_timestep_change_the_output():
    torch.manual_seed(0)
    net = _randomize(ConditionalDiT(**TINY)).eval()
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([50])
    base = net(x, t, context=pack_conditions([1], [2], [4]))
    for other in (pack_conditions([2], [2], [4]), pack_conditions([1], [3], [4]), pack_conditions([1], [2], [5])):
        assert not torch.allclose(net(x, t, context=other), base)
    assert not torch.allclose(net(x, torch.tensor([300]), context=pack_conditions([1], [2], [4])), base)
    # a BI-RADS-only network ignores pathology and device
    only = _randomize(ConditionalDiT(**{**TINY, "conditions": ("birads",)})).eval()
    a = only(x, t, context=pack_conditions([1], [2], [4]))
    assert torch.allclose(only(x, t, context=pack_conditions([2], [5], [4])), a)
    assert not torch.allclose(only(x, t, context=pack_conditions([1], [2], [0])), a)


def test_null_class_is_row_zero_and_the_full_minus_one_condition():
    torch.manual_seed(0)
    net = _randomize(ConditionalDiT(**TINY)).eval()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 20])
    null = net(x, t, context=torch.full_like(_cond(2), -1.0))
    assert torch.allclose(net(x, t, context=None), null)
    assert torch.allclose(net(x, t, context=pack_conditions([0, 0], [0, 0], [0, 0], max_boxes=1)), null)
    # the null rows are learned vectors (DiT), not fixed zeros
    assert all(table.weight[0].abs().sum() > 0 for table in net.class_embed.values())


def test_cfg_batched_equals_two_passes():
    torch.manual_seed(0)
    net = _randomize(ConditionalDiT(**TINY)).eval()
    x = torch.randn(3, 4, 8, 8)
    cond = _cond()
    sched = DDPMScheduler(num_train_timesteps=100)
    outs = []
    for batched in (True, False):
        inferer = GuidedDiffusionInferer(sched, guidance_scale=1.8, batched_cfg=batched)
        with torch.no_grad():
            outs.append(inferer.guided_prediction(net, x, torch.tensor(40), cond))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    with torch.no_grad():
        c = net(x, torch.full((3,), 40), context=cond)
        u = net(x, torch.full((3,), 40), context=torch.full_like(cond, -1.0))
    assert torch.allclose(outs[0], 2.8 * c - 1.8 * u, atol=1e-5)


def test_condition_forms_match_the_unet_contract():
    torch.manual_seed(0)
    net = _randomize(ConditionalDiT(**{**TINY, "box_condition": "fourier"})).eval()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([30])
    packed = pack_conditions([1, 2], [0, 0], [0, 0], [[[.1, .1, .4, .4]], []], max_boxes=1)
    as_dict = {"pathology": torch.tensor([1, 2]), "boxes": [[[.1, .1, .4, .4]], []]}
    assert torch.allclose(net(x, t, context=packed), net(x, t, context=as_dict), atol=1e-6)
    assert torch.allclose(net(x, t, class_labels=torch.tensor([1, 2])),
                          net(x, t, context=pack_conditions([1, 2], max_boxes=1)), atol=1e-6)
    assert not torch.allclose(net(x, t, context=packed), net(x, t, context=pack_conditions([1, 2], max_boxes=1)))
    with pytest.raises(ValueError, match="either"):
        net(x, t, context=packed, class_labels=torch.tensor([1, 2]))
    with pytest.raises(IndexError, match="num_birads_embeds"):
        net(x, t, context=pack_conditions([1, 1], [0, 0], [30, 30], max_boxes=1))
    with pytest.raises(ValueError, match="box_condition"):
        ConditionalDiT(**{**TINY, "box_condition": "mask"})


def test_init_args_are_json_and_rebuild_the_network_from_the_allow_list():
    codec = ConditionCodec()
    net = ConditionalDiT(**{**TINY, **codec.network_kwargs()})
    args = json.loads(json.dumps(net.init_args))
    assert args["conditions"] == ["pathology", "device", "birads"]
    again = GENERATOR_NETWORKS["ConditionalDiT"](**args)
    again.load_state_dict(net.state_dict())
    assert again.init_args == net.init_args


def test_trains_through_monai_diffusion_inferer():
    """One optimisation step through MONAI's DiffusionInferer (crossattn mode passes the packed conditions)."""
    torch.manual_seed(0)
    net = ConditionalDiT(**TINY)
    sched = DDPMScheduler(num_train_timesteps=100)
    inferer = DiffusionInferer(sched)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(4, 4, 8, 8)
    noise = torch.randn_like(x)
    t = torch.randint(0, 100, (4,))
    cond = pack_conditions([1, 2, 1, 2], [0, 0, 0, 0], [4, 9, 4, 9], max_boxes=1)
    losses = []
    for _ in range(3):
        pred = inferer(x, net, noise=noise, timesteps=t, condition=cond, mode="crossattn")
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    # the zero-initialised modulations received gradient and moved
    assert net.blocks[0].adaLN_modulation[-1].weight.abs().sum() > 0
