"""Latent generator family: save/load round trip through load_generator (allow-listed class names, autoencoder inside
the checkpoint), latent sampling with the project's DPM-Solver++ and a guard hook, decoded outputs, BI-RADS plans, and
the training glue around MONAI's LatentDiffusionInferer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import DDPMScheduler
from PIL import Image

from busgen_monai.engines import NetworkArgsRecord
from busgen_monai.inferers import (
    AutoencoderRecord,
    LatentDiffusionModel,
    LatentDiffusionPrepareBatch,
    LatentTrainingInferer,
    NetworkClassRecord,
    export_generator,
    generator_settings,
    latent_scale_factor,
    load_autoencoder,
    load_generator,
    run_generation,
)
from busgen_monai.inferers.generate import plan_conditions
from busgen_monai.networks import ConditionalDiffusionUNet, ConditionalDiT, ConditionCodec, LatentAutoencoderKL
from busgen_monai.schedulers import DPMSolverMultistepScheduler

AE = dict(channels=(8, 16), num_res_blocks=1, attention_levels=(False, False), latent_channels=2, norm_num_groups=4,
          with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
SETTINGS = {"image_size": 16, "image_channels": 1, "num_train_timesteps": 100, "beta_start": 1e-4,
            "beta_end": 0.028, "guidance_w": 1.8}
DEVICES = ["PhantomMed-L7", "PhantomMed-C5"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize(net, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def _parts(codec):
    torch.manual_seed(0)
    ae = LatentAutoencoderKL(**AE)
    dit = _randomize(ConditionalDiT(in_channels=2, input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                                    conditions=("pathology", "device", "birads"), **codec.network_kwargs()))
    return ae, dit


def _latent_checkpoint(tmp_path, codec, scale=0.7):
    """A latent checkpoint as bundles/busgen_latent writes it (through the same checkpoint records)."""
    ae, dit = _parts(codec)
    state = {"network": dit.state_dict(), "network_kwargs": NetworkArgsRecord(dit).state_dict(),
             "network_class": NetworkClassRecord(dit).state_dict(),
             "autoencoder": AutoencoderRecord(ae, scale).state_dict(), "codec": codec.state_dict(),
             "settings": SETTINGS}
    path = tmp_path / "latent.pt"
    torch.save(state, path)
    return path, ae, dit


def test_round_trip_through_load_generator_and_export(tmp_path):
    codec = ConditionCodec(("benign", "malignant"), max_boxes=1)
    path, ae, dit = _latent_checkpoint(tmp_path, codec)
    net, codec2 = load_generator(path)
    assert isinstance(net, LatentDiffusionModel) and isinstance(net.diffusion_model, ConditionalDiT)
    assert codec2.pathologies == codec.pathologies
    assert net.scale_factor == pytest.approx(0.7) and net.image_channels == 1
    assert net.latent_shape(16) == (2, 8, 8)
    z = torch.randn(2, 2, 8, 8)
    cond = codec.pack_names(["benign", "malignant"], DEVICES, ["3", "5"])
    with torch.no_grad():
        assert torch.allclose(net(z, torch.tensor([5, 9]), context=cond), dit(z, torch.tensor([5, 9]), context=cond))
        assert torch.allclose(net.decode(z), ae.decode_stage_2_outputs(z / 0.7).clamp(-1, 1))
    assert generator_settings(path)["image_size"] == 16
    # an exported model file (half precision) keeps the class and the autoencoder
    out = export_generator(path, tmp_path / "model.pt", dtype="float16")
    net3, _ = load_generator(out)
    assert isinstance(net3, LatentDiffusionModel)
    with torch.no_grad():
        assert torch.allclose(net3(z, torch.tensor([5]), context=cond[:1].expand(2, -1, -1)),
                              dit(z, torch.tensor([5]), context=cond[:1].expand(2, -1, -1)), atol=2e-2)
    with pytest.raises(ValueError, match="multiple"):
        net.latent_shape(15)
    with pytest.raises(ValueError, match="trained on 8x8"):
        net.latent_shape(32)


def test_class_names_come_from_the_allow_list(tmp_path):
    codec = ConditionCodec(("benign", "malignant"), max_boxes=1)
    path, _, _ = _latent_checkpoint(tmp_path, codec)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "network_class": {"name": "os.system"}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a generator of this library"):
        load_generator(tmp_path / "bad.pt")
    torch.save({k: v for k, v in state.items() if k != "autoencoder"}, tmp_path / "noae.pt")
    with pytest.raises(ValueError, match="must carry its autoencoder"):
        load_generator(tmp_path / "noae.pt")
    torch.save({**state, "autoencoder": {**state["autoencoder"], "network_class": "builtins.eval"}},
               tmp_path / "badae.pt")
    with pytest.raises(ValueError, match="not one of"):
        load_generator(tmp_path / "badae.pt")
    # a checkpoint without network_class is the pixel U-Net, as before
    unet = ConditionalDiffusionUNet(channels=(8, 8), num_res_blocks=1, attention_levels=(False, False),
                                    norm_num_groups=4, num_head_channels=8, **codec.network_kwargs())
    torch.save({"network": unet.state_dict(), "network_kwargs": unet.init_args, "codec": codec.state_dict(),
                "settings": SETTINGS}, tmp_path / "unet.pt")
    net, _ = load_generator(tmp_path / "unet.pt")
    assert type(net) is ConditionalDiffusionUNet


class RecordingGuard:
    """A sampling guard (the SamplingGuard protocol) that records what it sees and scales eps slightly."""

    def __init__(self):
        self.shapes, self.steps = [], []

    def reset(self):
        self.steps = []

    def __call__(self, x_t, t, eps, alphas_cumprod_t=None, conditions=None, step=None, num_steps=None, **info):
        self.shapes.append(tuple(x_t.shape))
        self.steps.append(step)
        assert isinstance(info["model"], LatentDiffusionModel)
        return eps * 0.99

    def stats(self):
        return {"calls": len(self.shapes)}


def test_latent_sampling_with_dpm_solver_guard_and_birads_plan(tmp_path):
    codec = ConditionCodec(("benign", "malignant"), max_boxes=1)
    path, _, _ = _latent_checkpoint(tmp_path, codec)
    net, codec = load_generator(path)
    guard = RecordingGuard()
    sched = DPMSolverMultistepScheduler(100, schedule="linear_beta", beta_start=1e-4, beta_end=0.028,
                                        clip_sample=True)
    data = {"devices": DEVICES, "training": [
        {"image": "a.png", "pathology": "benign", "birads": "3", "device": DEVICES[0], "boxes": [[.2, .2, .5, .5]]},
        {"image": "b.png", "pathology": "malignant", "birads": "5", "device": DEVICES[1], "boxes": [[.3, .3, .6, .7]]},
        {"image": "c.png", "pathology": "benign", "birads": "4", "device": DEVICES[0], "boxes": [[.2, .3, .5, .6]]},
        {"image": "d.png", "pathology": "malignant", "birads": "4", "device": DEVICES[1], "boxes": [[.1, .2, .4, .5]]},
    ]}
    with pytest.warns(UserWarning, match="clip_sample"):
        res = run_generation(net, codec, sched, tmp_path / "gen", 5, image_size=16, seed=1, datalist=data,
                             num_inference_steps=4, guards=[guard], chunk_size=3, progress=False,
                             birads=["3", "4", "5"])
    assert sched.clip_sample is False
    # the guard ran once per solver step on latents: 2 chunks x 4 steps
    assert guard.shapes == [(3, 2, 8, 8)] * 4 + [(2, 2, 8, 8)] * 4
    dl = json.loads(res.datalist.read_text())
    items = dl["training"]
    assert [it["birads"] for it in items] == ["3", "4", "5", "3", "4"]
    # pathology follows the datalist's mix within the category: 3 -> benign, 5 -> malignant
    assert [it["pathology"] for it in items if it["birads"] == "3"] == ["benign", "benign"]
    assert [it["pathology"] for it in items if it["birads"] == "5"] == ["malignant"]
    img = np.asarray(Image.open(tmp_path / "gen" / items[0]["image"]))
    assert img.shape == (16, 16) and img.dtype == np.uint8 and img.std() > 0
    assert items[0]["provenance"]["generator_family"] == "latent"
    assert json.loads((tmp_path / "gen" / "guard_stats_rank0.json").read_text())["RecordingGuard"]["calls"] == 8
    # the same seed gives the same images (noise seeded per item in the latent shape)
    res2 = run_generation(net, codec, sched, tmp_path / "gen2", 5, image_size=16, seed=1, datalist=data,
                          num_inference_steps=4, chunk_size=3, progress=False, birads=["3", "4", "5"],
                          guards=[RecordingGuard()])
    again = json.loads(res2.datalist.read_text())["training"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "gen2" / again[1]["image"])),
                          np.asarray(Image.open(tmp_path / "gen" / items[1]["image"])))
    with pytest.raises(ValueError, match="BI-RADS"):
        run_generation(net, codec, sched, tmp_path / "gen3", 2, image_size=16, datalist=data, birads=["7"],
                       progress=False)


def test_plan_without_birads_is_unchanged():
    plan = plan_conditions(6, ["benign", "malignant"], DEVICES, seed=3, boxes=[[[.2, .2, .5, .5]]] * 6)
    assert all("birads" not in p for p in plan)
    assert [p["pathology"] for p in plan] == ["benign", "malignant"] * 3


def test_training_glue_matches_monai_latent_inferer(tmp_path):
    codec = ConditionCodec(("benign", "malignant"), max_boxes=1)
    ae, dit = _parts(codec)
    sched = DDPMScheduler(num_train_timesteps=100)
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    scale = latent_scale_factor(ae, [{"image": images}])
    with torch.no_grad():  # the posterior mean: deterministic, so a resumed run recomputes the same value
        assert scale == pytest.approx(1.0 / float(ae.encode(images)[0].std()), rel=1e-5)
    assert latent_scale_factor(ae, [images[:2], images[2:]]) == pytest.approx(scale, rel=1e-5)
    prep = LatentDiffusionPrepareBatch(100, ae.latent_shape(16), drop_prob=0.0)
    batch = {"image": images, "cond": codec.pack_names(["benign"] * 3, DEVICES[:1] * 3, ["3", "4", "5"])}
    x, target, _, kwargs = prep(batch)
    assert kwargs["noise"].shape == (3, 2, 8, 8) and torch.equal(target, kwargs["noise"])
    ours = LatentTrainingInferer(sched, ae, scale)
    torch.manual_seed(5)
    pred = ours(x, dit, **kwargs)
    torch.manual_seed(5)
    ref = LatentDiffusionInferer(sched, scale_factor=scale)(x, ae, dit, **kwargs)
    assert pred.shape == (3, 2, 8, 8)
    assert torch.allclose(pred, ref, atol=1e-6)
    pred.pow(2).mean().backward()
    assert all(p.grad is None for p in ae.parameters())  # the first stage is frozen
    # checkpoint records refuse a resume onto another autoencoder / scale / class
    rec = AutoencoderRecord(ae, scale)
    saved = rec.state_dict()
    rec.load_state_dict(saved)
    with pytest.raises(ValueError, match="scale_factor"):
        rec.load_state_dict({**saved, "scale_factor": scale * 2})
    with pytest.raises(ValueError, match="another autoencoder"):
        rec.load_state_dict({**saved, "network_kwargs": {**saved["network_kwargs"], "latent_channels": 3}})
    with pytest.raises(ValueError, match="holds a"):
        NetworkClassRecord(dit).load_state_dict({"name": "ConditionalDiffusionUNet"})
    # an autoencoder checkpoint of bundles/busgen_autoencoder loads on its own
    torch.save({"network": ae.state_dict(), "network_kwargs": ae.init_args}, tmp_path / "ae.pt")
    again = load_autoencoder(tmp_path)
    with torch.no_grad():
        assert torch.allclose(again.decode_stage_2_outputs(torch.ones(1, 2, 8, 8)),
                              ae.decode_stage_2_outputs(torch.ones(1, 2, 8, 8)))
    torch.save({"network": ae.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an autoencoder checkpoint"):
        load_autoencoder(tmp_path / "plain.pt")


class FinalLatents:
    """A guard that records the latent x_t it is handed (the last call sees the trajectory's late state)."""

    def __init__(self):
        self.seen = []

    def reset(self):
        pass

    def __call__(self, x_t, t, eps, alphas_cumprod_t=None, conditions=None, step=None, num_steps=None, **info):
        self.seen.append(x_t.detach().clone())
        return eps

    def stats(self):
        return {}


def test_latent_clip_from_the_checkpoint_bounds_the_sampler(tmp_path):
    """``settings["latent_clip"]`` travels with the checkpoint; run_generation sets the sampler's data-prediction
    clip to [-c, c] for it (whatever the config said), and switches the pixels' clip off without one."""
    from busgen_monai.inferers.latent import configure_latent_sampler

    codec = ConditionCodec(("benign", "malignant"), max_boxes=1)
    path, _, _ = _latent_checkpoint(tmp_path, codec)
    state = torch.load(path, weights_only=True)
    state["settings"] = {**state["settings"], "latent_clip": 0.25}
    clipped = tmp_path / "clipped.pt"
    torch.save(state, clipped)
    net, codec = load_generator(clipped)
    assert net.latent_clip == 0.25 and load_generator(path)[0].latent_clip is None
    data = {"devices": DEVICES, "training": [
        {"image": "a.png", "pathology": "benign", "birads": "3", "device": DEVICES[0], "boxes": [[.2, .2, .5, .5]]},
        {"image": "b.png", "pathology": "malignant", "birads": "5", "device": DEVICES[1], "boxes": [[.3, .3, .6, .7]]},
    ]}
    runs = {}
    for name, model in (("clipped", net), ("free", load_generator(path)[0])):
        sched = DPMSolverMultistepScheduler(100, schedule="linear_beta", beta_start=1e-4, beta_end=0.028,
                                            clip_sample=False)
        guard = FinalLatents()
        run_generation(model, codec, sched, tmp_path / name, 4, image_size=16, seed=3, datalist=data,
                       num_inference_steps=6, guards=[guard], chunk_size=4, progress=False)
        runs[name] = (sched, guard.seen[-1])
    sched, last = runs["clipped"]
    assert sched.clip_sample is True and sched.clip_sample_values == [-0.25, 0.25]
    assert runs["free"][0].clip_sample is False
    # the clipped trajectory ends near the bounded data prediction; the free one is not bounded by it
    assert float(last.abs().max()) < float(runs["free"][1].abs().max())
    # pixel generators are left alone; a bad bound is refused
    from busgen_monai.presets import build_network

    pix = build_network("tiny", codec)
    assert isinstance(pix, ConditionalDiffusionUNet)
    s2 = DPMSolverMultistepScheduler(100, clip_sample=True)
    configure_latent_sampler(pix, s2)
    assert s2.clip_sample is True and s2.clip_sample_values == [-1.0, 1.0]
    with pytest.raises(ValueError, match="latent_clip"):
        LatentDiffusionModel(net.diffusion_model, net.autoencoder, 1.0, latent_clip=0.0)
