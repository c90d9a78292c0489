"""The bus_detector bundle end to end on the phantom: `python -m monai.bundle run` exactly as its docs say
(train, evaluate, inference), and (slow) a tiny detector that overfits a handful of phantom images and then
finds nothing on lesion-free images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from busgen_detect.workflow import bundle_root, evaluate, lesion_free_phantom, train
from busgen_monai.data.phantom import write_dataset


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect_phantom")
    dl = write_dataset(root / "data", n=36, seed=0, size=(64, 64))
    free = lesion_free_phantom(root / "free", n=4, size=64)
    return {"root": root, "datalist": str(dl), "lesion_free": free}


def _bundle_run(configs, *args, cwd):
    files = "[" + ",".join(f"'configs/{c}.json'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--meta_file", "configs/metadata.json",
           "--logging_file", "configs/logging.conf", "--bundle_root", ".", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_bundle_train_evaluate_infer_with_monai_bundle_run(phantom, tmp_path):
    out = tmp_path / "run"
    common = ["--datalists", f"['{phantom['datalist']}']", "--output_dir", str(out)]
    _bundle_run(["train", "preset_cpu_tiny"], *common, "--max_epochs", "2", cwd=bundle_root())
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "model_final.pt").is_file()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["iterations"] > 0 and 0.0 <= summary["best_val_metric"] <= 1.0

    _bundle_run(["train", "evaluate", "preset_cpu_tiny"], *common, "--lesion_free_datalists",
                f"['{phantom['lesion_free']}']", "--n_bootstrap", "100", "--grid_n", "8", cwd=bundle_root())
    report = json.loads((out / "eval" / "report.json").read_text())
    det = report["results"]["detection"]
    n_test = len(json.loads(Path(phantom["datalist"]).read_text())["test"])
    assert det["counts"]["images"] == n_test + 4 and det["counts"]["lesion_free_images"] == 4
    ap = det["ap50"]
    assert 0.0 <= ap["lower"] <= ap["estimate"] <= ap["upper"] <= 1.0
    assert det["lesion_free"]["images"] == 4
    for name in ("report.html", "report.md", "pr.png", "froc.png", "detections.png", "predictions.csv"):
        assert (out / "eval" / name).stat().st_size > 0, name
    preds = json.loads((out / "eval" / "predictions.json").read_text())["images"]
    assert len(preds) == n_test + 4
    boxes = np.array([b for p in preds for b in p["boxes"]]).reshape(-1, 4)
    assert len(boxes) and (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
    assert "PH-P" in preds[0]["patient_id"]  # pseudonymous ids only

    images = str(Path(phantom["datalist"]).parent / "images" / "*.png")
    _bundle_run(["train", "inference", "preset_cpu_tiny"], *common, "--image_glob", images, cwd=bundle_root())
    inf = json.loads((out / "inference" / "predictions.json").read_text())["images"]
    assert len(inf) == 36 and all(p["truth"] == [] for p in inf)


def test_missing_model_gives_clear_error(phantom, tmp_path):
    with pytest.raises(Exception) as info:
        evaluate(["preset_cpu_tiny"], datalists=[phantom["datalist"]], output_dir=str(tmp_path / "none"),
                 n_bootstrap=10)
    err = info.value
    while err.__cause__ is not None:  # MONAI wraps config-expression errors in RuntimeError
        err = err.__cause__
    assert isinstance(err, FileNotFoundError)
    assert "model.pt does not exist (config key 'model_path')" in str(err)


@pytest.mark.slow
def test_tiny_detector_overfits_phantom_then_is_silent_on_lesion_free_images(tmp_path):
    dl = write_dataset(tmp_path / "few", n=8, seed=3, size=(64, 64), split_fractions=(1, 0, 0))
    seen_free = lesion_free_phantom(tmp_path / "seen_free", n=2, size=64, seed=7, split_fractions=(1, 0, 0))
    free = lesion_free_phantom(tmp_path / "free", n=4, size=64, seed=5)
    out = tmp_path / "overfit"
    epochs = 160
    # a handful of phantom images: 8 with a lesion and 2 without (background is part of what a detector learns)
    train(["preset_cpu_tiny"], datalists=[dl, seen_free], train_split="all", val_split="all", output_dir=str(out),
          max_epochs=epochs, val_interval=epochs, learning_rate=0.003, lesion_free=True)
    rep = evaluate(["preset_cpu_tiny"], datalists=[dl], test_split="all", lesion_free_datalists=[free],
                   output_dir=str(out), model_path=str(out / "models" / "model_final.pt"), n_bootstrap=50, grid_n=0)
    det = rep["results"]["detection"]
    assert det["ap50"]["estimate"] >= 0.9
    # four other lesion-free images, never seen in training: no box at or above the 0.5 operating threshold
    assert det["lesion_free"] == {"images": 4, "score_threshold": 0.5, "images_with_fp": 0, "fp_per_image": 0.0}


def test_lesion_free_phantom_has_no_boxes_and_own_patient_ids(tmp_path):
    from busgen_detect.data import count_boxes, load_items

    path = lesion_free_phantom(tmp_path / "normal", n=10, size=32, split_fractions=(0.7, 0.15, 0.15))
    items = load_items(path, "all")
    counts = count_boxes(items)
    assert counts["images"] == 10 and counts["boxes"] == 0 and counts["lesion_free_images"] == 10
    assert all(it["patient_id"].startswith("PHN-") for it in items)
    assert {it["pathology"] for it in items} == {"normal"}


@pytest.mark.slow
def test_multi_gpu_overlay_two_cpu_ranks(phantom, tmp_path):
    """The DDP overlay on two CPU ranks (torchrun, gloo): both ranks train, rank 0 writes the model and summary."""
    from busgen_detect.workflow import bundle_root

    out = tmp_path / "ddp"
    files = "[" + ",".join(f"'configs/{c}.json'" for c in ("train", "multi_gpu_train", "preset_cpu_tiny")) + "]"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           "-m", "monai.bundle", "run", "--config_file", files, "--meta_file", "configs/metadata.json",
           "--logging_file", "configs/logging.conf", "--bundle_root", ".",
           "--datalists", json.dumps([phantom["datalist"], phantom["lesion_free"]]), "--output_dir", str(out),
           "--max_epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=bundle_root(), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "models" / "model_final.pt").is_file()
    assert json.loads((out / "training_summary.json").read_text())["epochs"] == 2
