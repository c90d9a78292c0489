"""Tests for busgen_monai.schedulers.dpm_solver (DPM-Solver++ multistep with MONAI's scheduler API).

Oracles: diffusers' DPMSolverMultistepScheduler (same betas, spacing and final-step convention), the closed-form
probability-flow ODE of Gaussian data, MONAI's DDIMScheduler and the MONAI inferer / bundle machinery.
"""

from __future__ import annotations

import math

import pytest
import torch

from busgen_monai.schedulers import DPMSolverMultistepScheduler

# (num_train_timesteps, beta_end): the common DDPM schedule and BUSGen's T=500 schedule (beta_start 1e-4 for both)
SCHEDULES = [(1000, 0.02), (500, 0.028)]
SPACINGS = ["linspace", "leading", "trailing"]


def _gaussian_model(alphas_cumprod: torch.Tensor, mu: torch.Tensor, s: torch.Tensor, prediction_type="epsilon"):
    """Exact denoiser for data x0 ~ N(mu, s^2) per dimension (broadcast over the batch), as an eps-, x0- or
    v-prediction network."""

    def model(x: torch.Tensor, t: int) -> torch.Tensor:
        ac = alphas_cumprod[int(t)].to(x.dtype)
        a, sg = ac.sqrt(), (1 - ac).sqrt()
        m, sd = mu.to(x.dtype), s.to(x.dtype)
        e_x0 = m + a * sd**2 / (a * a * sd * sd + sg * sg) * (x - a * m)
        eps = (x - a * e_x0) / sg
        return {"epsilon": eps, "sample": e_x0, "v_prediction": a * eps - sg * e_x0}[prediction_type]

    return model


def _diffusers_pair(T, beta_end, **kwargs):
    import diffusers  # the oracle: a test dependency (setup.cfg [test]), so a missing one is a failure
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=beta_end)
    ours = DPMSolverMultistepScheduler(**common, **kwargs)
    theirs = diffusers.DPMSolverMultistepScheduler(
        **common,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        use_karras_sigmas=False,
        **{"final_sigmas_type": "zero", "lower_order_final": True, "solver_order": 2, **kwargs},
    )
    return ours, theirs


