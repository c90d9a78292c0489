"""The nyu_breast bundle end to end on the phantom: `python -m monai.bundle run` (train / evaluate / inference) as
docs/README.md shows, the overfit + weakly supervised localisation checks, and the multi-GPU overlay (slow)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from busgen_monai.data.phantom import write_dataset
from busgen_nyu.workflow import bundle_root, evaluate, infer, train

BUNDLE = bundle_root()
CFG = BUNDLE / "configs"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """60 phantom images at 64 px (normal, benign, malignant): 10 validation and 10 test breasts."""
    out = tmp_path_factory.mktemp("nyu_phantom")
    return write_dataset(out, n=60, seed=2, size=(64, 64), pathologies=("normal", "benign", "malignant"))


@pytest.fixture(scope="module")
def few_breasts(tmp_path_factory) -> Path:
    """24 phantom images (about 19 breasts, all in the training split) to overfit."""
    out = tmp_path_factory.mktemp("nyu_phantom_small")
    return write_dataset(out, n=24, seed=2, size=(64, 64), pathologies=("normal", "benign", "malignant"))


def _run(args, env=None, timeout=600):
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _bundle(configs, *overrides):
    files = json.dumps([str(CFG / f"{c}.json") for c in configs])
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--meta_file", str(CFG / "metadata.json"),
            "--logging_file", str(CFG / "logging.conf"), "--bundle_root", str(BUNDLE), *overrides]


def test_bundle_runs_with_monai_bundle_run(phantom, tmp_path):
    out = tmp_path / "run"
    common = ["--datalists", json.dumps([str(phantom)]), "--group_by", "patient", "--output_dir", str(out)]
    _run(_bundle(["train", "preset_cpu_tiny"], *common, "--max_epochs", "2"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["network"]["backbone"] == "resnet_tiny"
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "model_final.pt").is_file()

    # evaluation and inference in-process through the same configs (busgen_nyu.workflow); the slow test below runs
    # them with `python -m monai.bundle run` too
    kw = dict(datalists=[str(phantom)], group_by="patient", output_dir=str(out))
    evaluate(["preset_cpu_tiny"], **kw)
    rep = json.loads((out / "eval" / "report.json").read_text())["results"]
    assert rep["n_breasts"] >= 4 and 0.0 <= rep["breast_auroc (malignant)"]["estimate"] <= 1.0
    assert {"pointing_game", "images_with_masks"} <= set(rep["localisation"])
    h = rep["hybrid_reader_model"]
    assert 0.0 <= h["delong hybrid vs reader"]["p_value"] <= 1.0 and "auroc_hybrid" in h
    for name in ("report.html", "breasts.csv", "images.csv", "saliency.npz", "localisation.csv", "roc.png"):
        assert (out / "eval" / name).is_file(), name
    assert list((out / "eval" / "overlays").glob("*.png"))

    infer(["preset_cpu_tiny"], infer_split="all", **kw)
    with open(out / "inference" / "breasts.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n_patients = len({it["patient_id"] for s in ("training", "validation", "test")
                      for it in json.loads(phantom.read_text())[s]})
    assert len(rows) == n_patients
    assert all(0.0 <= float(r["prob_malignant"]) <= 1.0 for r in rows)
    with open(out / "inference" / "images.csv", newline="") as fh:
        images = list(csv.DictReader(fh))
    att = {}
    for r in images:
        att[r["breast_id"]] = att.get(r["breast_id"], 0.0) + float(r["attention"])
    assert np.allclose(list(att.values()), 1.0, atol=1e-4)
    maps = np.load(out / "inference" / "saliency.npz")
    assert maps["map_0"].shape[1:] == (2, 16, 16)  # K images x (benign, malignant) x 16 x 16 (cpu_tiny)


@pytest.mark.slow
def test_evaluate_and_inference_with_monai_bundle_run(phantom, tmp_path):
    out = tmp_path / "run"
    common = ["--datalists", json.dumps([str(phantom)]), "--group_by", "patient", "--output_dir", str(out)]
    _run(_bundle(["train", "preset_cpu_tiny"], *common, "--max_epochs", "1"))
    _run(_bundle(["train", "evaluate", "preset_cpu_tiny"], *common))
    assert json.loads((out / "eval" / "report.json").read_text())["results"]["n_breasts"] == 10
    _run(_bundle(["train", "inference", "preset_cpu_tiny"], *common))
    assert (out / "inference" / "saliency.npz").is_file() and (out / "inference" / "breasts.csv").is_file()


def _overfit(datalist, out, epochs, augment):
    kw = dict(datalists=[str(datalist)], group_by="patient", output_dir=str(out))
    extra = {} if augment else {"train#augmentation": []}
    train(["preset_cpu_tiny"], train_split="training", val_split="training", val_interval=10**6, max_epochs=epochs,
          **extra, **kw)
    return evaluate(["preset_cpu_tiny"], test_split="training", model_path=str(out / "models" / "model_final.pt"),
                    n_bootstrap=50, overlay_n=0, **kw)["results"]


def test_tiny_model_overfits_phantom_breasts_and_points_at_benign_lesions(few_breasts, tmp_path):
    res = _overfit(few_breasts, tmp_path / "overfit", epochs=60, augment=False)
    assert res["breast_auroc (malignant)"]["estimate"] == 1.0
    assert res["breast_auroc (benign)"]["estimate"] == 1.0
    loc = res["localisation"]
    assert loc["images_with_masks"] >= 8
    # benign lesions: the saliency peak falls on the lesion (within the pointing-game tolerance)
    assert loc["by_class"]["benign"]["pointing_game"] >= 0.8


@pytest.mark.slow
def test_overfit_pointing_game_on_all_lesions(tmp_path):
    """More phantom breasts (41 training breasts, 60 epochs): peaks fall on benign and malignant lesions."""
    dl = write_dataset(tmp_path / "ph", n=80, seed=2, size=(64, 64), pathologies=("normal", "benign", "malignant"))
    res = _overfit(dl, tmp_path / "overfit", epochs=60, augment=True)
    assert res["breast_auroc (malignant)"]["estimate"] == 1.0
    assert res["localisation"]["pointing_game"]["estimate"] >= 0.8


@pytest.mark.slow
def test_multi_gpu_overlay_two_cpu_ranks(phantom, tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547"]
    cmd = _bundle(["train", "multi_gpu_train", "preset_cpu_tiny"], "--datalists", json.dumps([str(phantom)]),
                  "--group_by", "patient", "--output_dir", str(out), "--max_epochs", "2")
    _run([*torchrun, *cmd[1:]])
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["epochs"] == 2 and "best_val_metric" in summary
    assert (out / "models" / "model_final.pt").is_file()


def test_random_search_top_k_ensemble(phantom, tmp_path):
    import torch

    from busgen_nyu.engine import load_ensemble
    from busgen_nyu.networks import build_nyu_net
    from busgen_nyu.search import draw_settings, random_search

    draws = draw_settings(5, seed=1)
    assert len({d["seed"] for d in draws}) == 5
    assert all(0.01 <= d["top_t"] <= 0.2 and 1e-4 <= d["beta"] <= 0.1 for d in draws)
    res = random_search(["preset_cpu_tiny"], n_runs=3, top_k=2, out_dir=tmp_path / "search", datalists=[str(phantom)],
                        group_by="patient", max_epochs=1)
    vals = [r["best_val_metric"] for r in res["runs"]]
    assert vals == sorted(vals, reverse=True) and len(res["model_paths"]) == 2
    assert json.loads((tmp_path / "search" / "search.json").read_text())["model_paths"] == res["model_paths"]
    # the ensemble of the top 2 is the mean of its members (attention, maps, probabilities)
    net_def = build_nyu_net("resnet_tiny", n_stages=2, no_max_pool=True, top_t=0.03, attention_hidden=32)
    ens = load_ensemble(net_def, res["model_paths"])
    x, mask = torch.rand(2, 3, 64, 64), torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
    with torch.no_grad():
        out = ens(x, mask)
        members = [m(x, mask) for m in ens.members]
    torch.testing.assert_close(out["breast"], (members[0]["breast"] + members[1]["breast"]) / 2)
    torch.testing.assert_close(out["attention"].sum(1), torch.ones(2))
    tops = [json.loads((Path(m).parent.parent / "training_summary.json").read_text())["network"]["top_t"]
            for m in res["model_paths"]]
    assert [m.pool.t for m in ens.members] == tops  # each member pools with the top_t it was trained with
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ensemble(net_def, [str(tmp_path / "missing.pt")])
