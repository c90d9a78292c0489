"""The device_cyclegan bundle shipped by busgen-deviceaug: files, metadata, config parsing, a short run
through ``monai.bundle.run`` (via ``busgen run``) and, marked slow, the multi-GPU overlay under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from monai.bundle import ConfigParser, ConfigWorkflow  # noqa: E402

from busgen_monai.data.phantom import write_dataset  # noqa: E402

from busgen_deviceaug.bank import bundle_path  # noqa: E402

BUNDLE = bundle_path()
CONFIGS = BUNDLE / "configs"
TINY = {"spatial_size": [32, 32], "gen_channels": 4, "gen_res_blocks": 1, "disc_channels": 8, "disc_layers": 2,
        "num_epochs": 1, "num_epochs_decay": 1, "epoch_length": 2, "batch_size": 2, "num_threads": 1,
        "target_device": "PhantomMed-T9"}


@pytest.fixture(autouse=True)
def _restore_threads():
    """The configs below set num_threads=1 (torch.set_num_threads): give the session its setting back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("phantom"), n=32, seed=1, size=(32, 32),
                         devices=["PhantomMed-L7", "PhantomMed-C5", "PhantomMed-T9"])


def test_bundle_files_and_metadata():
    for rel in ("configs/train.json", "configs/multi_gpu_train.json", "configs/metadata.json",
                "configs/logging.conf", "docs/README.md", "LICENSE"):
        assert (BUNDLE / rel).is_file(), rel
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 3 and fmt["inputs"]["image"]["value_range"] == [-1, 1]
    assert fmt["outputs"]["pred"]["num_channels"] == 3
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for cite in ("Zhu", "BUSGen", "BUS-BRA"):
        assert cite in readme
    for cfg in CONFIGS.glob("*.json"):  # no absolute paths in shipped configs
        assert "/work/" not in cfg.read_text() and "/home/" not in cfg.read_text()


def test_train_config_has_the_bundle_properties(phantom, tmp_path):
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
                        logging_file=False, workflow_type="train", bundle_root=str(BUNDLE), datalist=str(phantom),
                        output_dir=str(tmp_path), **TINY)
    wf.initialize()
    assert not wf.check_properties()  # no missing required property of a MONAI train workflow
    assert wf.max_epochs == 2 and wf.train_handlers is not None
    items_a, items_b = wf.parser.get_parsed_content("domains")
    assert {it["device"] for it in items_b} == {"PhantomMed-T9"}
    assert {it["device"] for it in items_a} == {"PhantomMed-L7", "PhantomMed-C5"}  # any source -> target


def test_multi_gpu_overlay_parses():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    assert parser["train#dataloader#sampler"] == "@train#sampler"
    assert parser["train#dataloader#shuffle"] is False
    assert "DistributedDataParallel" in parser["network"]
    assert "dist.get_rank() > 0" in parser["train#trainer#train_handlers"]
    # the overlay keeps every handler on rank 0 and drops exactly the rank-0-only tail on other ranks
    handlers = parser["train#handlers"]
    rank0_only = {"StatsHandler", "busgen_deviceaug.handlers.LossHistory", "busgen_deviceaug.handlers.CycleGANSampleSaver",
                  "busgen_deviceaug.handlers.EngineCheckpointSaver", "CheckpointSaver"}
    assert all(h["_target_"] in rank0_only for h in handlers[-6:])
    assert not any(h["_target_"] in rank0_only for h in handlers[:-6])


def test_bad_config_values_give_clear_messages(phantom, tmp_path):
    common = dict(config_file=str(CONFIGS / "train.json"), logging_file=False, workflow_type="train",
                  bundle_root=str(BUNDLE), output_dir=str(tmp_path))
    wf = ConfigWorkflow(**common, **{**TINY, "target_device": None}, datalist=str(phantom))
    wf.initialize()
    with pytest.raises(RuntimeError) as err:
        wf.parser.get_parsed_content("domains")
    assert "no target device given" in str(err.value.__cause__)
    wf = ConfigWorkflow(**common, **{**TINY, "target_device": "GE-LOGIQ-7"}, datalist=str(phantom))
    wf.initialize()
    with pytest.raises(RuntimeError) as err:
        wf.parser.get_parsed_content("domains")
    assert "has no images" in str(err.value.__cause__) and "PhantomMed-L7" in str(err.value.__cause__)


def test_bundle_runs_through_monai_bundle_run(phantom, tmp_path, monkeypatch):
    """`busgen run device_cyclegan train --key value ...` = monai.bundle.run with bundle root/meta/logging set."""
    from busgen_monai.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "device_cyclegan"  # the default is inside the bundle folder: give our own
    args = ["run", "device_cyclegan", "train", "--datalist", str(phantom), "--output_dir", str(out)]
    for k, v in TINY.items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    assert main(args) == 0
    assert (out / "models" / "model.pt").is_file()
    assert (out / "checkpoints" / "checkpoint_epoch=2.pt").is_file()
    assert len(json.loads((out / "losses.json").read_text())["g_loss"]) == 4


@pytest.mark.slow
def test_multi_gpu_overlay_trains_under_torchrun(phantom, tmp_path):
    """Two CPU processes (gloo): DDP generators/discriminators, DistributedSampler, rank-0-only handlers."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import torch.distributed as dist
        from monai.bundle import ConfigWorkflow
        wf = ConfigWorkflow(config_file={[str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]!r},
                            logging_file=False, workflow_type="train", bundle_root={str(BUNDLE)!r},
                            datalist={str(phantom)!r}, output_dir={str(tmp_path / "out")!r}, **{TINY!r})
        wf.initialize()
        wf.run()
        t = wf.parser.get_parsed_content("train#trainer")
        n = len(wf.parser.get_parsed_content("train#trainer#train_handlers"))
        print("RESULT", json.dumps({{"rank": dist.get_rank(), "iteration": t.state.iteration, "handlers": n}}), flush=True)
        wf.finalize()
    """))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port=29541", str(script)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = sorted((json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line),
                     key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["iteration"] == 4 for r in results)
    assert results[0]["handlers"] == 8 and results[1]["handlers"] == 2
    assert (tmp_path / "out" / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "out" / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved from the unwrapped network