# ----------------------------------------------------------------------------------------------- diffusers oracle
@pytest.mark.parametrize("T,beta_end", SCHEDULES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_matches_diffusers_epsilon(T, beta_end, spacing):
    """Same timesteps; every intermediate sample equal to 1e-5 given the same state (teacher forcing), and the
    free-running trajectories equal to float32 trajectory noise."""
    import diffusers  # the oracle: a test dependency (setup.cfg [test]), so a missing one is a failure
    mu = torch.tensor([-0.5, 0.0, 0.5]).view(1, 3, 1, 1)
    s = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)
    for n in (10, 20, 25):
        ours, forced = _diffusers_pair(T, beta_end, timestep_spacing=spacing)
        free = diffusers.DPMSolverMultistepScheduler.from_config(forced.config)
        eps_fn = _gaussian_model(ours.alphas_cumprod.double(), mu, s)
        for sch in (ours, forced, free):
            sch.set_timesteps(n)
        assert torch.equal(ours.timesteps, forced.timesteps), (n, ours.timesteps, forced.timesteps)
        assert ours.timesteps.dtype == torch.long and bool(torch.all(ours.timesteps[:-1] > ours.timesteps[1:]))

        g = torch.Generator().manual_seed(n)
        x_ours = torch.randn(2, 3, 16, 16, generator=g)
        x_free = x_ours.clone()
        for t in ours.timesteps:
            # a realistic (bounded x0) model output: exact Gaussian eps plus a fixed pseudo-random error
            noise = torch.randn(x_ours.shape, generator=g, dtype=torch.float64)
            eps = (eps_fn(x_ours.double(), t) + 0.05 * noise).float()
            x_forced = forced.step(eps, t, x_ours).prev_sample  # diffusers from our state
            x_free = free.step(eps, t, x_free).prev_sample
            x_ours, _ = ours.step(eps, t, x_ours)
            torch.testing.assert_close(x_ours, x_forced, atol=1e-5, rtol=0)
            # free running: x0 = (x - sigma eps) / alpha amplifies float32 rounding by sigma / alpha (~150 at
            # t=999), so two float32 implementations drift apart by ~1e-4 at |x| ~ 3 over the trajectory.
            torch.testing.assert_close(x_ours, x_free, atol=2e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prediction_type": "v_prediction"},
        {"prediction_type": "sample"},
        {"solver_order": 1},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        {"clip_sample": True, "prediction_type": "sample"},
        {"final_sigmas_type": "sigma_min", "lower_order_final": True},
        {"final_sigmas_type": "sigma_min", "lower_order_final": False},
        {"timestep_spacing": "leading", "steps_offset": 1},
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
def test_matches_diffusers_options(kwargs):
    """Prediction types, order 1, thresholding, clipping and the final-step options against diffusers."""
    kwargs_theirs = dict(kwargs)
    # diffusers' DPM-Solver has no clip_sample: with prediction_type="sample" it equals clipping the output
    clip = kwargs_theirs.pop("clip_sample", False)
    ours = DPMSolverMultistepScheduler(num_train_timesteps=500, beta_start=1e-4, beta_end=0.028, **kwargs)
    _, theirs = _diffusers_pair(500, 0.028, **kwargs_theirs)
    mu = torch.tensor([-0.5, 0.0, 0.5]).view(1, 3, 1, 1)
    s = torch.tensor([0.3, 0.6, 1.2]).view(1, 3, 1, 1)  # the last channel exceeds [-1, 1]: thresholding acts
    model = _gaussian_model(ours.alphas_cumprod.double(), mu, s, ours.prediction_type)
    g = torch.Generator().manual_seed(0)
    for n in (10, 20):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps)
        x = torch.randn(2, 3, 8, 8, generator=g)
        for t in ours.timesteps:
            noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
            out = (model(x.double(), t) + 0.05 * noise).float()
            out_theirs = out.clamp(-1, 1) if clip else out
            expected = theirs.step(out_theirs, t, x).prev_sample  # teacher forced: from our state
            x, x0 = ours.step(out, t, x)
            torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
            assert x0.shape == x.shape and torch.isfinite(x0).all()
        if ours.thresholding or clip:
            assert x.abs().max() <= 1.0 + 1e-6  # the final sample is the (clipped) x0 estimate


# ----------------------------------------------------------------------------------------------- closed-form ODE
@pytest.mark.parametrize("T,beta_end", SCHEDULES)
def test_gaussian_probability_flow_beats_ddim(T, beta_end):
    """For x0 ~ N(mu, s^2) the probability-flow ODE is solved exactly by
    x_t = alpha_t mu + sqrt(alpha_t^2 s^2 + sigma_t^2) z; 20 DPM-Solver++ steps land closer to it than
    20 MONAI DDIM (eta 0) steps and than 20 first-order steps on the same grid."""
    from monai.networks.schedulers import DDIMScheduler

    mu = torch.tensor([-0.6, -0.1, 0.3, 0.7], dtype=torch.float64).view(1, 4, 1, 1)
    s = torch.tensor([0.15, 0.3, 0.5, 0.9], dtype=torch.float64).view(1, 4, 1, 1)
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=beta_end)
    dpm = DPMSolverMultistepScheduler(**common)
    ac = dpm.alphas_cumprod.double()
    eps_fn = _gaussian_model(ac, mu, s)

    x_T = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_T, s_T = ac[T - 1].sqrt(), (1 - ac[T - 1]).sqrt()
    exact = mu + s * (x_T - a_T * mu) / torch.sqrt(a_T**2 * s**2 + s_T**2)  # ODE solution at alphabar = 1

    def solve(scheduler, n):
        scheduler.set_timesteps(n)
        assert int(scheduler.timesteps[0]) == T - 1  # all start from the same x_T at t = T - 1
        x = x_T.clone()
        for t in scheduler.timesteps:
            x, _ = scheduler.step(eps_fn(x, t), t, x)
        return x

    def rmse(x):
        return (x - exact).pow(2).mean().sqrt().item()

    # the closed form is the ODE solution: a fine DPM-Solver++ run (every training step) reproduces it
    fine = rmse(solve(DPMSolverMultistepScheduler(**common, timestep_spacing="trailing"), T))
    assert fine < 2e-3

    err_dpm = rmse(solve(dpm, 20))
    err_ddim = rmse(solve(DDIMScheduler(**common, clip_sample=False), 20))
    err_order1 = rmse(solve(DPMSolverMultistepScheduler(**common, solver_order=1), 20))
    assert err_dpm < 0.8 * err_ddim, (err_dpm, err_ddim)
    assert err_dpm < 0.6 * err_order1, (err_dpm, err_order1)


