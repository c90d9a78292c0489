"""busgen-clean: the cleaning filter on phantom data with deliberately wrong labels, its checks, threshold
helper, CLI, bundle and use as a ``filters`` entry of generation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from busgen_monai.data.phantom import write_dataset
from busgen_monai.plugins import DatalistFilter, discover_plugins

from busgen_clean.checks import box_visibility, is_blank
from busgen_clean.filter import CleaningFilter
from busgen_clean.judge import Judge, read_split_items, train_judge
from busgen_clean.threshold import choose_threshold, label_pairs, precision_curve, threshold_for_precision

FLIP = {"benign": "malignant", "malignant": "benign"}


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The 'real' labelled phantom the judge trains on (separate seed from the 'generated' set)."""
    return write_dataset(tmp_path_factory.mktemp("real"), n=200, seed=11, size=(64, 64))


@pytest.fixture(scope="module")
def judge(real, tmp_path_factory, one_thread):
    return train_judge(real, tmp_path_factory.mktemp("judge"), seeds=(0,), epochs=20)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """150 'generated' phantom images; every 5th item's label flipped (20 %, both directions)."""
    path = write_dataset(tmp_path_factory.mktemp("gen"), n=150, seed=12, size=(64, 64))
    data = json.loads(path.read_text())
    items = [dict(it, split="training") for s in ("training", "validation", "test") for it in data.get(s, [])]
    wrong = set()
    for k, it in enumerate(items):
        if k % 5 == 2:
            it["pathology"] = FLIP[it["pathology"]]
            it.pop("birads", None)
            wrong.add(it["image"])
    data.update(training=items, validation=[], test=[])
    out = path.parent / "noisy.json"
    out.write_text(json.dumps(data))
    return out, wrong


def test_plugin_registered():
    reg = discover_plugins()
    assert "clean" in reg, reg.errors
    assert reg.component("clean", "filter") is CleaningFilter
    assert set(reg.commands()) >= {"clean", "clean-train-judge"}
    bundle = reg.bundles()["clean"]
    assert (bundle / "configs" / "clean.json").is_file() and (bundle / "configs" / "train_judge.json").is_file()


def test_judge_save_load_roundtrip(judge, real, tmp_path):
    assert judge.meta["validation"]["accuracy"] >= 0.9
    items, base, _ = read_split_items(real, ["test"])
    again = Judge.load(judge.save(tmp_path / "j"))
    np.testing.assert_allclose(again.predict_proba(items, base), judge.predict_proba(items, base), atol=1e-6)
    assert again.classes == ["benign", "malignant"] and again.ood is not None
    assert again.ood_threshold == pytest.approx(judge.ood_threshold)
    with pytest.raises(FileNotFoundError, match="clean-train-judge"):
        Judge.load(tmp_path / "missing")


def test_filter_removes_wrong_labels(judge, noisy):
    path, wrong = noisy
    items, base, _ = read_split_items(path)
    f = CleaningFilter(judge, threshold=0.5)
    assert isinstance(f, DatalistFilter)
    kept, rejected = f(items, base)
    assert len(kept) + len(rejected) == len(items) == 150
    rej = {r["image"] for r in rejected}
    right = {it["image"] for it in items} - wrong
    removed_wrong = len(rej & wrong) / len(wrong)
    kept_right = len(right - rej) / len(right)
    assert removed_wrong >= 0.9, removed_wrong
    assert kept_right >= 0.9, kept_right
    for r in rejected:
        assert r["reject_checks"] == ["label"] and "judge disagrees" in r["reject_reason"]
        assert 0.0 <= r["reject_score"] < 0.5 and r["reject_score"] == r["clean_scores"]["label_prob"]
    assert f.last_stats["rejected"] == len(rejected)


def test_blank_and_saturated_images_are_caught(tmp_path, real):
    items, base, _ = read_split_items(real, ["test"])
    good = dict(items[0], image=str(base / items[0]["image"]))
    for name, value in (("black", 0), ("white", 255), ("flat", 90)):
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(tmp_path / f"{name}.png")
    bad = [dict(good, image=f"{n}.png") for n in ("black", "white", "flat")]
    kept, rejected = CleaningFilter(checks=["blank"])([good, *bad], tmp_path)
    assert [k["image"] for k in kept] == [good["image"]]
    assert [r["image"] for r in rejected] == ["black.png", "white.png", "flat.png"]
    assert all(r["reject_reason"].startswith("blank") for r in rejected)
    assert is_blank(np.zeros((8, 8), np.uint8))[0] and not is_blank(np.arange(64, dtype=np.uint8).reshape(8, 8))[0]


