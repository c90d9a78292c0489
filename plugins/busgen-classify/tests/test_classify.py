"""busgen-classify plugin: registration, bundle configs, data, transforms, and a short phantom training
followed by evaluation, Grad-CAM, inference, fine-tuning and TorchScript export (all CPU, 64 px)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import busgen_classify
import torch

from busgen_monai.plugins import discover_plugins  # noqa: E402

PRESET = "preset_cpu_tiny"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from busgen_monai.data.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantom") / "ds", n=160, seed=0, size=(64, 64))


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory) -> dict:
    """Train the CPU preset on the phantom once; the tests below reuse the checkpoint."""
    from busgen_classify.workflow import train

    out = tmp_path_factory.mktemp("clf") / "run"
    res = train([PRESET], datalists=[str(phantom)], output_dir=str(out), max_epochs=6)
    return {"out": out, "summary": res["summary"], "network": res["network"], "datalist": phantom}


@pytest.fixture(scope="module")
def evaluated(trained) -> dict:
    from busgen_classify.workflow import evaluate

    return evaluate([PRESET], datalists=[str(trained["datalist"])], output_dir=str(trained["out"]), gradcam_n=8)


# ------------------------------------------------------------------------------------------ plugin
def test_plugin_registered_and_bundle_listed():
    reg = discover_plugins()
    assert "classify" in reg, f"plugin not registered; errors: {reg.errors}"
    plugin = reg["classify"]
    assert plugin.version == busgen_classify.__version__
    bundle = reg.bundles()["bus_classifier"]
    for name in ("train", "evaluate", "inference", "multi_gpu_train", "metadata"):
        assert (bundle / "configs" / f"{name}.json").is_file(), name
    assert (bundle / "configs" / "logging.conf").is_file()
    assert (bundle / "docs" / "README.md").is_file() and (bundle / "LICENSE").is_file()
    assert reg.commands()["classify-scaling"] == ("classify", "busgen_classify.scaling.main")
    for role in plugin.components:  # every component's dotted path imports
        assert reg.component("classify", role) is not None
    import contextlib
    import io

    from busgen_monai.cli import main

    buf = io.StringIO()  # not capsys: MONAI's module loggers keep the stream they were created with
    with contextlib.redirect_stdout(buf):
        assert main(["bundles"]) == 0
    assert "bus_classifier" in buf.getvalue()


def test_plugin_module_is_light():
    code = "import sys, busgen_classify.plugin; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_metadata_and_network_shapes():
    from monai.bundle import verify_net_in_out

    from busgen_classify.workflow import bundle_root

    root = bundle_root()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["outputs"]["pred"]["num_channels"] == 2
    assert meta["version"] in meta["changelog"] and "intended_use" in meta
    # MONAI's own check: the network maps the declared input shape to the declared output channels
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(root / "configs" / "train.json"), n=1, any=8, device="cpu")


@pytest.mark.parametrize("configs", [["train"], ["train", "evaluate"], ["inference"],
                                     ["train", "multi_gpu_train"], ["train", "evaluate", "preset_vit_paper"],
                                     ["train", "preset_finetune"], ["train", "preset_pretrain_generated"]])
def test_configs_parse(configs):
    from monai.bundle import ConfigParser

    from busgen_classify.workflow import config_files

    parser = ConfigParser()
    parser.read_config(config_files(configs))
    parser.parse()
    for key in ("network_def", "image_size", "classes"):
        assert key in parser
    if "train" in configs:
        assert "train#trainer" in parser and "validate#evaluator" in parser


# ------------------------------------------------------------------------------------------ data
def test_load_items_label_keys(phantom, tmp_path):
    from busgen_classify.data import class_balanced_weights, label_counts, load_items, stratified_subset

    items = load_items(phantom, "training")
    assert {it["label_name"] for it in items} == {"benign", "malignant"}
    assert all(len(it["box"]) == 4 and it["patient_id"].startswith("PH-") for it in items)
    # device as the label
    dev = load_items(phantom, "all", label_key="device",
                     classes=json.loads(Path(phantom).read_text())["devices"])
    assert len(label_counts(dev)) == 4
    # BI-RADS mapped to benign/malignant
    data = json.loads(Path(phantom).read_text())
    values = sorted({it["birads"] for s in ("training", "validation", "test") for it in data[s]})
    mapping = {v: ("benign" if v in ("2", "3") else "malignant") for v in values}
    bir = load_items(phantom, "training", label_key="birads", label_map=mapping)
    assert len(bir) == len(items)
    # a custom key; unknown values are reported (error mode names them)
    for s in ("training", "validation", "test"):
        for i, it in enumerate(data[s]):
            it["label"] = "yes" if i % 3 else "maybe"
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(data))
    (tmp_path / "images").symlink_to(Path(phantom).parent / "images")
    (tmp_path / "masks").symlink_to(Path(phantom).parent / "masks")
    with pytest.raises(ValueError, match="'label' value that is not one of the classes"):
        load_items(custom, "training", label_key="label", classes=["no", "yes"], on_unknown="error")
    kept = load_items(custom, "training", label_key="label", classes=["maybe", "yes"])
    assert len(kept) == len(items)
    # two datalists concatenate
    both = load_items([phantom, custom], "training")
    assert len(both) == 2 * len(items)
    # stratified subset and balanced weights
    sub = stratified_subset(items, 10, seed=1)
    assert len(sub) == 10 and len(label_counts(sub)) == 2
    assert sub == stratified_subset(items, 10, seed=1)
    w = np.asarray(class_balanced_weights(items))
    lab = np.asarray([it["label"] for it in items])
    assert np.isclose(w[lab == 0].sum(), w[lab == 1].sum())


def test_lesion_crop():
    from busgen_classify.transforms import LesionCropd, lesion_crop_window

    y0, y1, x0, x1 = lesion_crop_window([0.4, 0.4, 0.6, 0.5], 100, 200, margin=0.5, square=True)
    assert (y1 - y0) == (x1 - x0) == 80  # box 40 x 10 px -> 80 wide with margin, square
    assert (x0 + x1) / 2 == pytest.approx(100, abs=1) and (y0 + y1) / 2 == pytest.approx(45, abs=1)
    # near the border the window shifts inside the image
    y0, y1, x0, x1 = lesion_crop_window([0.0, 0.0, 0.1, 0.1], 100, 100, margin=1.0)
    assert (y0, x0) == (0, 0) and y1 == x1 == 30
    img = torch.arange(100 * 200, dtype=torch.float32).reshape(1, 100, 200).repeat(3, 1, 1)
    out = LesionCropd(margin=0.0, square=False)({"image": img, "box": [0.25, 0.5, 0.75, 1.0]})
    assert out["image"].shape == (3, 50, 100)
    assert torch.equal(out["image"], img[:, 50:100, 50:150])
    whole = LesionCropd()({"image": img, "box": [0.0, 0.0, 1.0, 1.0]})
    assert whole["image"].shape == img.shape
    assert LesionCropd(enabled=False)({"image": img, "box": [0.2, 0.2, 0.3, 0.3]})["image"].shape == img.shape


def test_gradcam_shape():
    from busgen_classify.gradcam import gradcam_maps
    from busgen_classify.networks import build_classifier

    torch.manual_seed(0)
    net = build_classifier("resnet_tiny", num_classes=2)
    x = torch.rand(3, 3, 64, 48)
    maps = gradcam_maps(net, x, class_index=1)
    assert maps.shape == (3, 1, 64, 48)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="Grad-CAM needs a convolutional backbone"):
        gradcam_maps(build_classifier("vit_s16", image_size=64), torch.rand(1, 3, 64, 64))


# ------------------------------------------------------------------------------------------ training
def test_phantom_training_reaches_auc(trained, evaluated):
    summary = trained["summary"]
    assert summary["epochs"] == 6 and summary["best_val_metric"] > 0.8
    auc = evaluated["results"]["auroc"]
    print(f"phantom test AUROC {auc['estimate']:.3f} (95% CI {auc['lower']:.3f}-{auc['upper']:.3f})")
    assert auc["estimate"] > 0.8
    models = trained["out"] / "models"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()
    assert list(models.glob("checkpoint_epoch=*.pt"))
    assert list((trained["out"] / "logs").glob("events.out.tfevents.*"))


def test_evaluation_report_files_and_keys(evaluated, trained):
    files = evaluated["files"]
    for key in ("json", "markdown", "html", "predictions", "ROC curve", "Precision-recall curve",
                "t-SNE of penultimate features", "Grad-CAM (malignant)"):
        assert Path(files[key]).is_file(), key
    report = json.loads(Path(files["json"]).read_text())
    res = report["results"]
    for key in ("auroc", "auprc", "auroc_delong_ci", "at_threshold", "at_matched_specificity",
                "at_matched_sensitivity", "youden", "tsne", "gradcam", "bootstrap"):
        assert key in res, key
    assert res["bootstrap"] == {**res["bootstrap"], "replicates": 1000, "resampled": "patients"}
    assert res["auroc"]["resampled"] == "groups" and res["auroc"]["n_boot"] == 1000
    for op in ("at_threshold", "at_matched_specificity", "at_matched_sensitivity"):
        for m in ("sensitivity", "specificity", "ppv", "npv"):
            assert {"estimate", "lower", "upper"} <= set(res[op][m]), (op, m)
    assert res["at_matched_specificity"]["specificity"]["estimate"] >= 0.9
    assert {"nmi", "ari", "silhouette"} <= set(res["tsne"])
    md = Path(files["markdown"]).read_text()
    assert "roc.png" in md and "gradcam.png" in md
    rows = list(csv.DictReader(open(files["predictions"])))
    test_items = json.loads(Path(trained["datalist"]).read_text())["test"]
    assert len(rows) == len(test_items)


def test_a_second_test_set_gets_its_own_report_folder(evaluated, trained):
    """Evaluating another test set (here the validation split) writes eval_<datalist>_<split>/, never over eval/."""
    from busgen_classify.data import eval_folder_name
    from busgen_classify.workflow import evaluate

    first = Path(evaluated["files"]["json"])
    before = first.read_bytes()
    other = evaluate([PRESET], datalists=[str(trained["datalist"])], output_dir=str(trained["out"]),
                     test_split="validation", gradcam_n=0, tsne=False)
    second = Path(other["files"]["json"])
    stem = Path(str(trained["datalist"])).stem
    assert second.parent.name == f"eval_{stem}_validation" and first.parent.name == "eval"
    assert first.read_bytes() == before  # the first report is untouched
    assert eval_folder_name(["/d/a.json"], ["/d/a.json"]) == "eval"
    assert eval_folder_name(["/x/busi test.json", "/y/b.json"], ["/d/a.json"]) == "eval_busi-test+b"


def test_evaluate_needs_only_the_training_args_file(evaluated, trained, tmp_path):
    """Training writes models/training_args.json (a MONAI args_file); evaluating from it alone, without the preset
    or any training argument, rebuilds the same network and data and reproduces the report's AUROC."""
    from busgen_monai.cli import main

    args_file = Path(trained["out"]) / "models" / "training_args.json"
    saved = json.loads(args_file.read_text())
    assert saved["backbone"] == "resnet_tiny" and saved["image_size"] == [64, 64]  # the preset's, not train.json's
    eval_dir = tmp_path / "eval_from_args"
    rc = main(["run", "bus_classifier", "train,evaluate", "--args_file", str(args_file), "--eval_dir", str(eval_dir),
               "--n_bootstrap", "50", "--gradcam_n", "0", "--tsne", "false"])
    assert rc == 0
    report = json.loads((eval_dir / "report.json").read_text())
    assert report["results"]["auroc"]["estimate"] == pytest.approx(evaluated["results"]["auroc"]["estimate"], abs=1e-6)


