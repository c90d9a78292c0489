"""busgen-classify multi-GPU overlay, exercised with two CPU processes (torchrun, gloo backend)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_gpu_overlay_two_cpu_processes(tmp_path):
    import torch

    from busgen_monai.data.phantom import write_dataset

    busgen = shutil.which("busgen", path=str(Path(sys.executable).parent))
    if busgen is None:
        pytest.skip("the busgen console script is not installed next to this Python")
    dl = write_dataset(tmp_path / "ph", n=64, seed=0, size=(64, 64))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           busgen, "run", "bus_classifier", "train,multi_gpu_train,preset_cpu_tiny",
           "--datalists", f'["{dl}"]', "--output_dir", str(out), "--max_epochs", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    models = out / "models"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()
    state = torch.load(models / "model_final.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DDP
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) >= 1
    assert (out / "training_summary.json").is_file()