def test_first_step_equals_monai_ddim():
    """Order 1 is DDIM: the first DPM-Solver++ step (no history) equals MONAI DDIM's step to the same timestep."""
    from monai.networks.schedulers import DDIMScheduler

    dpm = DPMSolverMultistepScheduler(timestep_spacing="trailing")
    ddim = DDIMScheduler(clip_sample=False)
    dpm.set_timesteps(10)
    ddim.set_timesteps(10)  # DDIM steps from t to t - 1000 // 10 = t - 100
    assert dpm.timesteps[:2].tolist() == [999, 899]
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    prev_dpm, x0_dpm = dpm.step(eps, dpm.timesteps[0], x)
    prev_ddim, x0_ddim = ddim.step(eps, 999, x)
    torch.testing.assert_close(prev_dpm, prev_ddim, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x0_dpm, x0_ddim, atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- MONAI API
def test_diffusion_inferer_sample_and_reuse():
    from monai.inferers import DiffusionInferer
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
    ).eval()
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=500, beta_start=1e-4, beta_end=0.028)
    scheduler.set_timesteps(8)
    inferer = DiffusionInferer(scheduler)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = inferer.sample(noise, unet, scheduler=scheduler, verbose=False)
        # the same scheduler, reused without set_timesteps: the history restarts at timesteps[0]
        second = inferer.sample(noise, unet, scheduler=scheduler, verbose=False)
        fresh = DPMSolverMultistepScheduler(num_train_timesteps=500, beta_start=1e-4, beta_end=0.028)
        fresh.set_timesteps(8)
        third = inferer.sample(noise, unet, scheduler=fresh, verbose=False)
    assert first.shape == noise.shape and torch.isfinite(first).all()
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first, third, atol=0, rtol=0)


def test_timestep_forms_and_state():
    sch = DPMSolverMultistepScheduler(num_train_timesteps=100)
    sch.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g)
    outs = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(5)]

    results = []
    for form in (int, lambda t: t, lambda t: t.reshape(1).float(), lambda t: t.repeat(3)):
        sch.set_timesteps(5)
        y = x
        for t, out in zip(sch.timesteps, outs):
            y, x0 = sch.step(out, form(t), y)
        results.append(y)
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], atol=0, rtol=0)

    # set_timesteps and reset clear the multistep history: the next step is first order again
    sch.set_timesteps(5)
    sch.step(outs[0], sch.timesteps[0], x)
    assert sch.step_index == 1
    sch.reset()
    assert sch.step_index is None
    y_reset, _ = sch.step(outs[1], sch.timesteps[1], x)
    order1 = DPMSolverMultistepScheduler(num_train_timesteps=100, solver_order=1)
    order1.set_timesteps(5)
    y_order1, _ = order1.step(outs[1], order1.timesteps[1], x)
    torch.testing.assert_close(y_reset, y_order1, atol=0, rtol=0)

    with pytest.raises(ValueError, match="one value for the whole batch"):
        sch.step(outs[0], torch.tensor([99, 80, 80]), x)
    with pytest.raises(ValueError, match="not in this scheduler's inference grid"):
        sch.step(outs[0], 42, x)
    with pytest.raises(ValueError, match="shape"):
        sch.step(outs[0][:1], sch.timesteps[0], x)
    sch.set_timesteps(5)
    sch.step(outs[0], sch.timesteps[0], x)
    with pytest.raises(ValueError, match="reset"):
        sch.step(outs[1][:2], sch.timesteps[1], x[:2])