def test_delong_comparison_with_second_model(evaluated, tmp_path):
    from busgen_classify.evaluate import write_clinical_report
    from busgen_classify.handlers import read_predictions_csv

    table = read_predictions_csv(evaluated["files"]["predictions"])
    ids = list(table)
    probs1 = np.asarray([table[i]["score"] for i in ids])
    preds = {"probs": np.stack([1 - probs1, probs1], 1), "labels": np.asarray([table[i]["label"] for i in ids]),
             "patient_ids": [table[i]["patient_id"] for i in ids], "image_ids": ids, "features": None}
    rng = np.random.default_rng(0)
    other = {i: float(np.clip(table[i]["score"] + rng.normal(0, 0.3), 0, 1)) for i in ids}
    rep = write_clinical_report(preds, tmp_path, n_boot=200, compare_predictions=other, compare_name="noisy model",
                                tsne=False)
    cmp = rep["results"]["comparison"]
    assert 0.0 <= cmp["delong_p_value"] <= 1.0 and cmp["other_model"] == "noisy model"
    assert {"estimate", "lower", "upper"} <= set(cmp["auroc_difference (patient bootstrap)"])
    with pytest.raises(ValueError, match="lack"):
        write_clinical_report(preds, tmp_path / "x", n_boot=50, compare_predictions={ids[0]: 0.5}, tsne=False)


