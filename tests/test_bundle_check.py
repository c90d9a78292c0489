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
