"""The sampling bundle through `python -m monai.bundle run` and torchrun (2 CPU ranks, gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from busgen_monai.data.phantom import write_dataset
from busgen_monai.inferers import export_generator, load_generator
from busgen_monai.networks import ConditionCodec
from busgen_monai.presets import build_network, get_preset, trained_settings

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "busgen_sample"


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    datalist = write_dataset(tmp / "phantom", n=24, seed=0, size=(32, 32))
    codec = ConditionCodec.from_datalist(datalist, max_boxes=8)
    torch.manual_seed(0)
    net = build_network("tiny", codec)
    ckpt = tmp / "checkpoint.pt"
    # what a pretraining run writes: weights, codec, the network's arguments and the settings it was trained with
    torch.save({"network": net.state_dict(), "codec": codec.state_dict(), "ema": {},
                "network_kwargs": net.init_args, "settings": trained_settings(get_preset("tiny"), name="tiny")}, ckpt)
    return ckpt, datalist, tmp


def _run(args, env=None, timeout=600):
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})},
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _common(ckpt, datalist, out):
    return ["--bundle_root", str(BUNDLE), "--checkpoint", str(ckpt),
            "--datalist", str(datalist), "--output_dir", str(out), "--num_images", "10", "--chunk_size", "4",
            "--num_inference_steps", "4", "--progress", "false"]


def test_export_and_load_generator(model_and_data, tmp_path):
    ckpt, _, _ = model_and_data
    small = export_generator(ckpt, tmp_path / "model.pt")
    net, codec = load_generator(small)  # no preset: the file carries the network's arguments
    ref, _ = load_generator(ckpt)
    for (k, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="drop the network overrides"):
        load_generator(small, channels=[8, 16])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator(tmp_path / "missing.pt")


def test_bundle_run_one_rank_and_two_ranks_agree(model_and_data):
    ckpt, datalist, tmp = model_and_data
    one = tmp / "one"
    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
          *_common(ckpt, datalist, one)])
    data = json.loads((one / "datalist.json").read_text())
    items = data["training"]
    assert len(items) == 10 and len({it["image"] for it in items}) == 10
    assert {it["pathology"] for it in items} == {"benign", "malignant"}
    assert {it["device"] for it in items} == {"PhantomMed-L7", "PhantomMed-L12", "PhantomMed-C5", "PhantomMed-T9"}
    prov = items[0]["provenance"]
    assert prov["sampler"] == "DPMSolverMultistepScheduler" and prov["steps"] == 4 and prov["guidance_w"] == 1.8
    assert len(prov["model_sha256"]) == 64 and prov["seed"] == 0
    assert all(len(it["boxes"]) == 1 for it in items)
    with Image.open(one / items[0]["image"]) as im:
        assert im.size == (32, 32) and im.mode == "L"  # a grey model writes one-channel PNGs
    assert (one / "box_prior.json").is_file() and (one / "sample_grid.png").is_file()

    two = tmp / "two"
    configs = json.dumps([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "multi_gpu_inference.json")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    _run([*torchrun, "-m", "monai.bundle", "run", "--config_file", configs, *_common(ckpt, datalist, two)],
         env={"OMP_NUM_THREADS": "1"})
    a = sorted((one / "images").glob("*.png"))
    b = sorted((two / "images").glob("*.png"))
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb))), pa.name
    assert json.loads((two / "datalist.json").read_text())["training"] == items