def test_torchscript_export_matches_eager(trained, tmp_path):
    from busgen_classify.export import check_export, eager_network, export_torchscript

    ckpt = trained["out"] / "models" / "model.pt"
    ts = export_torchscript(ckpt, tmp_path / "model.ts", ["train", PRESET])
    scripted = torch.jit.load(str(ts))
    eager = eager_network(ckpt, ["train", PRESET])
    x = torch.rand(5, 1, 64, 64)  # grey, the bundle's image_channels
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)
    assert check_export(ts, ckpt, ["train", PRESET]) <= 1e-5
    extra = {"metadata.json": ""}
    torch.jit.load(str(ts), _extra_files=extra)  # ckpt_export embeds the bundle metadata
    assert json.loads(extra["metadata.json"])["network_data_format"]["outputs"]["pred"]["num_channels"] == 2


@pytest.mark.skipif(importlib.util.find_spec("fire") is None,
                    reason="`python -m monai.bundle` needs the 'fire' package (declared by busgen-classify); not installed here")
def test_ckpt_export_command_line(trained, tmp_path):
    from busgen_classify.export import check_export
    from busgen_classify.workflow import bundle_root

    root = bundle_root()
    ts = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(trained["out"] / "models" / "model.pt"),
           "--meta_file", str(root / "configs" / "metadata.json"),
           "--config_file", json.dumps([str(root / "configs" / "train.json"), str(root / "configs" / f"{PRESET}.json")])]
    subprocess.run(cmd, check=True, capture_output=True, cwd=root)
    assert check_export(ts, trained["out"] / "models" / "model.pt", ["train", PRESET]) <= 1e-5


