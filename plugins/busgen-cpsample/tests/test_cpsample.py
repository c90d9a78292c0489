"""busgen-cpsample: protecting classifier, CPSampling guard, nearest-neighbour search, privacy audit, membership
inference, bundle configs and plugin registration (fast tests; the memorising end-to-end test is in
``test_cpsample_memorise.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from monai.networks.schedulers import DDIMScheduler  # noqa: E402

from busgen_monai.data.phantom import write_dataset  # noqa: E402
from busgen_monai.inferers.guided import GuidedDiffusionInferer  # noqa: E402
from busgen_monai.networks import ConditionCodec  # noqa: E402
from busgen_monai.plugins import SamplingGuard, discover_plugins, locate  # noqa: E402
from busgen_monai.presets import build_network  # noqa: E402
from busgen_monai.schedulers import DPMSolverMultistepScheduler  # noqa: E402

from busgen_cpsample.audit import extract_features, image_paths, ms_ssim_pairs, run_audit  # noqa: E402
from busgen_cpsample.features import RandomConvPixelFeatures  # noqa: E402
from busgen_cpsample.guard import CPSamplingGuard  # noqa: E402
from busgen_cpsample.membership import load_items_tensors, loss_attack, proximity_attack  # noqa: E402
from busgen_cpsample.neighbours import FeatureSpace, brute_force_topk, topk_cosine  # noqa: E402
from busgen_cpsample.protector import (  # noqa: E402
    build_protector_network,
    fit_protector,
    load_protector,
    make_scheduler,
    memorisation_accuracy,
    protector_items,
    random_labels,
    save_protector,
    schedule_alphas_cumprod,
)

BETAS = {"schedule": "linear_beta", "beta_start": 1e-4, "beta_end": 0.028}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """16 training + 8 held-out phantom images (64 px) and the training images at 32 px in [-1, 1]."""
    tmp = tmp_path_factory.mktemp("cpsample")
    train = write_dataset(tmp / "train", n=16, seed=3, size=(64, 64), split_fractions=(1, 0, 0))
    held = write_dataset(tmp / "held", n=8, seed=4, size=(64, 64), split_fractions=(0, 0, 1))
    codec = ConditionCodec.from_datalist(train, max_boxes=2)
    images, conds = load_items_tensors(str(train), codec, 32)
    return {"tmp": tmp, "train": train, "held": held, "codec": codec, "images": images, "conds": conds}


@pytest.fixture(scope="module")
def generator_file(phantom):
    """An (untrained) tiny generator exported as a model file, as the sample bundle reads it."""
    torch.manual_seed(0)
    net = build_network("tiny", phantom["codec"])
    path = phantom["tmp"] / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network": net.state_dict(), "codec": phantom["codec"].to_dict()}, path)
    return path


class MeanLogit(nn.Module):
    """A real, differentiable classifier with a known gradient: ``logit = gain * mean(x_t)``."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def forward(self, x, timesteps):
        return self.gain * x.mean(dim=(1, 2, 3))[:, None]


# ---------------------------------------------------------------------------------------------- plugin
def test_registered_through_entry_point():
    reg = discover_plugins()
    assert "cpsample" in reg, reg.errors
    p = reg["cpsample"]
    assert p.version == __import__("busgen_cpsample").__version__
    assert p.components["guard"] == "busgen_cpsample.guard.CPSamplingGuard"
    for role in p.components:
        assert reg.component("cpsample", role) is not None
    bundle = p.bundle_paths()["cpsample"]
    for name in ("train_protector", "audit", "guard_overlay", "metadata"):
        assert (bundle / "configs" / f"{name}.json").is_file(), name
    from busgen_monai.bundle_tools import validate_metadata

    assert validate_metadata(bundle / "configs" / "metadata.json")["version"] == "0.1.0"
    cmds = reg.commands()
    assert cmds["audit-privacy"] == ("cpsample", "busgen_cpsample.audit.main")
    assert callable(locate(cmds["train-protector"][1])) and callable(locate(cmds["membership-inference"][1]))


def test_plugin_module_is_light():
    code = ("import sys, busgen_cpsample.plugin as p; "
            "print(p.PLUGIN.name, 'torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpsample", "False", "False"]


