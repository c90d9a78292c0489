"""busgen-deviceaug end to end on the phantom: a short CPU CycleGAN training PhantomMed-L7 -> PhantomMed-T9
through the device_cyclegan bundle (bank driver), then style, content, resume and batch-tool checks.

The phantom renders the same anatomy and speckle for a seed on every device, so the true T9 rendering of
each L7 image is known: content preservation is checked against it as well as against unrelated images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from busgen_monai.data.phantom import generate_case, write_dataset  # noqa: E402
from busgen_monai.data.schema import iter_items, load_datalist  # noqa: E402

from busgen_deviceaug.bank import TranslatorBank, train_bank  # noqa: E402
from busgen_deviceaug.batch import augment_datalist  # noqa: E402
from busgen_deviceaug.data import LoadRGBd, domain_items  # noqa: E402
from busgen_deviceaug.metrics import DeviceClassifier, batch_lesion_ssim, lesion_ssim  # noqa: E402

SIZE = 32
SOURCE, TARGET = "PhantomMed-L7", "PhantomMed-T9"
ITERS_PER_EPOCH = 150
TINY = {  # a few hundred CPU iterations of a small generator: ~15 s on one core
    "spatial_size": [SIZE, SIZE], "gen_channels": 8, "gen_res_blocks": 2, "disc_channels": 16, "disc_layers": 2,
    "num_epochs": 1, "num_epochs_decay": 1, "epoch_length": ITERS_PER_EPOCH, "batch_size": 1,
    "log_interval": 1000, "num_threads": 1,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two shared CPU cores: one intra-op thread is an order of magnitude faster than two under contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("phantom"), n=160, seed=0, size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def bank(phantom, tmp_path_factory) -> TranslatorBank:
    out = tmp_path_factory.mktemp("bank")
    return train_bank(phantom, out, targets=[TARGET], source_devices=[SOURCE], overrides=TINY)


@pytest.fixture(scope="module")
def images(phantom):
    """All phantom images as (N, 3, H, W) in [-1, 1] with their items."""
    items, _ = domain_items(phantom, ("training", "validation", "test"))
    load = LoadRGBd()
    x = torch.stack([load({"image": it["image"]})["image"] for it in items]) * 2 - 1
    return x, items


@pytest.fixture(scope="module")
def classifier(images):
    x, items = images
    devices = sorted({it["device"] for it in items})
    train = [i for i, it in enumerate(items) if it["split"] == "training"]
    clf = DeviceClassifier(devices, spatial_size=(SIZE, SIZE), channels=(8, 16, 32), seed=0)
    return clf.fit(x[train], [items[i]["device"] for i in train], epochs=15, batch_size=16)


@pytest.fixture(scope="module")
def translated(bank, images):
    x, items = images
    src = [i for i, it in enumerate(items) if it["device"] == SOURCE]
    return x[src], bank.translate(x[src], TARGET), [items[i] for i in src]


def test_bank_index_and_run_outputs(bank):
    e = bank.entry(TARGET)
    assert bank.devices == [TARGET]
    assert e["spatial_size"] == [SIZE, SIZE] and e["color"] is True  # T9 is a tinted (RGB) style
    assert e["source_devices"] == [SOURCE]
    assert e["network"]["_target_"] == "busgen_deviceaug.networks.CycleGANGenerator"
    assert e["network"]["channels"] == 8
    assert e["provenance"]["bundle"] == "device_cyclegan"
    assert e["provenance"]["iterations"] == 2 * ITERS_PER_EPOCH
    assert e["provenance"]["datalist"] == "datalist.json" and len(e["provenance"]["datalist_sha256"]) == 64
    assert e["sha256"] == bank.generator_hash(TARGET) and len(e["sha256"]) == 64
    run = bank.root / e["provenance"]["run_dir"]
    assert (run / "models" / "model.pt").is_file() and (run / "models" / "model_ba.pt").is_file()
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["samples_epoch=0001.png", "samples_epoch=0002.png"]
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == ["checkpoint_epoch=2.pt"]


def test_cycle_reconstruction_error_falls(bank):
    run = bank.root / bank.entry(TARGET)["provenance"]["run_dir"]
    hist = json.loads((run / "losses.json").read_text())
    cyc = np.asarray(hist["cycle_loss"])
    assert len(cyc) == 2 * ITERS_PER_EPOCH
    first, last = cyc[:50].mean(), cyc[-50:].mean()
    assert last < 0.7 * first, (first, last)


def test_classifier_assigns_translations_to_target(classifier, images, translated):
    x, items = images
    held_out = [i for i, it in enumerate(items) if it["split"] != "training"]
    assert classifier.accuracy(x[held_out], [items[i]["device"] for i in held_out]) >= 0.9
    originals, fakes, _ = translated
    before = classifier.agreement(originals, TARGET, SOURCE)
    after = classifier.agreement(fakes, TARGET, SOURCE)
    assert before["source_rate"] >= 0.9  # untranslated L7 images look like L7
    assert after["target_rate"] >= 0.7, after
    assert after["target_rate"] >= after["source_rate"] + 0.5, after


def test_translation_keeps_lesion_content(translated):
    originals, fakes, items = translated
    boxes = [it["boxes"] for it in items]
    own = batch_lesion_ssim(originals, fakes, boxes)
    # the same lesion region of an unrelated translated image (pair i with i+1)
    other = batch_lesion_ssim(originals, torch.roll(fakes, 1, 0), boxes)
    assert own.mean() > other.mean() + 0.1, (own.mean(), other.mean())
    # against the phantom's true T9 rendering of the same seed
    truth = []
    for it in items:
        case = generate_case(it["provenance"]["seed"], it["pathology"], TARGET, (SIZE, SIZE))
        truth.append(torch.from_numpy(case.image.transpose(2, 0, 1).copy()).float() / 127.5 - 1)
    truth = torch.stack(truth)
    to_truth = batch_lesion_ssim(truth, fakes, boxes)
    to_other_truth = batch_lesion_ssim(torch.roll(truth, 1, 0), fakes, boxes)
    assert to_truth.mean() > to_other_truth.mean() + 0.1, (to_truth.mean(), to_other_truth.mean())


def test_lesion_ssim_basics():
    img = torch.rand(3, 32, 32) * 2 - 1
    assert lesion_ssim(img, img, [[0.2, 0.2, 0.5, 0.6]]) == pytest.approx(1.0, abs=1e-5)
    noisy = (img + 0.5 * torch.randn_like(img)).clamp(-1, 1)
    assert lesion_ssim(img, noisy, [[0.2, 0.2, 0.5, 0.6]]) < 0.9


def test_bank_driver_is_resumable(bank, phantom):
    before = bank.index_path.read_text()
    again = train_bank(phantom, bank.root, targets=[TARGET], source_devices=[SOURCE], overrides=TINY)
    assert again.devices == [TARGET]
    assert bank.index_path.read_text() == before  # skipped, not retrained


def test_training_resumes_from_checkpoint(phantom, tmp_path):
    """An interrupted run (1 of 2 epochs) continues from its epoch checkpoint instead of starting over."""
    from monai.bundle import ConfigWorkflow

    from busgen_deviceaug.bank import bundle_path

    b = bundle_path()
    common = dict(config_file=str(b / "configs" / "train.json"), meta_file=str(b / "configs" / "metadata.json"),
                  logging_file=False, workflow_type="train", bundle_root=str(b), datalist=str(phantom),
                  target_device=TARGET, source_devices=[SOURCE], output_dir=str(tmp_path),
                  **{k: v for k, v in TINY.items() if k != "num_epochs_decay"},)
    common.update(epoch_length=5, sample_interval=10)
    wf = ConfigWorkflow(**common, num_epochs_decay=0)
    wf.initialize()
    wf.run()
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 5
    wf = ConfigWorkflow(**common, num_epochs_decay=1)
    wf.initialize()
    assert wf.parser.get_parsed_content("resume_ckpt").endswith("checkpoint_epoch=1.pt")
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 10
    hist = json.loads((tmp_path / "losses.json").read_text())
    assert hist["iteration"] == list(range(1, 11))


def test_batch_tool_writes_augmented_datalist(bank, phantom, tmp_path):
    out = tmp_path / "aug"
    report = augment_datalist(phantom, bank, out, splits=["validation"], progress=False)
    src = load_datalist(phantom, check_files=False)
    val = src["validation"]
    n_expected = sum(1 for it in val if it["device"] != TARGET)
    assert report["written"] == n_expected and report["rejected"] == 0
    data = load_datalist(out / "datalist.json")  # validates, files included
    items = [it for _, _, it in iter_items(data)]
    assert len(items) == n_expected
    for it in items:
        assert it["device"] == TARGET
        tf = it["provenance"]["translated_from"]
        orig = val[tf["index"]]
        assert tf["device"] == orig["device"] == it["device_translated_from"]
        assert it["boxes"] == orig["boxes"] and it["pathology"] == orig["pathology"]
        assert it["patient_id"] == orig["patient_id"] and it["split"] == "validation"
        assert (out / it["mask"]).resolve() == (Path(src["base_dir"]) / orig["mask"]).resolve()
        assert it["provenance"]["source"] == "device_cyclegan"
        assert it["provenance"]["generator_sha256"] == bank.generator_hash(TARGET)
    from PIL import Image

    with Image.open(out / items[0]["image"]) as im:
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    again = augment_datalist(phantom, bank, out, splits=["validation"], progress=False)
    assert again["written"] == 0 and again["skipped_existing"] == n_expected


def test_batch_tool_cli_records_rejects(bank, phantom, tmp_path, capsys):
    """`busgen device-augment` through the busgen CLI; a broken image is recorded, the rest still written."""
    from busgen_monai.cli import main

    data = json.loads(Path(phantom).read_text())
    data["test"][0]["image"] = "images/missing.png"  # not validated on load by the tool (check_files=False)
    broken = tmp_path / "broken.json"
    for split in ("training", "validation", "test"):
        for it in data[split]:
            for key in ("image", "mask"):
                it[key] = str(Path(phantom).parent / it[key])
    broken.write_text(json.dumps(data))
    rc = main(["device-augment", str(broken), str(bank.root), str(tmp_path / "out"), "--splits", "test",
               "--include-originals", "--no-progress"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    rejects = json.loads((tmp_path / "out" / "rejects.json").read_text())
    assert report["rejected"] == len(rejects) == 1 and "missing.png" in rejects[0]["image"]