def test_box_visibility_separates_lesion_from_background():
    rng = np.random.default_rng(0)
    img = rng.normal(120, 10, (64, 64)).clip(0, 255).astype(np.uint8)
    box = [[0.375, 0.375, 0.625, 0.625]]
    assert box_visibility(img, box) < 0.5
    img[24:40, 24:40] = 40
    assert box_visibility(img, box) > 3.0
    assert np.isnan(box_visibility(img, []))


def test_visibility_and_ood_checks_reject_noise(judge, real, tmp_path):
    items, base, _ = read_split_items(real, ["test"])
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    noise = dict(items[0], image="noise.png")
    reals = [dict(it, image=str(base / it["image"])) for it in items]
    kept, rejected = CleaningFilter(judge, checks="all")([*reals, noise], tmp_path)
    noise_rej = [r for r in rejected if r["image"] == "noise.png"]
    assert noise_rej and "ood" in noise_rej[0]["reject_checks"], rejected
    # thresholds are low/high percentiles of real data, so a few real images fail them on a 30-image split
    assert len(kept) >= 0.7 * len(reals)


def test_threshold_for_precision_holds_on_held_out_scores():
    rng = np.random.default_rng(0)

    def draw(n):  # right items score high, wrong ones low, overlapping
        right, wrong = rng.beta(5, 2, n), rng.beta(2, 5, n // 4)
        return np.r_[right, wrong], np.r_[np.ones(n, bool), np.zeros(n // 4, bool)]

    s, c = draw(4000)
    res = threshold_for_precision(s, c, 0.95)
    assert res["achieved"] and res["precision"] >= 0.95
    s2, c2 = draw(4000)
    kept = s2 >= res["threshold"]
    assert c2[kept].mean() >= 0.94  # held-out precision within sampling error of the target
    # a lower threshold would have kept more right items but missed the target
    thr, prec, _ = precision_curve(s, c)
    assert np.all(prec[thr >= res["threshold"]] >= 0.95) and prec[thr < res["threshold"]][-1] < 0.95
    assert not threshold_for_precision([0.5, 0.5], [True, False], 0.9)["achieved"]


def test_choose_threshold_on_real_validation_holds_on_test(judge, real):
    info = choose_threshold(judge, real, 0.95)
    assert info["achieved"] and 0.0 <= info["threshold"] <= 1.0
    items, base, _ = read_split_items(real, ["test"])
    proba = judge.predict_proba(items, base)
    labels = [judge.classes.index(it["pathology"]) for it in items]
    scores, correct, weights = label_pairs(proba, labels, 0.5)
    kept = scores >= info["threshold"]
    assert np.average(correct[kept], weights=weights[kept]) >= 0.95


def test_cli_train_judge_and_clean(real, noisy, tmp_path, one_thread):
    from busgen_monai.cli import main as busgen

    path, wrong = noisy
    jdir = tmp_path / "judge"
    assert busgen(["clean-train-judge", str(real), "--out", str(jdir), "--epochs", "8"]) == 0
    assert (jdir / "judge.json").is_file() and (jdir / "model_seed0.pt").is_file()
    out = tmp_path / "clean"
    assert busgen(["clean", str(path), "--judge", str(jdir), "--out", str(out), "--target-precision", "0.9",
                   "--validation", str(real), "--checks", "label,blank"]) == 0
    for name in ("datalist.json", "rejects.json", "rejects.csv", "summary.json", "rejects_grid.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == 150 and summary["kept"] + summary["rejected"] == 150
    assert summary["settings"]["threshold_selection"]["source"] == "target_precision"
    assert set(summary["per_class"]) == {"benign", "malignant"} and len(summary["per_device"]) == 4
    rows = list(csv.DictReader((out / "rejects.csv").open()))
    assert len(rows) == summary["rejected"] and all(r["reject_reason"] for r in rows)
    # the kept datalist is valid from its new folder (paths rewritten)
    from busgen_monai.data.schema import load_datalist

    kept = load_datalist(out / "datalist.json", check_files=True)
    assert len(kept["training"]) == summary["kept"]
    # bad usage gives a clear message
    assert busgen(["clean", str(path), "--judge", str(jdir), "--out", str(out), "--target-precision", "0.9"]) == 2


def test_bundle_configs(judge, real, noisy, tmp_path, one_thread):
    from busgen_monai.cli import run_bundle

    run_bundle("clean", "train_judge", datalist=str(real), output_dir=str(tmp_path / "j"), seeds=[0], epochs=2,
               progress=False)
    assert Judge.load(tmp_path / "j").meta["epochs"] == 2
    path, _ = noisy
    run_bundle("clean", "clean", generated=str(path), judge=judge, output_dir=str(tmp_path / "b"),
               checks=["label"], threshold=0.5)
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["rejected"] >= 25 and s["settings"]["label_threshold"] == 0.5


def test_filter_as_generation_filters_entry(judge, tmp_path):
    """End to end: a tiny untrained diffusion U-Net generates, the cleaning filter runs at merge."""
    from monai.bundle import ConfigParser

    from busgen_monai.inferers.box_prior import BoxPrior
    from busgen_monai.inferers.generate import generate_dataset, plan_conditions
    from busgen_monai.inferers.guided import GuidedDiffusionInferer
    from busgen_monai.networks import ConditionalDiffusionUNet, ConditionCodec
    from busgen_monai.schedulers import DPMSolverMultistepScheduler

    # the filter as a bundle config's `filters` entry
    judge_dir = tmp_path / "judge"
    judge.save(judge_dir)
    parser = ConfigParser({"filters": [{"_target_": "busgen_clean.filter.CleaningFilter", "judge": str(judge_dir),
                                        "threshold": 0.999, "checks": ["blank", "label", "ood"]}]})
    filters = parser.get_parsed_content("filters")
    torch.manual_seed(0)
    codec = ConditionCodec(("benign", "malignant"), max_boxes=1)
    net = ConditionalDiffusionUNet(image_channels=3, channels=(8, 8), num_res_blocks=1,
                                   attention_levels=(False, False), norm_num_groups=4, num_head_channels=8,
                                   **codec.network_kwargs())
    inferer = GuidedDiffusionInferer(DPMSolverMultistepScheduler(500, schedule="linear_beta", beta_start=1e-4,
                                                                 beta_end=0.028), guidance_scale=1.8,
                                     num_inference_steps=2)
    prior = BoxPrior().fit([{"pathology": p, "boxes": [[0.3 + 0.01 * k, 0.3, 0.6, 0.6]]}
                            for k in range(8) for p in ("benign", "malignant")])
    plan = plan_conditions(6, ["benign", "malignant"], ["PhantomMed-L7"], seed=0, box_prior=prior)
    res = generate_dataset(net, codec, inferer, tmp_path / "gen", plan, image_size=(32, 32), chunk_size=6,
                           filters=filters, progress=False)
    assert res.kept + res.rejected == 6 and res.rejected >= 1
    rejects = json.loads((tmp_path / "gen" / "rejects.json").read_text())
    assert all(r["filter"] == "CleaningFilter" and r["reject_reason"] and "reject_score" in r for r in rejects)


def test_bad_settings_give_clear_messages(judge):
    with pytest.raises(ValueError, match="unknown cleaning check"):
        CleaningFilter(judge, checks=["nope"])
    with pytest.raises(ValueError, match="need a judge"):
        CleaningFilter(None, checks=["label"])
    with pytest.raises(ValueError, match="validation"):
        CleaningFilter(judge, target_precision=0.9)
    with pytest.raises(ValueError, match="probability"):
        CleaningFilter(judge, threshold=1.5)


def test_any_label_key_can_be_judged(real, noisy, one_thread):
    """The judge works on any datalist label key: here the device (4 classes)."""
    dev_judge = train_judge(real, None, label_key="device", epochs=10, image_size=32, crop="image")
    assert len(dev_judge.classes) == 4 and dev_judge.meta["validation"]["accuracy"] >= 0.8
    items, base, _ = read_split_items(noisy[0])
    swapped = [dict(it, device=dev_judge.classes[(dev_judge.classes.index(it["device"]) + 1) % 4]) for it in items[:20]]
    kept, rejected = CleaningFilter(dev_judge, threshold=0.5)(swapped, base)
    assert len(rejected) >= 16 and all("device=" in r["reject_reason"] for r in rejected)