def test_dtype_preserved_and_float32_internally():
    sch = DPMSolverMultistepScheduler()
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 8, 8, generator=g)
    out = torch.randn(1, 1, 8, 8, generator=g)
    prev16, x0_16 = sch.step(out.half(), sch.timesteps[0], x.half())
    assert prev16.dtype == torch.float16 and x0_16.dtype == torch.float16
    sch.reset()
    prev32, _ = sch.step(out.half().float(), sch.timesteps[0], x.half().float())
    torch.testing.assert_close(prev16, prev32.half(), atol=0, rtol=0)


def test_set_timesteps_validation_and_grids():
    sch = DPMSolverMultistepScheduler(num_train_timesteps=1000)
    assert sch.timesteps.tolist() == list(range(999, -1, -1))  # before set_timesteps: every training step
    with pytest.raises(ValueError, match="cannot be larger than `self.num_train_timesteps`"):
        sch.set_timesteps(1001)
    with pytest.raises(ValueError, match="at least 1"):
        sch.set_timesteps(0)
    with pytest.raises(ValueError, match="must be an int"):
        sch.set_timesteps(10.5)
    with pytest.raises(ValueError, match="must be an int"):
        sch.set_timesteps(True)
    sch.set_timesteps(10, device="cpu")
    assert sch.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert sch.num_inference_steps == 10
    trailing = DPMSolverMultistepScheduler(timestep_spacing="trailing")
    trailing.set_timesteps(1000)
    assert trailing.timesteps.tolist() == list(range(999, -1, -1))
    with pytest.warns(UserWarning, match="repeats timesteps"):
        sch.set_timesteps(1000)
    assert len(set(sch.timesteps.tolist())) == len(sch.timesteps) == sch.num_inference_steps
    # a one-step schedule returns the x0 estimate directly
    sch.set_timesteps(1)
    x, out = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    prev, x0 = sch.step(out, sch.timesteps[0], x)
    torch.testing.assert_close(prev, x0, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"solver_order": 3}, "solver_order"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
        ({"final_sigmas_type": "denoise_to_zero"}, "final_sigmas_type"),
        ({"dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
        ({"sample_max_value": 0.5}, "sample_max_value"),
        ({"steps_offset": 1000}, "steps_offset"),
        ({"clip_sample_min": 1.0, "clip_sample_max": -1.0}, "clip_sample_min"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverMultistepScheduler(**kwargs)


def test_add_noise_inherited_and_schedule_args():
    sch = DPMSolverMultistepScheduler(num_train_timesteps=500, schedule="linear_beta", beta_start=1e-4, beta_end=0.028)
    assert torch.allclose(sch.betas, torch.linspace(1e-4, 0.028, 500))
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([0, 499])
    noisy = sch.add_noise(x0, noise, t)
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.028, 500), 0)[t].view(2, 1, 1, 1)
    torch.testing.assert_close(noisy, ac.sqrt() * x0 + (1 - ac).sqrt() * noise)
    # add_noise re-casts alphas_cumprod to the sample dtype; the solver keeps its own float64 copy
    sch.add_noise(x0.half(), noise.half(), t)
    sch.set_timesteps(5)
    assert sch._alphas_cumprod64.dtype == torch.float64
    cos = DPMSolverMultistepScheduler(num_train_timesteps=100, schedule="cosine")
    cos.set_timesteps(10)
    assert cos.timesteps[0] == 99


def test_bundle_config_parser():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "num_steps": 12,
            "scheduler": {
                "_target_": "busgen_monai.schedulers.DPMSolverMultistepScheduler",
                "num_train_timesteps": 500,
                "schedule": "linear_beta",
                "beta_start": 0.0001,
                "beta_end": 0.028,
                "solver_order": 2,
                "timestep_spacing": "trailing",
            },
            "set_steps": "$@scheduler.set_timesteps(@num_steps)",
        }
    )
    sch = parser.get_parsed_content("scheduler")
    assert isinstance(sch, DPMSolverMultistepScheduler)
    assert sch.num_train_timesteps == 500 and math.isclose(float(sch.betas[-1]), 0.028, rel_tol=1e-6)
    parser.get_parsed_content("set_steps")
    assert len(sch.timesteps) == 12 and int(sch.timesteps[0]) == 499


