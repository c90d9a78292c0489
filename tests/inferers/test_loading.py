"""One network definition that travels with the weights: checkpoints and model files carry the network's
constructor arguments and the training settings; sampling rebuilds the generator from them alone."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from busgen_monai.cli import run_bundle
from busgen_monai.data.phantom import write_dataset
from busgen_monai.inferers import (
    export_generator,
    generator_settings,
    load_generator,
    plan_conditions,
    read_checkpoint,
    resolve_checkpoint,
)
from busgen_monai.inferers.generate import GenerationSettingsError
from busgen_monai.networks import ConditionCodec
from busgen_monai.presets import build_network


@pytest.fixture(scope="module")
def trained_with_overrides(tmp_path_factory):
    """A pretraining run of the tiny preset with the network and image size overridden on the command line."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("overrides")
    datalist = write_dataset(tmp / "phantom", n=16, seed=0, size=(32, 32))
    run_bundle("busgen_pretrain", "train,preset_tiny", datalist=str(datalist), output_dir=str(tmp / "run"),
               max_epochs=1, epoch_length=2, batch_size=2, num_workers=0, progress_bar=False, val_interval=5,
               sample_interval=5, image_size=24, **{"network_def#channels": [8, 16], "network_def#norm_num_groups": 4})
    return resolve_checkpoint(tmp / "run" / "models"), datalist, tmp


def test_checkpoint_records_what_was_trained(trained_with_overrides):
    ckpt, _, tmp = trained_with_overrides
    state = read_checkpoint(ckpt)
    assert state["network_kwargs"]["channels"] == [8, 16] and state["network_kwargs"]["image_channels"] == 1
    settings = generator_settings(ckpt)
    assert settings["image_size"] == 24 and settings["name"] == "tiny" and settings["image_channels"] == 1
    preset_json = json.loads((tmp / "run" / "models" / "preset.json").read_text())
    assert preset_json["image_size"] == 24 and preset_json["network_kwargs"]["channels"] == [8, 16]


def test_trained_with_overrides_samples_without_them(trained_with_overrides, tmp_path):
    """The sample bundle gets no preset and no network options: everything comes from the checkpoint; the grey
    model's outputs have one channel end to end (PNGs, datalist, grid)."""
    ckpt, datalist, _ = trained_with_overrides
    out = tmp_path / "gen"
    run_bundle("busgen_sample", "inference", checkpoint=str(ckpt), datalist=str(datalist), output_dir=str(out),
               num_images=3, chunk_size=3, num_inference_steps=2, progress=False)
    data = json.loads((out / "datalist.json").read_text())
    assert len(data["training"]) == 3
    for it in data["training"]:
        with Image.open(out / it["image"]) as im:
            assert im.mode == "L" and im.size == (24, 24)
        assert it["width"] == it["height"] == 24
    with Image.open(out / "sample_grid.png") as grid:
        g = np.asarray(grid.convert("RGB")).astype(int)
    # the grid's tiles are grey: no colour can appear in a one-channel model's output (labels/boxes are drawn in
    # colour, so compare channel spread over the tile area only: most pixels have R == G == B)
    assert (np.ptp(g, axis=-1) == 0).mean() > 0.5
    run = json.loads((out / "run.json").read_text())
    assert run["image_channels"] == 1 and run["image_size"] == [24, 24]


