"""The generator the project ships (bundles/busgen_sample/models/model.pt): it loads weights-only, its sha256 is
the one in docs/model_card.md, and one command makes images from it with the requested conditions recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image

from busgen_monai.cli import main
from busgen_monai.inferers import default_generator, file_sha256, generator_settings, load_generator, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_generator_matches_its_model_card():
    path = default_generator()
    assert path == ROOT / "bundles" / "busgen_sample" / "models" / "model.pt"
    assert path.stat().st_size < 20e6
    card = (ROOT / "docs" / "model_card.md").read_text()
    stated = re.search(r"sha256 of `model\.pt`: `([0-9a-f]{64})`", card)
    assert stated, "docs/model_card.md must state the model file's sha256"
    assert stated.group(1) == file_sha256(path)
    state = read_checkpoint(path)  # torch.load(weights_only=True)
    settings = generator_settings(state)
    assert settings["image_size"] == 64 and settings["image_channels"] == 1 and settings["name"] == "cpu"
    assert set(settings["device_mix"]) == {"GE-LOGIQ-5", "GE-LOGIQ-7", "TOSHIBA-Aplio-300", "U-Systems"}
    assert abs(sum(settings["device_mix"].values()) - 1) < 1e-3
    net, codec = load_generator(path)
    assert net.image_channels == 1 and next(net.parameters()).dtype == torch.float32
    assert codec.pathologies == ["benign", "malignant"]
    assert (path.parent / "box_prior.json").is_file()


def test_one_command_makes_images_with_the_requested_conditions(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "gen"
    rc = main(["sample", str(out), "--n", "4", "--steps", "8", "--pathology", "malignant", "--device", "GE-LOGIQ-7",
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    items = json.loads((out / "datalist.json").read_text())["training"]
    assert len(items) == 4
    sha = file_sha256(default_generator())
    for it in items:
        assert it["pathology"] == "malignant" and it["device"] == "GE-LOGIQ-7" and len(it["boxes"]) == 1
        assert it["provenance"]["model_sha256"] == sha and it["provenance"]["steps"] == 8
        with Image.open(out / it["image"]) as im:
            assert im.mode == "L" and im.size == (64, 64)
    assert (out / "sample_grid.png").is_file()
    # an unknown device is one clear error naming it
    rc = main(["sample", str(tmp_path / "bad"), "--n", "2", "--steps", "2", "--device", "Nope-9000", "--quiet"])
    assert rc != 0 and "Nope-9000" in capsys.readouterr().err


def test_sample_command_passes_other_bundle_keys_through(tmp_path, capsys):
    """`busgen sample` declares no copy of the bundle's keys: any other key passes as --key value (here the sampler
    and the chunk size) and is checked against the bundle; a misspelled one is refused naming the right key."""
    torch.set_num_threads(1)
    out = tmp_path / "ddim"
    rc = main(["sample", str(out), "--n", "2", "--steps", "3", "--sampler", "ddim", "--device", "GE-LOGIQ-7",
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    items = json.loads((out / "datalist.json").read_text())["training"]
    assert items[0]["provenance"]["sampler"] == "DDIMScheduler" and items[0]["provenance"]["steps"] == 3, run
    rc = main(["sample", str(tmp_path / "bad"), "--n", "2", "--samplr", "ddim", "--quiet"])
    assert rc != 0 and "did you mean --sampler" in capsys.readouterr().err
    rc = main(["sample", str(tmp_path / "bad2"), "--n", "2", "--num_images", "3", "--quiet"])
    assert rc != 0 and "--num_images is set by this command's own option" in capsys.readouterr().err