# ----------------------------------------------------------------------------------------------- thresholding
def test_dynamic_thresholding_clips_x0():
    ratio, max_value = 0.9, 2.0
    sch = DPMSolverMultistepScheduler(
        prediction_type="sample", thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value
    )
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack(
        [
            0.5 * torch.rand(1, 8, 8, generator=g),  # all |x0| < 1: s clamps to 1, nothing changes
            3.0 * torch.randn(1, 8, 8, generator=g),  # percentile > max: s = sample_max_value
            1.4 * torch.randn(1, 8, 8, generator=g).clamp(-1.2, 1.2),  # 1 < s < max
        ]
    )
    _, out = sch.step(x0, sch.timesteps[0], torch.zeros_like(x0))
    for item, got in zip(x0, out):
        q = torch.quantile(item.abs().flatten(), ratio).clamp(1.0, max_value)
        torch.testing.assert_close(got, item.clamp(-q, q) / q)
        assert got.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(out[0], x0[0], atol=0, rtol=0)
    assert 1.0 < float(torch.quantile(x0[2].abs().flatten(), ratio)) < max_value

    # with the default sample_max_value=1 thresholding is plain clipping to [-1, 1]
    clip = DPMSolverMultistepScheduler(prediction_type="sample", thresholding=True)
    clip.set_timesteps(10)
    _, out = clip.step(x0, clip.timesteps[0], torch.zeros_like(x0))
    torch.testing.assert_close(out, x0.clamp(-1, 1), atol=0, rtol=0)


def test_sampler_factory_builds_each_kind_with_the_generator_schedule():
    """One factory for every scheduler: the kinds, the schedule read from settings, overrides, clear errors."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    from busgen_monai.presets import build_scheduler as preset_scheduler
    from busgen_monai.schedulers import DPMSolverMultistepScheduler, build_scheduler

    settings = {"num_train_timesteps": 300, "beta_start": 2e-4, "beta_end": 0.02, "image_size": 64}
    ddpm, ddim = build_scheduler(settings, "ddpm"), build_scheduler(settings, "ddim", 10)
    dpm = build_scheduler(settings, "dpm++", 7, solver_order=1)
    assert isinstance(ddpm, DDPMScheduler) and isinstance(ddim, DDIMScheduler)
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.solver_order == 1 and len(dpm.timesteps) == 7
    assert len(ddim.timesteps) == 10 and ddpm.num_train_timesteps == 300
    assert torch.isclose(ddpm.betas[0], torch.tensor(2e-4)) and torch.isclose(ddpm.betas[-1], torch.tensor(0.02))
    assert torch.equal(ddpm.alphas_cumprod, dpm.alphas_cumprod)
    assert preset_scheduler("tiny", "dpmpp").num_train_timesteps == 500
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*--sampler"):
        build_scheduler(settings, "euler")
    with pytest.raises(ValueError, match=r"lack \['beta_end'\]"):
        build_scheduler({"num_train_timesteps": 10, "beta_start": 1e-4}, "ddpm")
