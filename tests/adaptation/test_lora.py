"""LoRA with peft on the conditional network: only adapters train, save/load exact, merge equivalence."""

import copy

import pytest
import torch

from busgen_monai.adaptation.lora import (
    add_condition_values,
    inject_lora,
    load_adapter,
    merge_lora,
    save_adapter,
    state_dict_sha256,
    trainable_fraction,
)
from busgen_monai.networks import ConditionalDiffusionUNet, pack_conditions


def _base():
    torch.manual_seed(0)
    return ConditionalDiffusionUNet(image_channels=3, channels=(16, 32), num_res_blocks=1,
                                    attention_levels=(False, True), norm_num_groups=8, num_head_channels=16,
                                    num_pathology_embeds=3, num_device_embeds=40)


def _batch(pathology=(1, 2)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([30, 300])
    c = pack_conditions(pathology=torch.tensor(pathology), device=torch.tensor([2, 5]),
                        boxes=[[[0.2, 0.2, 0.6, 0.6]], [[0.1, 0.5, 0.4, 0.9]]], max_boxes=2)
    return x, t, c


def _train(net, steps=5, pathology=(1, 2)):
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    x, t, c = _batch(pathology)
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(x, timesteps=t, context=c) - x).pow(2).mean()
        loss.backward()
        opt.step()
    return loss.item()


def test_only_lora_trains_and_base_is_bit_identical():
    net = _base()
    base_state = copy.deepcopy(net.state_dict())
    inject_lora(net, rank=4)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("attn.to_q.lora_A" in n for n in trainable) and any("conv1.conv.lora_A" in n for n in trainable)
    assert any("time_emb_proj.lora_B" in n for n in trainable)
    _train(net)
    after = net.state_dict()
    for k, v in base_state.items():
        # peft keeps the original weight under base_layer
        k2 = k if k in after else k.rsplit(".", 1)[0] + ".base_layer." + k.rsplit(".", 1)[1]
        assert torch.equal(after[k2], v), k
    assert 0 < trainable_fraction(net) < 0.5


def test_trainable_fraction_on_paper_preset_below_10_percent():
    from busgen_monai.presets import build_network

    net = build_network("paper")
    n_base = sum(p.numel() for p in net.parameters())
    inject_lora(net)  # default rank
    frac = trainable_fraction(net)
    print(f"paper preset: {n_base / 1e6:.1f} M base parameters, LoRA trainable fraction {frac:.4f}")
    assert 0.001 < frac < 0.10


def test_adapter_save_load_reproduces_outputs_exactly_and_merge_matches(tmp_path):
    base = _base()
    base_state = copy.deepcopy(base.state_dict())
    net = inject_lora(copy.deepcopy(base), rank=4, alpha=8)
    _train(net)
    net.eval()
    x, t, c = _batch()
    ref = net(x, timesteps=t, context=c)
    path = save_adapter(net, tmp_path / "adapter.pt", extra={"note": "test"})
    assert path.stat().st_size < 0.5 * sum(v.numel() * 4 for v in base_state.values())

    fresh = _base()
    fresh.load_state_dict(base_state)
    load_adapter(fresh, path)
    fresh.eval()
    torch.testing.assert_close(fresh(x, timesteps=t, context=c), ref, rtol=0, atol=0)

    merged = merge_lora(fresh)
    assert type(merged) is ConditionalDiffusionUNet
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    torch.testing.assert_close(merged(x, timesteps=t, context=c), ref, rtol=1e-5, atol=1e-5)
    # a merged network loads into a plain base network
    plain = _base()
    plain.load_state_dict(merged.state_dict())


def test_adapter_refuses_wrong_base(tmp_path):
    net = inject_lora(_base(), rank=2)
    path = save_adapter(net, tmp_path / "a.pt")
    other = _base()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="adapter was trained on base model"):
        load_adapter(other, path)


def test_new_pathology_value_without_retraining_base(tmp_path):
    base = _base()
    net = copy.deepcopy(base)
    (dcis,) = add_condition_values(net, "pathology", 1)
    assert dcis == 3
    inject_lora(net, rank=2)
    old_rows = net.condition_embedding.tables["pathology"].weight[:3].detach().clone()
    _train(net, pathology=(3, 3))
    table = net.condition_embedding.tables["pathology"].weight
    assert torch.equal(table[:3], old_rows)  # known pathologies unchanged (AdamW weight decay included)
    assert not torch.equal(table[3], old_rows[1:].mean(0))  # the new row learned
    net.eval()
    x, t, c = _batch((3, 3))
    ref = net(x, timesteps=t, context=c)
    save_adapter(net, tmp_path / "dcis.pt")
    fresh = copy.deepcopy(base)
    load_adapter(fresh, tmp_path / "dcis.pt")
    fresh.eval()
    torch.testing.assert_close(fresh(x, timesteps=t, context=c), ref, rtol=0, atol=0)
    with pytest.raises(KeyError, match="no 'laterality' condition table"):
        add_condition_values(_base(), "laterality", 1)


def test_state_hash_is_stable():
    a, b = _base(), _base()
    assert state_dict_sha256(a) == state_dict_sha256(b)


def test_peft_format_adapter_round_trip_and_plain_peft_loads_it(tmp_path):
    """The adapter in peft's own format: our loader reproduces the outputs exactly, and peft's API alone (config
    from adapter_config.json, weights from adapter_model.safetensors) does too; no pickle in the folder."""
    import json

    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from busgen_monai.adaptation.lora import load_peft_adapter, save_peft_adapter

    base = _base()
    net = copy.deepcopy(base)
    add_condition_values(net, "pathology", 1)
    inject_lora(net, rank=4, alpha=8)
    _train(net, pathology=(3, 1))
    net.eval()
    x, t, c = _batch((3, 1))
    ref = net(x, timesteps=t, context=c)
    folder = save_peft_adapter(net, tmp_path / "peft", extra={"codec": {"pathologies": ["a", "b", "c", "dcis"]}})
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "busgen_adapter.json", "busgen_condition_rows.safetensors"]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8

    fresh = load_peft_adapter(copy.deepcopy(base), folder)
    fresh.eval()
    torch.testing.assert_close(fresh(x, timesteps=t, context=c), ref, rtol=0, atol=0)

    # peft alone, on a base whose pathology table has the new row (from the project's rows file)
    plain = copy.deepcopy(base)
    add_condition_values(plain, "pathology", 1)
    with torch.no_grad():
        plain.condition_embedding.tables["pathology"].new_weight.copy_(
            load_file(str(folder / "busgen_condition_rows.safetensors"))["pathology"])
    inject_adapter_in_model(LoraConfig.from_pretrained(str(folder)), plain)
    result = set_peft_model_state_dict(plain, load_file(str(folder / "adapter_model.safetensors")))
    assert not result.unexpected_keys
    plain.eval()
    torch.testing.assert_close(plain(x, timesteps=t, context=c), ref, rtol=0, atol=0)

    other = _base()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="trained on base model"):
        load_peft_adapter(other, folder)
