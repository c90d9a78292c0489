"""bundles/busgen_adapt: train (in-process and via `python -m monai.bundle run`), base frozen, package + verify."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from busgen_monai.bundle_run import config_bases
from busgen_monai.data.phantom import write_dataset
from busgen_monai.inferers import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "busgen_adapt"


def _base(path):
    from busgen_monai.networks import ConditionCodec
    from busgen_monai.presets import build_network, get_preset, trained_settings

    torch.manual_seed(0)
    codec = ConditionCodec()
    net = build_network("tiny", codec)
    # as a pretraining run writes it: the network's arguments and training settings travel with the weights
    torch.save({"network": net.state_dict(), "codec": codec.state_dict(), "network_kwargs": net.init_args,
                "settings": trained_settings(get_preset("tiny"), name="tiny")}, path)
    return path


def _overrides(tmp, base, datalist):
    return {"base_checkpoint": str(base), "datalist": str(datalist), "output_dir": str(tmp / "run"),
            "max_epochs": 2, "epoch_length": 2, "batch_size": 4, "new_pathologies": ["dcis"], "val_num_items": 2,
            "sample_steps": 2, "progress_bar": False, "sample_devices": ["PhantomMed-L7"], "num_workers": 0}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    return tmp, write_dataset(tmp / "ph", n=16, size=(32, 32)), _base(tmp / "base.pt")


def test_metadata_and_files():
    for f in ("LICENSE", "configs/train.json", "configs/inference.json", "configs/metadata.json",
              "configs/logging.conf", "docs/README.md"):
        assert (BUNDLE / f).is_file(), f
    from busgen_monai.bundle_tools import validate_metadata

    meta = validate_metadata(BUNDLE / "configs/metadata.json")
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1  # grey B-mode
    # the adapt inference config is an overlay on the sample bundle's: it declares every sampling key, once
    from busgen_monai.bundle_check import declared_keys

    sample = json.loads((ROOT / "bundles/busgen_sample/configs/inference.json").read_text())
    overlay = json.loads((BUNDLE / "configs/inference.json").read_text())
    merged = declared_keys([BUNDLE / "configs/inference.json"])
    assert set(sample) <= set(merged) and merged["form"] == "adapter" and "adaptation.adapt" in " ".join(merged["imports"])
    assert not [k for k in overlay if k in sample and overlay[k] == sample[k]]  # nothing repeated


def test_train_in_process_base_bit_identical(phantom):
    torch.set_num_threads(1)
    from monai.bundle import ConfigParser

    tmp, datalist, base = phantom
    parser = ConfigParser()
    parser.read_config([str(p) for p in config_bases(BUNDLE / "configs/train.json")])  # base, then the overlay
    parser["bundle_root"] = str(BUNDLE)
    for k, v in {**_overrides(tmp / "inproc", base, datalist), "extra_augmentations": [
            {"_target_": "RandGaussianNoised", "keys": "image", "prob": 0.5, "std": 0.01}]}.items():
        parser[k] = v
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("network")
    trained = [p for p in network.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in network.named_parameters() if p.requires_grad}
    trainer.run()
    assert all("lora_" in n or n.endswith("new_weight") for n, p in network.named_parameters() if p.requires_grad)
    assert any(not torch.equal(before[n], p) for n, p in network.named_parameters() if p.requires_grad)
    assert len(trained) > 0
    # base weights bit-identical to the base checkpoint
    base_sd = read_checkpoint(base)["network"]
    state = network.state_dict()
    for key, value in base_sd.items():
        cand = [key, key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias"),
                key.replace("weight", "base_weight")]
        match = next((c for c in cand if c in state), None)
        assert match is not None, key
        assert torch.equal(state[match].cpu(), value), key
    models = tmp / "inproc" / "run" / "models"
    assert (models / "adapter.pt").is_file() and (models / "model.pt").is_file()


def test_bundle_run_subprocess_package_verify(phantom, tmp_path):
    tmp, datalist, base = phantom
    # the command the bundle's README documents: the pretrain train.json, then this bundle's overlay
    files = [str(BUNDLE.parent / "busgen_pretrain" / "configs" / "train.json"), str(BUNDLE / "configs/train.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files), "--bundle_root", str(BUNDLE)]
    for k, v in _overrides(tmp / "sub", base, datalist).items():
        cmd += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    models = tmp / "sub" / "run" / "models"
    assert (models / "adapter.pt").is_file() and (models / "model.pt").is_file()
    assert list((tmp / "sub" / "run" / "samples").glob("*.png"))
    adapter = torch.load(models / "adapter.pt", weights_only=False)
    assert adapter["busgen_extra"]["codec"]["pathologies"][-1] == "dcis"

    from busgen_monai.bundle_tools import package_bundle, verify_bundle

    kw = dict(box_prior=models / "box_prior.json", devices=["PhantomMed-L7"])
    _, zad = package_bundle(tmp_path, "adapter", adapter=models / "adapter.pt", base_checkpoint=base, name="ad", **kw)
    rep = verify_bundle(zad, base_checkpoint=base)
    assert rep["net_in_out"] == (1, 1, 32, 32) and rep["sampled"] == 2
    _, zmg = package_bundle(tmp_path, "merged", merged_model=models / "model.pt", name="mg", **kw)
    assert verify_bundle(zmg)["sampled"] == 2


@pytest.mark.slow
def test_multi_gpu_overlay_on_two_cpu_processes(phantom, tmp_path):
    """About 30-60 s: the adaptation bundle with multi_gpu_train.json on two CPU ranks (torchrun, gloo): both ranks
    end with identical LoRA weights, the base stays frozen, rank 0 alone writes the adapter and the merged model."""
    import shutil

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found next to the Python interpreter")
    tmp, datalist, base = phantom
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"finalize": [
        "$torch.save({n: p.detach().cpu() for n, p in @network_def.named_parameters() if p.requires_grad}, "
        "os.path.join(@output_dir, 'trainable_rank%d.pt' % @rank))",
        {"_target_": "busgen_monai.engines.end_process_group"},
    ]}))
    out = tmp_path / "ddp"
    kwargs = {"config_file": [str(p) for p in config_bases(BUNDLE / "configs/multi_gpu_train.json")] + [str(dump)], "bundle_root": str(BUNDLE),
              **_overrides(tmp_path, base, datalist), "output_dir": str(out), "max_epochs": 1}
    script = "import json, sys; from monai.bundle import run; run(**json.loads(sys.argv[1]))"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "--no-python", sys.executable, "-c", script,
           json.dumps(kwargs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(out / "trainable_rank0.pt", weights_only=True)
    w1 = torch.load(out / "trainable_rank1.pt", weights_only=True)
    assert w0 and w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all("lora_" in k or k.endswith("new_weight") for k in w0)
    models = out / "models"
    assert (models / "adapter.pt").is_file() and (models / "model.pt").is_file()
    adapter = torch.load(models / "adapter.pt", weights_only=False)
    assert adapter["busgen_extra"]["codec"]["pathologies"][-1] == "dcis"