def test_inference_config_writes_predictions(trained, tmp_path):
    from busgen_classify.workflow import infer

    out_csv = tmp_path / "pred.csv"
    infer([PRESET], datalists=[str(trained["datalist"])], split="test", output_dir=str(trained["out"]),
          predictions_csv=str(out_csv))
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == len(json.loads(Path(trained["datalist"]).read_text())["test"])
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def test_finetune_loads_pretrained_backbone_with_new_head(trained, tmp_path):
    """Pretrained checkpoint with a 2-class head -> 4-class (device) model: the backbone loads, the head is skipped."""
    from busgen_classify.workflow import train

    pre = torch.load(trained["out"] / "models" / "model.pt", weights_only=True)
    devices = json.loads(Path(trained["datalist"]).read_text())["devices"]
    res = train([PRESET, "preset_finetune"], datalists=[str(trained["datalist"])], output_dir=str(tmp_path / "ft"),
                pretrained_checkpoint=str(trained["out"] / "models" / "model.pt"), label_key="device",
                classes=devices, max_epochs=1, learning_rate=0.0, weight_decay=0.0, early_stop_patience=0)
    net = res["network"]
    assert net.fc.weight.shape == (4, pre["fc.weight"].shape[1])
    torch.testing.assert_close(net.conv1.weight.detach().cpu(), pre["conv1.weight"])
    torch.testing.assert_close(net.layer4[0].conv2.weight.detach().cpu(), pre["layer4.0.conv2.weight"])
