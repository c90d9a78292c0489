"""Guided sampling: batched CFG equals the two-pass formula, partial guidance, guard hooks, schedulers."""

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from busgen_monai.inferers.guided import GuidedDiffusionInferer, classifier_free_guidance, null_like
from busgen_monai.networks import ConditionalDiffusionUNet, pack_conditions, unpack_conditions
from busgen_monai.plugins import SamplingGuard
from busgen_monai.schedulers import DPMSolverMultistepScheduler

BETAS = {"schedule": "linear_beta", "beta_start": 1e-4, "beta_end": 0.028}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = ConditionalDiffusionUNet(image_channels=3, channels=(8, 16), num_res_blocks=1,
                                     attention_levels=(False, False), norm_num_groups=8, num_head_channels=8,
                                     num_device_embeds=40, box_condition="both")
    # make the condition path matter: random (non-zero) weights everywhere
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _conds(b=2):
    return pack_conditions(pathology=torch.tensor([1, 2] * (b // 2)), device=torch.tensor([3, 19] * (b // 2)),
                           boxes=[[[0.2, 0.2, 0.6, 0.5]], [[0.5, 0.4, 0.8, 0.9]]] * (b // 2), max_boxes=2)


class RecordingGuard:
    """A real SamplingGuard that records its calls and nudges the prediction."""

    def __init__(self):
        self.calls = []
        self.resets = 0

    def __call__(self, x_t, t, model_output, **info):
        self.calls.append({"x_t": x_t.clone(), "t": int(t), "eps": model_output.clone(), **info})
        return model_output * 0.5

    def reset(self):
        self.resets += 1

    def stats(self):
        return {"calls": len(self.calls)}


def test_batched_cfg_equals_two_pass_formula(net):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(250)
    c = _conds()
    inf = GuidedDiffusionInferer(DDIMScheduler(500, **BETAS), guidance_scale=1.8)
    batched = inf.guided_prediction(net, x, t, c)
    inf.batched_cfg = False
    two_pass = inf.guided_prediction(net, x, t, c)
    eps_c = net(x, timesteps=t.repeat(2), context=c)
    eps_u = net(x, timesteps=t.repeat(2), context=torch.full_like(c, -1.0))
    expected = 2.8 * eps_c - 1.8 * eps_u
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two_pass, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eps_c, eps_u, atol=1e-4)  # guidance is not a no-op here
    torch.testing.assert_close(classifier_free_guidance(eps_c, eps_u, 0.0), eps_c)


def test_partial_guidance_drops_only_named_conditions():
    c = _conds()
    u = unpack_conditions(null_like(c, ("pathology",)))
    full = unpack_conditions(c)
    assert (u.pathology <= 0).all()
    torch.testing.assert_close(u.device, full.device)
    torch.testing.assert_close(u.boxes, full.boxes)
    assert (null_like(c) == -1).all()
    with pytest.raises(ValueError, match="unknown conditions"):
        GuidedDiffusionInferer(DDIMScheduler(500, **BETAS), guidance_drop=("laterality",))


@pytest.mark.parametrize("scheduler", [
    DPMSolverMultistepScheduler(500, **BETAS), DDIMScheduler(500, **BETAS), DDPMScheduler(500, **BETAS)])
def test_guard_hook_called_with_documented_arguments(net, scheduler):
    steps = 4 if not isinstance(scheduler, DDPMScheduler) else 10
    scheduler.set_timesteps(steps)
    guard = RecordingGuard()
    assert isinstance(guard, SamplingGuard)
    inf = GuidedDiffusionInferer(scheduler, guidance_scale=1.0, guards=[guard])
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    c = _conds()
    out = inf.sample(noise, net, conditioning=c, verbose=False, generator=torch.Generator().manual_seed(5))
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert guard.resets == 1 and len(guard.calls) == steps
    first = guard.calls[0]
    torch.testing.assert_close(first["x_t"], noise)
    assert first["t"] == int(scheduler.timesteps[0])
    assert first["alphas_cumprod_t"] == pytest.approx(float(scheduler.alphas_cumprod[first["t"]]))
    assert first["conditions"] is c and first["step"] == 0 and first["num_steps"] == steps
    assert first["model"] is net
    assert inf.guard_stats() == {"RecordingGuard": {"calls": steps}}
    # the guard's modification reaches the scheduler: sampling without it differs
    if not isinstance(scheduler, DDPMScheduler):
        scheduler.set_timesteps(steps)
        plain = GuidedDiffusionInferer(scheduler, guidance_scale=1.0).sample(noise, net, conditioning=c, verbose=False)
        assert not torch.allclose(plain, out)


def test_sampling_is_deterministic_and_cfg_argument_maps_to_w(net):
    sched = DPMSolverMultistepScheduler(500, **BETAS)
    inf = GuidedDiffusionInferer(sched, guidance_scale=1.8, num_inference_steps=5)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = inf.sample(noise, net, conditioning=_conds(), verbose=False)
    b = inf.sample(noise, net, conditioning=_conds(), verbose=False)
    torch.testing.assert_close(a, b)
    c = GuidedDiffusionInferer(sched, guidance_scale=0.0, num_inference_steps=5).sample(
        noise, net, conditioning=_conds(), verbose=False, cfg=2.8)
    torch.testing.assert_close(a, c)
    assert inf.guidance_scale == 1.8
    with pytest.raises(ValueError, match="crossattn"):
        inf.sample(noise, net, conditioning=_conds(), mode="concat")


def test_training_loss_path_is_monai_unchanged(net):
    """__call__ is DiffusionInferer's: it adds noise and returns the network's prediction."""
    sched = DDPMScheduler(500, **BETAS)
    inf = GuidedDiffusionInferer(sched)
    x = torch.randn(2, 3, 8, 8)
    noise = torch.randn_like(x)
    t = torch.tensor([10, 400])
    pred = inf(inputs=x, diffusion_model=net, noise=noise, timesteps=t, condition=_conds())
    torch.testing.assert_close(pred, net(sched.add_noise(x, noise, t), timesteps=t, context=_conds()))
