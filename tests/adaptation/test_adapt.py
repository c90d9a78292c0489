"""busgen_monai.adaptation.adapt: prepare (codec extension + LoRA), adapter save/load, merged == unmerged."""

import torch

from busgen_monai.adaptation.adapt import AdapterSaver, load_adapted_generator, prepare_adaptation
from busgen_monai.inferers import load_generator
from busgen_monai.networks import ConditionCodec
from busgen_monai.presets import build_network, build_scheduler


def make_base(path, seed=0):
    torch.manual_seed(seed)
    codec = ConditionCodec()
    net = build_network("tiny", codec)
    with torch.no_grad():  # non-trivial weights (the UNet zero-initialises its output conv)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"network": net.state_dict(), "codec": codec.state_dict()}, path)
    return path


def _perturb_lora(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _inputs(codec, pathology="dcis"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32, 32, generator=g)  # grey
    t = torch.tensor([10, 300])
    c = codec.pack_names([pathology, "benign"], ["GE-LOGIQ-E9", "GE-LOGIQ-E9"], boxes=[[[.3, .3, .6, .6]]] * 2)
    return x, t, c


def _sample(net, codec, seed=0):
    sched = build_scheduler("tiny", "ddim", num_inference_steps=3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 32, 32, generator=g)
    _, _, c = _inputs(codec)
    with torch.no_grad():
        for t in sched.timesteps:
            x, _ = sched.step(net(x, timesteps=torch.full((2,), int(t)), context=c), t, x)
    return x


def test_only_lora_and_new_rows_get_gradients(tmp_path):
    torch.set_num_threads(1)
    base = make_base(tmp_path / "base.pt")
    net, codec = prepare_adaptation(base, "tiny", new_pathologies=["dcis"], rank=4)
    assert codec.pathologies == ["benign", "malignant", "dcis"]
    assert codec.pathology_id("dcis") == 3
    x, t, c = _inputs(codec)
    net(x, timesteps=t, context=c).square().mean().backward()
    for name, p in net.named_parameters():
        trainable = "lora_" in name or name.endswith("new_weight")
        assert p.requires_grad == trainable, name
        if not trainable:
            assert p.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if n.endswith("new_weight"))


def test_adapter_roundtrip_same_samples_and_merged_equal(tmp_path):
    torch.set_num_threads(1)
    base = make_base(tmp_path / "base.pt")
    net, codec = prepare_adaptation(base, "tiny", new_pathologies=["dcis"], new_devices=["Hitachi-ARIETTA-850"], rank=4)
    _perturb_lora(net)
    net.eval()
    saved = AdapterSaver(net, codec, tmp_path / "models", base_info={"name": "t"}).save()
    loaded, codec2 = load_adapted_generator(base, saved["adapter"], "tiny")
    assert codec2.to_dict() == codec.to_dict()
    assert "Hitachi-ARIETTA-850" in codec2.vocabulary
    assert torch.equal(_sample(net, codec), _sample(loaded, codec2))
    merged, codec3 = load_generator(saved["merged"], "tiny")
    x, t, c = _inputs(codec)
    with torch.no_grad():
        a, b = loaded(x, timesteps=t, context=c), merged(x, timesteps=t, context=c)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # adaptation changed the model on the new condition
    base_net, _ = load_generator(base, "tiny")
    assert not torch.allclose(a[1:], base_net(x[1:], timesteps=t[1:], context=c[1:]).detach())


def test_adapter_refuses_other_base(tmp_path):
    import pytest

    base = make_base(tmp_path / "base.pt")
    other = make_base(tmp_path / "other.pt", seed=5)
    net, codec = prepare_adaptation(base, "tiny", rank=2)
    saved = AdapterSaver(net, codec, tmp_path / "m", merged_name=None).save()
    with pytest.raises(ValueError, match="adapter was trained on base model"):
        load_adapted_generator(other, saved["adapter"], "tiny")
