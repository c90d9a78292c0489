"""Bundle config checks: overrides against declared keys and ranges; static refusal of unsafe configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from busgen_monai.bundle_check import BundleConfigError, check_config_static, validate_overrides

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundles" / "busgen_sample" / "configs" / "inference.json"
PRETRAIN = ROOT / "bundles" / "busgen_pretrain" / "configs" / "train.json"


@pytest.mark.parametrize("key,value,suggestion", [
    ("num_imagse", 4, "num_images"),
    ("guidance_W", 0, "guidance_w"),
    ("num_inference_step", 3, "num_inference_steps"),
])
def test_misspelled_sampling_keys_are_refused_with_a_suggestion(key, value, suggestion):
    with pytest.raises(BundleConfigError, match=f"unknown config key '{key}'.*did you mean --{suggestion}\\?"):
        validate_overrides([SAMPLE], {key: value}, bundle="busgen_sample")


def test_misspelled_training_key_is_refused():
    with pytest.raises(BundleConfigError, match="did you mean --max_epochs"):
        validate_overrides([PRETRAIN], {"max_epoch": 1}, bundle="busgen_pretrain")


def test_network_arguments_are_overridable_through_the_one_network_definition():
    """``network_def`` is ``presets.build_network``: every network argument is a valid ``network_def#...`` override
    (taken from the network's signature), a misspelled one is refused, and the built network has the value."""
    from busgen_monai.presets import build_network

    validate_overrides([PRETRAIN], {"network_def#dropout": 0.1, "network_def#channels": [8, 16]}, bundle="busgen_pretrain")
    with pytest.raises(BundleConfigError, match="unknown config key 'network_def#dropuot'"):
        validate_overrides([PRETRAIN], {"network_def#dropuot": 0.1}, bundle="busgen_pretrain")
    net = build_network("tiny", dropout=0.1, channels=[8, 16], norm_num_groups=4)
    assert net.init_args["dropout"] == 0.1 and list(net.init_args["channels"]) == [8, 16]
    assert json.loads(PRETRAIN.read_text())["network_def"]["_target_"] == "busgen_monai.presets.build_network"


@pytest.mark.parametrize("overrides,match", [
    ({"guidance_w": -3}, "guidance_w=-3 is out of range"),
    ({"chunk_size": 0}, "chunk_size=0 is out of range"),
    ({"num_inference_steps": 0}, "num_inference_steps=0 is out of range"),
    ({"num_images": "many"}, "wrong type"),
])
def test_out_of_range_or_mistyped_values_are_refused(overrides, match):
    with pytest.raises(BundleConfigError, match=match):
        validate_overrides([SAMPLE], overrides, bundle="busgen_sample")


def test_image_size_must_fit_the_network():
    with pytest.raises(BundleConfigError, match="image_size=33 does not fit the network"):
        validate_overrides([PRETRAIN], {"image_size": 33, "preset_name": "tiny"}, bundle="busgen_pretrain")
    validate_overrides([PRETRAIN], {"image_size": 48, "preset_name": "tiny"}, bundle="busgen_pretrain")


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """A 'tiny' generator checkpoint (trained size 32) with saved settings, and the same file without them."""
    import torch

    from busgen_monai.networks import ConditionCodec
    from busgen_monai.presets import build_network, get_preset, trained_settings

    tmp = tmp_path_factory.mktemp("gen")
    codec = ConditionCodec()
    net = build_network("tiny", codec)
    state = {"network": net.state_dict(), "codec": codec.to_dict(), "network_kwargs": net.init_args,
             "settings": trained_settings(get_preset("tiny"), name="tiny")}
    torch.save(state, tmp / "tiny.pt")
    torch.save({k: v for k, v in state.items() if k != "settings"}, tmp / "old.pt")
    return tmp / "tiny.pt", tmp / "old.pt"


def test_image_size_other_than_the_trained_one_is_refused_before_sampling(tiny_generator, tmp_path):
    from busgen_monai.cli import run_bundle

    ckpt, _ = tiny_generator
    out = tmp_path / "out"
    with pytest.raises(BundleConfigError) as info:
        run_bundle("busgen_sample", "inference", checkpoint=str(ckpt), image_size=48, num_images=1,
                   output_dir=str(out))
    msg = str(info.value)
    assert "\n" not in msg and "image_size=48" in msg and "checkpoint" in msg and "trained at image_size=32" in msg
    assert not out.exists()  # refused before anything ran
    validate_overrides([SAMPLE], {"checkpoint": str(ckpt), "image_size": 32})  # the trained size is fine
    validate_overrides([SAMPLE], {"checkpoint": str(ckpt)})  # no override: nothing to compare


def test_image_size_check_covers_the_adapt_and_protector_generators(tiny_generator):
    ckpt, _ = tiny_generator
    adapt = ROOT / "bundles" / "busgen_adapt" / "configs" / "train.json"
    with pytest.raises(BundleConfigError, match="base_checkpoint .* trained at image_size=32"):
        validate_overrides([adapt], {"base_checkpoint": str(ckpt), "image_size": 64}, bundle="busgen_adapt")
    protector = ROOT / "plugins" / "busgen-cpsample" / "busgen_cpsample" / "bundles" / "cpsample" / "configs" / \
        "train_protector.json"
    with pytest.raises(BundleConfigError, match="generator_checkpoint .* trained at image_size=32"):
        validate_overrides([protector], {"generator_checkpoint": str(ckpt), "image_size": 64}, bundle="cpsample")


def test_image_size_check_warns_for_old_files_and_skips_unreadable_ones(tiny_generator, tmp_path):
    _, old = tiny_generator
    with pytest.warns(UserWarning, match="no saved settings"):
        validate_overrides([SAMPLE], {"checkpoint": str(old), "image_size": 48})
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    validate_overrides([SAMPLE], {"checkpoint": str(junk), "image_size": 48})  # the run reports the bad file
    validate_overrides([SAMPLE], {"checkpoint": str(tmp_path / "missing.pt"), "image_size": 48})


def test_cli_refuses_a_wrong_image_size_in_one_line(tiny_generator, tmp_path, capsys):
    from busgen_monai.cli import main

    ckpt, _ = tiny_generator
    code = main(["run", "busgen_sample", "inference", "--checkpoint", str(ckpt), "--image_size", "48",
                 "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "trained at image_size=32" in err[0]


def test_declared_keys_and_nested_ids_pass():
    validate_overrides([SAMPLE], {"num_images": 4, "guidance_w": 0.0, "chunk_size": 2, "num_inference_steps": 3,
                                  "seed": 1})


def test_cli_refuses_a_misspelled_key_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "busgen_monai.cli", "run", "busgen_sample", "inference",
                           "--num_imagse", "4", "--output_dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "did you mean --num_images" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def _bundle(tmp_path: Path, config: dict) -> Path:
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("config,match", [
    ({"x": "$__import__('os').system('touch PWNED')"}, "uses the name '__import__'"),
    ({"x": "$import subprocess"}, "imports 'subprocess'"),
    ({"x": "$os.system('touch PWNED')"}, "os is limited to os.path"),
    ({"x": "$torch.load('w.pt', weights_only=False)"}, "weights_only"),
    ({"x": "$(1).__class__.__bases__[0].__subclasses__()"}, "private attribute"),
    ({"x": "$eval('1')"}, "uses the name 'eval'"),
    ({"x": {"_target_": "subprocess.run", "args": ["touch", "PWNED"]}}, "outside"),
    ({"x": "%/etc/passwd#a"}, "outside the bundle"),
    ({"x": "%../other/configs/inference.json#network"}, "outside the bundle"),
])
def test_static_check_refuses_unsafe_configs_without_running_them(tmp_path, config, match):
    root = _bundle(tmp_path, config)
    with pytest.raises(BundleConfigError, match=match):
        check_config_static([root / "configs" / "inference.json"], root)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_static_check_accepts_the_shipped_bundles():
    for bundle in ("busgen_sample", "busgen_pretrain", "busgen_adapt"):
        root = ROOT / "bundles" / bundle
        files = sorted((root / "configs").glob("*.json"))
        assert check_config_static(files, root) > 0


def test_a_component_entry_may_be_overridden_by_its_value():
    """The guard overlay declares protector_path as a component ({"_target_": ...}); passing a path is the documented
    way to point it at a file (the main job does), so it is accepted; a mistyped scalar still is not."""
    overlay = ROOT / "plugins" / "busgen-cpsample" / "busgen_cpsample" / "bundles" / "cpsample" / "configs" / \
        "guard_overlay.json"
    validate_overrides([SAMPLE, overlay], {"protector_path": "/tmp/protector.pt", "cpsample_strength": 30.0},
                       bundle="busgen_sample")
    with pytest.raises(BundleConfigError, match="wrong type"):
        validate_overrides([SAMPLE, overlay], {"cpsample_strength": "strong"}, bundle="busgen_sample")
