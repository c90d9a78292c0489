"""The busgen_pretrain bundle: configs parse, `monai.bundle run` trains and resumes, the multi-GPU overlay trains on
two CPU processes (torchrun, gloo) and both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bundles._monai_cli import monai_bundle_run, test_env

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "busgen_pretrain"
CONFIGS = BUNDLE / "configs"
TRAIN = CONFIGS / "train.json"
MULTI = CONFIGS / "multi_gpu_train.json"
FAST = {"preset_name": "tiny", "num_workers": 0, "progress_bar": False, "sample_steps": 2, "val_num_items": 2}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    from busgen_monai.data.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantom"), n=24, seed=2, size=(48, 48))


def _env() -> dict:
    return test_env()


def _bundle_run(config_files: list[Path], overrides: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return monai_bundle_run(BUNDLE, config_files, overrides, timeout)


def test_configs_parse_presets_and_metadata(datalist):
    from monai.bundle import ConfigParser

    from busgen_monai.networks import ConditionalDiffusionUNet, count_parameters

    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(CONFIGS / "preset_tiny.json")])
    parser["datalist"] = str(datalist)
    parser["bundle_root"] = str(BUNDLE)
    assert parser.get_parsed_content("image_size") == 32
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, ConditionalDiffusionUNet) and count_parameters(net) < 1e6
    codec = parser.get_parsed_content("codec")
    assert codec.pathologies == ["benign", "malignant"] and codec.device_id("PhantomMed-T9") > 0
    assert parser.get_parsed_content("prepare_batch").drop_prob == 0.1
    assert parser.get_parsed_content("noise_scheduler").num_train_timesteps == 500
    # outputs go under the bundle folder by default (the model zoo's convention), in a folder git ignores
    out = Path(parser.get_parsed_content("output_dir")).resolve()
    assert out == (BUNDLE / "runs" / "pretrain").resolve()
    import subprocess

    assert subprocess.run(["git", "check-ignore", "-q", str(out / "models" / "x.pt")], cwd=ROOT).returncode == 0
    for name, size in (("paper", 160), ("toy", 128)):
        p = ConfigParser()
        p.read_config([str(TRAIN), str(CONFIGS / f"preset_{name}.json")])
        assert p.get_parsed_content("image_size") == size and p.get_parsed_content("guidance_w") == 1.8
    assert ConfigParser.load_config_file(str(TRAIN))["preset_name"] == "paper"
    multi = ConfigParser.load_config_file(str(MULTI))
    assert multi["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert "init_process_group" in " ".join(multi["initialize"])
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    image = meta["network_data_format"]["inputs"]["image"]
    # grey B-mode: one image channel (+ the optional box-mask channel the network renders itself)
    assert image["num_channels"] == 1 and image["spatial_shape"] == [160, 160] and "box mask" in image["channel_def"]["1"]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    assert parser.get_parsed_content("image_channels") == 1 and net.image_channels == 1
    assert (CONFIGS / "logging.conf").is_file() and "Apache" in (BUNDLE / "LICENSE").read_text()
    readme = (BUNDLE / "docs" / "README.md").read_text()
    assert "torchrun" in readme and "BUS-BRA" in readme


def test_bundle_run_trains_and_resumes(datalist, tmp_path):
    out = tmp_path / "run"
    _bundle_run([TRAIN], {**FAST, "datalist": str(datalist), "output_dir": str(out), "max_epochs": 1})
    models = out / "models"
    first = sorted(models.glob("checkpoint_final_iteration=*.pt"))
    assert len(first) == 1
    ck1 = torch.load(first[0], weights_only=True)
    its = ck1["trainer"]["iteration"]
    assert its >= 1 and int(ck1["optimizer"]["state"][0]["step"]) == its
    codec = json.loads((models / "conditioning.json").read_text())
    assert codec == ck1["codec"] and codec["pathologies"] == ["benign", "malignant"]
    assert json.loads((models / "preset.json").read_text())["name"] == "tiny"
    assert (out / "samples" / "grid_latest.png").is_file()
    assert list((out / "logs").glob("events.out.tfevents.*"))

    # resume: the second run continues from the saved iteration with the saved optimizer state
    proc = _bundle_run([TRAIN], {**FAST, "datalist": str(datalist), "output_dir": str(out), "max_epochs": 2})
    assert "Restored all variables" in proc.stdout + proc.stderr
    ck2 = torch.load(models / f"checkpoint_final_iteration={2 * its}.pt", weights_only=True)
    assert ck2["trainer"]["iteration"] == 2 * its and ck2["trainer"]["epoch_length"] == its
    assert int(ck2["optimizer"]["state"][0]["step"]) == 2 * its
    assert ck2["lr_scheduler"]["last_epoch"] == 2 * its


@pytest.mark.slow
def test_multi_gpu_overlay_on_two_cpu_processes(datalist, tmp_path):
    """About 20-35 s: two processes each start MONAI and train the tiny preset for one epoch."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found next to the Python interpreter")
    dump = tmp_path / "dump_weights.json"
    dump.write_text(json.dumps({"finalize": [
        "$torch.save(busgen_monai.engines.unwrap_network(@network).state_dict(), "
        "os.path.join(@output_dir, 'rank%d.pt' % @rank))",
        {"_target_": "busgen_monai.engines.end_process_group"},
    ]}))
    out = tmp_path / "ddp"
    kwargs = {"config_file": [str(TRAIN), str(MULTI), str(dump)], "bundle_root": str(BUNDLE), **FAST,
              "datalist": str(datalist), "output_dir": str(out), "max_epochs": 1}
    script = "import json, sys; from monai.bundle import run; run(**json.loads(sys.argv[1]))"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "--no-python", sys.executable, "-c", script,
           json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    ckpts = list((out / "models").glob("checkpoint_final_iteration=*.pt"))
    assert len(ckpts) == 1  # rank 0 saves, rank 1 does not
    ck = torch.load(ckpts[0], weights_only=True)
    assert all(torch.equal(ck["network"][k], w0[k]) for k in w0)  # DDP wrapper stripped, trained weights saved
    assert ck["trainer"]["iteration"] >= 1


@pytest.mark.slow
@pytest.mark.realdata
def test_bundle_runs_on_bus_bra(bus_bra_root, tmp_path):
    """BUS-BRA -> datalist (load_bus_bra + save_datalist) -> a few tiny-preset iterations through the bundle."""
    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.schema import save_datalist

    datalist = save_datalist(load_bus_bra(bus_bra_root, relative_to=tmp_path), tmp_path / "bus_bra.json")
    out = tmp_path / "run"
    _bundle_run([TRAIN], {**FAST, "datalist": str(datalist), "output_dir": str(out), "max_epochs": 1,
                          "epoch_length": 3})
    ck = torch.load(out / "models" / "checkpoint_final_iteration=3.pt", weights_only=True)
    devices = {d["name"] for d in ck["codec"]["device_vocabulary"]["devices"]}
    assert {"GE-LOGIQ-7", "GE-LOGIQ-5", "TOSHIBA-Aplio-300", "U-Systems"} <= devices
    assert ck["codec"]["pathologies"] == ["benign", "malignant"]