def test_export_keeps_kwargs_and_settings_fp16(trained_with_overrides, tmp_path):
    ckpt, _, _ = trained_with_overrides
    small = export_generator(ckpt, tmp_path / "model.pt", dtype="float16")
    state = torch.load(small, map_location="cpu", weights_only=True)
    assert {"network", "codec", "network_kwargs", "settings"} <= set(state)
    assert all(v.dtype == torch.float16 for v in state["network"].values() if v.is_floating_point())
    net, _ = load_generator(small)
    ref, _ = load_generator(ckpt)
    assert next(net.parameters()).dtype == torch.float32
    for (k, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(a, b, atol=2e-3, rtol=2e-3), k
    assert generator_settings(small)["image_size"] == 24


def test_old_checkpoint_falls_back_to_preset_with_warning(tmp_path):
    codec = ConditionCodec()
    torch.manual_seed(0)
    net = build_network("tiny", codec)
    old = tmp_path / "old.pt"
    torch.save({"network": net.state_dict(), "codec": codec.to_dict()}, old)
    with pytest.warns(UserWarning, match="no network_kwargs"):
        loaded, _ = load_generator(old, "tiny")
    assert loaded.image_channels == 1
    with pytest.warns(UserWarning, match="no saved settings"):
        assert generator_settings(old, "tiny")["image_size"] == 32
    with pytest.raises(ValueError, match="pass the preset"):
        load_generator(old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="does not fit"):
            load_generator(old, "toy")


class _Payload:
    def __reduce__(self):
        return (Path("/tmp/busgen-payload-ran").touch, ())


def test_pickled_payload_is_refused(tmp_path):
    marker = Path("/tmp/busgen-payload-ran")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "bad.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"network": {}, "codec": {}, "x": _Payload()}, fh)
    with pytest.raises(ValueError, match="weights-only"):
        read_checkpoint(bad)
    assert not marker.exists()


def test_plan_follows_the_device_mix_and_balances_pathology():
    plan = plan_conditions(400, ["benign", "malignant"], ["A", "B", "C"], device_weights=[90, 9, 1])
    path = [p["pathology"] for p in plan]
    assert path.count("benign") == path.count("malignant") == 200
    dev = [p["device"] for p in plan]
    assert abs(dev.count("A") / 400 - 0.9) < 0.01 and abs(dev.count("B") / 400 - 0.09) < 0.01
    assert 2 <= dev.count("C") <= 6
    # prefix-stable: a longer plan starts with the shorter one
    assert plan_conditions(50, ["benign", "malignant"], ["A", "B", "C"], device_weights=[90, 9, 1]) == plan[:50]
    with pytest.raises(ValueError, match="device_weights"):
        plan_conditions(4, ["benign"], ["A", "B"], device_weights=[0, 0])


def _chain_has(err: BaseException, exc_type: type, text: str) -> bool:
    """``monai.bundle`` wraps errors of config expressions; look through the cause chain."""
    while err is not None:
        if isinstance(err, exc_type) and text in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def test_sampling_resume_refuses_changed_settings(trained_with_overrides, tmp_path):
    ckpt, datalist, _ = trained_with_overrides
    out = tmp_path / "gen"
    common = dict(checkpoint=str(ckpt), datalist=str(datalist), output_dir=str(out), chunk_size=2,
                  num_inference_steps=2, progress=False)
    run_bundle("busgen_sample", "inference", num_images=4, seed=0, **common)
    first = (out / "images" / "gen_0000000.png").read_bytes()
    with pytest.raises(Exception) as err:
        run_bundle("busgen_sample", "inference", num_images=4, seed=1, **common)
    assert _chain_has(err.value, GenerationSettingsError, "(seed)")
    with pytest.raises(Exception) as err:
        run_bundle("busgen_sample", "inference", num_images=4, seed=0, **{**common, "num_inference_steps": 3})
    assert _chain_has(err.value, GenerationSettingsError, "provenance.steps")
    # a smaller count removes the items past it; the others are kept byte for byte
    run_bundle("busgen_sample", "inference", num_images=2, seed=0, **common)
    assert sorted(p.name for p in (out / "images").glob("*.png")) == ["gen_0000000.png", "gen_0000001.png"]
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 2
    assert (out / "images" / "gen_0000000.png").read_bytes() == first
    # --force starts over with the new settings
    run_bundle("busgen_sample", "inference", num_images=2, seed=1, force=True, **common)
    assert json.loads((out / "run.json").read_text())["seed"] == 1
    assert (out / "images" / "gen_0000000.png").read_bytes() != first