# ---------------------------------------------------------------------------------------------- protector
def test_random_labels_are_balanced_and_seeded(phantom):
    a, b, c = random_labels(17, 5), random_labels(17, 5), random_labels(17, 6)
    assert torch.equal(a, b) and not torch.equal(a, c) and int(a.sum()) == 8
    items = protector_items(phantom["train"], label_seed=5)
    assert [it["label"] for it in items] == random_labels(16, 5).float().tolist()
    assert all(Path(it["image"]).is_absolute() for it in items)
    with pytest.raises(ValueError, match="at least 2"):
        random_labels(1)


def test_protector_memorises_random_labels_and_round_trips(phantom, tmp_path):
    x = phantom["images"]
    net, labels, metrics = fit_protector(x, network_kwargs={"channels": (16, 32, 32)}, max_iterations=600,
                                         lr=2e-3, check_timesteps=(0, 50, 100), check_interval=50,
                                         target_accuracy=1.0, label_seed=1)
    assert metrics["memorised"], metrics
    sched = make_scheduler()
    acc = memorisation_accuracy(net, x, labels, sched, timesteps=(0, 50, 100), n_noise=3, seed=7)
    assert acc["min_accuracy"] >= 0.95, acc  # near 100 % on fresh noise too
    # labels carry no image information: on pure noise the classifier is at chance, not at 100 %
    high = memorisation_accuracy(net, x, labels, sched, timesteps=(499,), n_noise=3)
    assert high["accuracy_by_t"][499] < 0.9
    gen = tmp_path / "gen.pt"
    gen.write_bytes(b"generator weights")
    path = save_protector(tmp_path / "protector.pt", net, labels, network_kwargs={"image_size": 32,
                          "channels": (16, 32, 32)}, generator_checkpoint=gen, label_seed=1, metrics=metrics)
    p = load_protector(path)
    assert torch.equal(p.labels, labels) and p.image_size == (32, 32) and p.label_seed == 1
    assert len(p.generator_sha256) == 64 and p.metrics["memorised"]
    torch.testing.assert_close(p.alphas_cumprod(), schedule_alphas_cumprod())
    t = torch.full((4,), 30)
    torch.testing.assert_close(p.network(x[:4], timesteps=t), net(x[:4], timesteps=t))
    torch.save({"network": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a busgen-cpsample protector"):
        load_protector(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="train-protector"):
        load_protector(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------- guard
def _abar(t: int) -> float:
    return float(schedule_alphas_cumprod()[t])


def test_guard_is_a_no_op_when_the_classifier_is_unsure():
    torch.manual_seed(0)
    clf = build_protector_network(image_size=16, channels=(8, 16), norm_num_groups=8)
    guard = CPSamplingGuard(clf, alpha=0.001, strength=1000.0)
    assert isinstance(guard, SamplingGuard)
    x = torch.randn(6, 1, 16, 16)
    eps = torch.randn(6, 1, 16, 16)
    assert float(guard.confidence(x, torch.tensor(100)).max()) < 0.999
    out = guard(x, torch.tensor(100), eps, alphas_cumprod_t=_abar(100), step=0, num_steps=1)
    assert out is eps  # bit-identical: the very same tensor
    assert guard.stats()["run"]["fired"] == 0 and guard.stats()["run"]["evaluated"] == 6


def test_guard_acts_only_on_confident_items_with_the_documented_update():
    gain, s, t = 200.0, 50.0, 120
    guard = CPSamplingGuard(MeanLogit(gain), alpha=0.25, strength=s)
    x = torch.randn(4, 3, 8, 8) * 0.01
    x[0] += 0.05   # logit +10: confident
    x[1] -= 0.03   # logit -6: confident
    eps = torch.randn(4, 3, 8, 8)
    out = guard(x, torch.tensor(t), eps, alphas_cumprod_t=_abar(t), step=0, num_steps=1)
    logit = gain * x.mean(dim=(1, 2, 3))
    p = torch.sigmoid(logit)
    fire = torch.maximum(p, 1 - p) > 0.75
    assert fire.tolist() == [True, True, False, False]
    assert torch.equal(out[~fire], eps[~fire])  # unsure items untouched, bit for bit
    # BCE against 1/2: grad_x = (p - 1/2) * gain / numel; eps' = eps + s sqrt(1 - abar) grad
    expected = eps + s * (1 - _abar(t)) ** 0.5 * ((p - 0.5) * gain / x[0].numel()).view(-1, 1, 1, 1)
    torch.testing.assert_close(out[fire], expected[fire])
    # the data prediction moves toward the decision boundary (against the sign of the logit)
    a = _abar(t)
    x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
    x0g = (x - (1 - a) ** 0.5 * out) / a ** 0.5
    moved = (x0g - x0).mean(dim=(1, 2, 3))
    assert (torch.sign(moved[fire]) == -torch.sign(logit[fire])).all()
    st = guard.stats()
    assert st["run"]["fired"] == 2 and st["run"]["items_fired"] == 2 and st["run"]["fire_rate"] == 0.5
    # clipping bounds each item's update
    clipped = CPSamplingGuard(MeanLogit(gain), strength=1e6, max_update_rms=0.5)(
        x, torch.tensor(t), eps, alphas_cumprod_t=_abar(t))
    rms = (clipped - eps).flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms[:2], torch.full((2,), 0.5))
    # abs_logit loss and an inactive timestep window
    assert not torch.equal(CPSamplingGuard(MeanLogit(gain), loss="abs_logit")(
        x, torch.tensor(t), eps, alphas_cumprod_t=_abar(t)), eps)
    assert CPSamplingGuard(MeanLogit(gain), timestep_range=(200, 499))(
        x, torch.tensor(t), eps, alphas_cumprod_t=_abar(t)) is eps


def test_guard_checks_schedule_generator_and_image_size(tmp_path):
    clf = build_protector_network(image_size=16, channels=(8, 16), norm_num_groups=8)
    gen = tmp_path / "model.pt"
    gen.write_bytes(b"the generator")
    path = save_protector(tmp_path / "protector.pt", clf, random_labels(4), generator_checkpoint=gen,
                          network_kwargs={"image_size": 16, "channels": (8, 16), "norm_num_groups": 8})
    CPSamplingGuard(path, generator_checkpoint=gen)  # matches
    other = tmp_path / "other.pt"
    other.write_bytes(b"another generator")
    with pytest.raises(ValueError, match="retrain the protector"):
        CPSamplingGuard(path, generator_checkpoint=other)
    CPSamplingGuard(path, generator_checkpoint=other, strict=False)  # warns only
    guard = CPSamplingGuard(path)
    x, eps = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        guard(x, torch.tensor(10), eps, alphas_cumprod_t=0.5)
    with pytest.raises(ValueError, match="trained at"):
        guard(torch.randn(2, 1, 8, 8), torch.tensor(10), eps, alphas_cumprod_t=_abar(10))
    with pytest.raises(ValueError, match="alpha"):
        CPSamplingGuard(path, alpha=0.9)


@pytest.mark.parametrize("kind", ["dpm", "ddim"])
def test_guard_inside_guided_sampler(kind):
    torch.manual_seed(0)
    codec = ConditionCodec(["benign", "malignant"], max_boxes=2)
    net = build_network("tiny", codec).eval()
    sched = DPMSolverMultistepScheduler(500, **BETAS) if kind == "dpm" else DDIMScheduler(500, **BETAS)
    sched.set_timesteps(6)
    guard = CPSamplingGuard(MeanLogit(5.0), alpha=0.25, strength=20.0)
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # grey
    noise[:2] += 0.6  # the classifier is confident about these two from the start
    cond = codec.pack_names(["benign", "malignant"] * 3, [None] * 6, boxes=[[[0.2, 0.2, 0.6, 0.6]]] * 6)
    inf = GuidedDiffusionInferer(sched, guidance_scale=1.8, guards=[guard])
    out = inf.sample(noise, net, conditioning=cond, verbose=False)
    plain = GuidedDiffusionInferer(sched, guidance_scale=1.8).sample(noise, net, conditioning=cond, verbose=False)
    assert torch.isfinite(out).all() and out.shape == noise.shape
    run = inf.guard_stats()["CPSamplingGuard"]["run"]
    assert run["steps"] == 6 and len(run["fired_per_step"]) == 6 and run["evaluated"] == 36
    assert 0 < run["fired"] < 36 and run["items_fired"] >= 1
    fired_items = run["items_fired"]
    assert not torch.allclose(out, plain)
    # items the guard never touched follow the unguided trajectory exactly
    untouched = [i for i in range(6) if torch.equal(out[i], plain[i])]
    assert len(untouched) == 6 - fired_items
    # reset() before each call clears the run counters; totals accumulate
    inf.sample(noise, net, conditioning=cond, verbose=False)
    st = guard.stats()
    assert st["run"]["fired"] == run["fired"] and st["total"]["runs"] == 2
    assert st["total"]["fired"] == 2 * run["fired"] and st["total"]["evaluated"] == 72
    guard.reset_totals()
    assert guard.stats()["total"]["runs"] == 0


# ---------------------------------------------------------------------------------------------- search
def test_topk_cosine_is_exact():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(257, 12, generator=g)
    q = torch.randn(70, 12, generator=g)
    space = FeatureSpace([("a", 5, 0.3), ("b", 7, 0.7)]).fit(ref)
    zr, zq = space.transform(ref), space.transform(q)
    # weighted cosine = sum_k w_k cos_k
    ra, rb = (ref - ref.mean(0)).split([5, 7], 1)
    qa, qb = (q - ref.mean(0)).split([5, 7], 1)
    cos = lambda u, v: nn.functional.normalize(u, dim=1) @ nn.functional.normalize(v, dim=1).T  # noqa: E731
    torch.testing.assert_close(zq @ zr.T, 0.3 * cos(qa, ra) + 0.7 * cos(qb, rb), atol=1e-5, rtol=1e-5)
    for k in (1, 4):
        v, i = topk_cosine(zq, zr, k, query_block=16, ref_block=50)
        bv, bi = brute_force_topk(zq, zr, k)
        torch.testing.assert_close(v, bv)
        assert torch.equal(i, bi)
    v, i = topk_cosine(zr, zr, 2, query_block=33, ref_block=40, exclude_self=True)
    bv, bi = brute_force_topk(zr, zr, 2, exclude_self=True)
    assert torch.equal(i, bi) and (i != torch.arange(257)[:, None]).all()
    sub = torch.tensor([3, 100, 256])
    v, i = topk_cosine(zr[sub], zr, 1, ref_block=64, exclude=sub)
    assert torch.equal(i[:, 0], bi[sub, 0])
    with pytest.raises(ValueError, match="k must be"):
        topk_cosine(zq, zr[:3], 4)


# ---------------------------------------------------------------------------------------------- audit
def _copies(phantom, out: Path) -> tuple[list[Path], dict[int, int]]:
    """A 'generated' folder: exact copies of training images 2 and 9, a noisy copy of 5, and 5 held-out images."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    train, _ = image_paths(phantom["train"], ["training"])
    held, _ = image_paths(phantom["held"], ["test"])
    rng = np.random.default_rng(0)
    truth = {}
    files = []
    for n, j in enumerate((2, 9, 5)):
        arr = np.asarray(Image.open(train[j]).convert("RGB")).astype(np.int16)
        if j == 5:
            arr = arr + rng.integers(-6, 7, arr.shape)
        p = out / f"gen_{n}.png"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p)
        truth[n] = j
        files.append(p)
    for n, src in enumerate(held[:5], start=3):
        p = out / f"gen_{n}.png"
        Image.open(src).convert("RGB").save(p)
        files.append(p)
    return files, truth


def test_audit_nearest_neighbours_are_exact(phantom, tmp_path):
    files, truth = _copies(phantom, tmp_path / "gen")
    summary = run_audit(files, phantom["train"], tmp_path / "audit", threshold=0.95, ssim_threshold=0.9,
                        progress=False, top_pairs=4)
    assert summary["ms_ssim_settings"]["mode"] == "brute_force"
    rows = (tmp_path / "audit" / "nearest.csv").read_text().splitlines()[1:]
    rows = [r.split(",") for r in rows]
    _, train_names = image_paths(phantom["train"], ["training"])
    for n, j in truth.items():
        assert rows[n][1] == train_names[j] and rows[n][3] == train_names[j]
        assert float(rows[n][2]) > 0.99 and float(rows[n][4]) > 0.9 and rows[n][5] == "1"
    assert float(rows[0][2]) == pytest.approx(1.0, abs=1e-5) and float(rows[0][4]) == pytest.approx(1.0, abs=1e-4)
    assert summary["near_copies"] >= 3 and not summary["passed"]
    assert summary["cosine"]["max"] == pytest.approx(1.0, abs=1e-5)
    # brute force in the same feature space gives the same cosine nearest neighbours
    fx = RandomConvPixelFeatures()
    train_paths, _ = image_paths(phantom["train"], ["training"])
    ft, fg = extract_features(train_paths, fx), extract_features(files, fx)
    space = FeatureSpace(fx.parts).fit(ft)
    bv, bi = brute_force_topk(space.transform(fg), space.transform(ft), 1)
    assert [r[1] for r in rows] == [train_names[int(j)] for j in bi[:, 0]]
    np.testing.assert_allclose([float(r[2]) for r in rows], bv[:, 0].numpy(), atol=1e-5)
    # top-k candidate mode (forced) finds the same copies
    topk = run_audit(files, phantom["train"], tmp_path / "audit_topk", brute_force_max_pairs=0, k=3,
                     progress=False, plots=False)
    assert topk["ms_ssim_settings"]["mode"] == "top3_cosine_candidates"
    assert topk["ms_ssim"]["max"] == pytest.approx(summary["ms_ssim"]["max"], abs=1e-5)
    assert topk["reference_training_loo"]["n"] == 16


def test_ms_ssim_pairs_and_size_rule():
    a = torch.rand(3, 1, 176, 176)
    torch.testing.assert_close(ms_ssim_pairs(a, a), torch.ones(3), atol=1e-4, rtol=0)
    assert float(ms_ssim_pairs(a, torch.rand(3, 1, 176, 176)).max()) < 0.3
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_pairs(a[..., :64, :64], a[..., :64, :64])
    assert ms_ssim_pairs(a[..., :64, :64], a[..., :64, :64], scales=3, kernel_size=7).shape == (3,)


def test_audit_cli_writes_its_files(phantom, tmp_path, capsys):
    from busgen_monai.cli import main

    files, _ = _copies(phantom, tmp_path / "gen")
    out = tmp_path / "cli"
    rc = main(["audit-privacy", str(files[0].parent), str(phantom["train"]), "--out", str(out), "--no-progress",
               "--threshold", "0.95", "--ssim-threshold", "0.9"])
    assert rc == 1  # the copies fail the audit
    for name in ("summary.json", "nearest.csv", "histograms.png", "top_pairs.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("max", "p99", "p95", "count_over_threshold"):
        assert key in summary["cosine"] and key in summary["ms_ssim"]
    assert "FAIL" in capsys.readouterr().out
    # only the held-out images: no near-copy at these thresholds -> pass, exit code 0
    held = tmp_path / "held_only"
    held.mkdir()
    for f in files[3:]:
        (held / f.name).write_bytes(f.read_bytes())
    assert main(["audit-privacy", str(held), str(phantom["train"]), "--out", str(tmp_path / "cli2"),
                 "--no-progress", "--threshold", "0.999", "--ssim-threshold", "0.95"]) == 0


def test_audit_bundle_exits_non_zero_when_the_audit_fails(phantom, tmp_path):
    """Through `python -m monai.bundle run` too, a failing audit is a failing run (and a passing one is not)."""
    import subprocess
    import sys

    from busgen_monai.plugins import discover_plugins

    files, _ = _copies(phantom, tmp_path / "gen")
    bundle = discover_plugins()["cpsample"].bundle_paths()["cpsample"]
    held = tmp_path / "held_only"
    held.mkdir()
    for f in files[3:]:
        (held / f.name).write_bytes(f.read_bytes())

    def run(gen, out, ssim):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "audit.json"),
               "--bundle_root", str(bundle), "--generated_datalist", str(gen), "--training_datalist",
               str(phantom["train"]), "--output_dir", str(out), "--progress", "false", "--threshold", "0.999",
               "--ssim_threshold", str(ssim)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})

    bad = run(files[0].parent, tmp_path / "a1", 0.9)
    assert bad.returncode != 0 and "privacy audit FAILED" in bad.stderr + bad.stdout
    good = run(held, tmp_path / "a2", 0.95)
    assert good.returncode == 0, good.stderr[-2000:]
    assert json.loads((tmp_path / "a2" / "summary.json").read_text())["passed"]


# ---------------------------------------------------------------------------------------------- membership
def test_membership_attacks(phantom, generator_file, tmp_path):
    from busgen_monai.inferers import load_generator
    from busgen_monai.presets import build_scheduler

    net, codec = load_generator(generator_file, "tiny")
    members = (phantom["images"][:8], phantom["conds"][:8])
    held = load_items_tensors(str(phantom["held"]), codec, 32, "test")
    res = loss_attack(net, members, held, build_scheduler("tiny"), timesteps=(50, 250), n_noise=1)
    again = loss_attack(net, members, held, build_scheduler("tiny"), timesteps=(50, 250), n_noise=1)
    assert 0.0 <= res["auc"] <= 1.0 and res["auc"] == again["auc"] and res["n_members"] == 8
    # proximity attack: a generated set that copies the members exposes them (AUC 1); held-out copies invert it
    files, _ = _copies(phantom, tmp_path / "gen")
    train_paths, _ = image_paths(phantom["train"], ["training"])
    held_paths, _ = image_paths(phantom["held"], ["test"])
    members_copied = [train_paths[j] for j in (2, 9, 5)]
    r = proximity_attack(members_copied, members_copied, held_paths[5:])
    assert r["auc"] == 1.0
    r2 = proximity_attack(files[3:], train_paths[:4], held_paths[:5])
    assert r2["auc"] == 0.0  # the 'generated' set is exactly the non-members


# ---------------------------------------------------------------------------------------------- bundles
def test_train_protector_cli_and_guarded_sample_bundle(phantom, generator_file, tmp_path):
    """`busgen train-protector` (the cpsample bundle's train_protector config) writes protector.pt next to the
    generator; the busgen_sample bundle + guard_overlay.json samples with the guard and records its stats."""
    from monai.bundle import run

    from busgen_monai.cli import main
    from busgen_monai.plugins import discover_plugins

    rc = main(["train-protector", str(generator_file), str(phantom["train"]), "--preset", "tiny",
               "--max-iterations", "20", "--no-progress", "--", "--channels", "[8,16,16]", "--check_interval", "10",
               "--num_threads", "1"])
    assert rc == 0
    path = generator_file.parent / "protector.pt"
    p = load_protector(path)
    from busgen_monai.inferers import file_sha256

    assert p.generator_sha256 == file_sha256(generator_file) and p.image_size == (32, 32)
    assert p.labels.tolist() == random_labels(16, 0).tolist() and len(p.items) == 16
    assert p.items[0] == "images/ph_000000.png" and p.metrics["iterations"] == 20
    assert "accuracy_by_t" in p.metrics

    bundle = Path(__file__).resolve().parents[3] / "bundles" / "busgen_sample"
    overlay = discover_plugins()["cpsample"].bundle_paths()["cpsample"] / "configs" / "guard_overlay.json"
    out = tmp_path / "sampled"
    run(config_file=[str(bundle / "configs" / "inference.json"), str(overlay)], bundle_root=str(bundle),
        checkpoint=str(generator_file), preset_name="tiny", datalist=str(phantom["train"]), output_dir=str(out),
        num_images=4, chunk_size=4, num_inference_steps=3, progress=False, cpsample_alpha=0.5,
        cpsample_strength=5.0)
    stats = json.loads((out / "guard_stats_rank0.json").read_text())["CPSamplingGuard"]
    assert stats["run"]["evaluated"] == 12 and stats["alpha"] == 0.5 and stats["protector"].endswith("protector.pt")
    data = json.loads((out / "datalist.json").read_text())
    assert data["training"][0]["provenance"]["cpsample"]["strength"] == 5.0


def test_label_groups_and_square_views(phantom, tmp_path):
    from PIL import Image

    from busgen_cpsample.audit import load_view

    items = protector_items(phantom["train"], label_seed=2, group_key="patient_id")
    by_patient: dict = {}
    for it in items:
        by_patient.setdefault(it["patient_id"], set()).add(it["label"])
    assert all(len(v) == 1 for v in by_patient.values()) and {0.0, 1.0} <= {it["label"] for it in items}
    with pytest.raises(KeyError, match="missing"):
        protector_items(phantom["train"], group_key="laterality")
    # a wide image is cropped to the generator's square window around its box, then compared at 8 px
    arr = np.zeros((20, 40), np.uint8)
    arr[:, 30:] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    v = load_view(tmp_path / "wide.png", [[0.8, 0.2, 0.95, 0.6]], square=True, compare_size=8, out_size=16)
    assert v.shape == (16, 16) and v[:, -4:].min() == 255 and v[:, :2].max() == 0  # window x 20..40 holds the box
    assert load_view(tmp_path / "wide.png", None, square=False).shape == (20, 40)


@pytest.fixture(scope="module")
def latent_generator_file(phantom):
    """An (untrained) tiny latent generator (autoencoder 32 px -> 2 x 16 x 16 latents, one-block DiT) written with the
    checkpoint records bundles/busgen_latent uses."""
    from busgen_monai.engines import NetworkArgsRecord
    from busgen_monai.inferers import AutoencoderRecord, NetworkClassRecord
    from busgen_monai.networks import ConditionalDiT, LatentAutoencoderKL

    torch.manual_seed(0)
    codec = phantom["codec"]
    ae = LatentAutoencoderKL(channels=(8, 16), num_res_blocks=1, attention_levels=(False, False), latent_channels=2,
                             norm_num_groups=4, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
    dit = ConditionalDiT(in_channels=2, input_size=16, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                         conditions=("pathology", "device", "birads"), **codec.network_kwargs())
    settings = {"image_size": 32, "image_channels": 1, "num_train_timesteps": 500, "beta_start": 1e-4,
                "beta_end": 0.028, "guidance_w": 1.8, "family": "latent"}
    state = {"network": dit.state_dict(), "network_kwargs": NetworkArgsRecord(dit).state_dict(),
             "network_class": NetworkClassRecord(dit).state_dict(),
             "autoencoder": AutoencoderRecord(ae, 0.8).state_dict(), "codec": codec.state_dict(),
             "settings": settings}
    path = phantom["tmp"] / "latent_models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_latent_generator_gets_a_latent_protector_and_guarded_sampling(phantom, generator_file, latent_generator_file,
                                                                      tmp_path):
    """For a latent generator the protector is trained on the generator's latents (the space its sampler and the
    guard work in): the same CLI and bundle, no extra option; the guarded latent sample bundle runs with it."""
    from monai.bundle import run

    from busgen_monai.cli import main
    from busgen_monai.inferers import load_generator
    from busgen_monai.plugins import discover_plugins
    from busgen_cpsample.protector import LatentEncoded, latent_encoder, protector_input_shape

    # pixel generators keep the image path; latent ones get the encoder and the latent shape
    assert latent_encoder(generator_file) is None
    enc = latent_encoder(latent_generator_file)
    assert isinstance(enc, LatentEncoded) and protector_input_shape(enc, 32) == [2, 16, 16]
    assert protector_input_shape(None, 32, 1) == [1, 32, 32]
    model, _ = load_generator(latent_generator_file)
    img = phantom["images"][0]
    z = enc({"image": img, "other": 1})
    assert z["other"] == 1 and z["image"].shape == (2, 16, 16)
    with torch.no_grad():
        assert torch.allclose(z["image"], model.encode(img[None].float(), sample=False)[0])
    with pytest.raises(ValueError, match="pixel-space generator"):
        LatentEncoded(generator_file)

    rc = main(["train-protector", str(latent_generator_file), str(phantom["train"]), "--max-iterations", "20",
               "--no-progress", "--", "--channels", "[8,16,16]", "--check_interval", "10", "--num_threads", "1"])
    assert rc == 0
    p = load_protector(latent_generator_file.parent / "protector.pt")
    assert p.input_space == "latent" and p.image_size == (16, 16) and p.image_channels == 2
    assert p.network_kwargs["in_channels"] == 2 and p.metrics["iterations"] == 20 and len(p.items) == 16
    # the protector scores latents of the generator's shape
    with torch.no_grad():
        assert p.network(torch.zeros(3, 2, 16, 16), timesteps=torch.zeros(3).long()).shape == (3, 1)

    bundle = Path(__file__).resolve().parents[3] / "bundles" / "busgen_sample"
    overlay = discover_plugins()["cpsample"].bundle_paths()["cpsample"] / "configs" / "guard_overlay.json"
    out = tmp_path / "sampled"
    run(config_file=[str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "latent.json"),
                     str(overlay)], bundle_root=str(bundle), checkpoint=str(latent_generator_file),
        datalist=str(phantom["train"]), output_dir=str(out), num_images=4, chunk_size=4, num_inference_steps=3,
        progress=False, cpsample_alpha=0.5, cpsample_strength=5.0)
    stats = json.loads((out / "guard_stats_rank0.json").read_text())["CPSamplingGuard"]
    assert stats["run"]["evaluated"] == 12 and stats["protector"].endswith("protector.pt")
    items = json.loads((out / "datalist.json").read_text())["training"]
    assert len(items) == 4 and items[0]["provenance"]["cpsample"]["strength"] == 5.0
    assert items[0]["provenance"]["family"] == "latent"
