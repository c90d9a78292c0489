"""A wheel install, as a model-zoo user gets it: build the wheel, install it (not editable) into a fresh virtual
environment, and run the core commands from a folder outside the source tree. The core bundles must come from
the installed package (package data), not from the checkout.

Slow (a fresh environment installs its dependencies from the package index: about 2-5 minutes, most of it pip)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("BUSGEN_TORCH_SPEC", "torch==2.13.0")


def _run(cmd, cwd, env, timeout=900):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_install_runs_bundles_pretrain_sample_adapt_package_verify(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_PROGRESS_BAR="off")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", dist], cwd=tmp_path, env=env)
    wheel = next(dist.glob("busgen_monai-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    py, busgen = venv / "bin" / "python", venv / "bin" / "busgen"
    _run([py, "-m", "pip", "install", "-q", TORCH], cwd=tmp_path, env=env)
    _run([py, "-m", "pip", "install", "-q", wheel], cwd=tmp_path, env=env)

    work = tmp_path / "work"  # outside the source tree: nothing may be found through the checkout
    work.mkdir()
    out = _run([busgen, "bundles"], cwd=work, env=env)
    for name in ("busgen_pretrain", "busgen_adapt", "busgen_sample"):
        assert name in out, out
    site = _run([py, "-c", "import busgen_monai, os; print(os.path.dirname(busgen_monai.__file__))"], work, env)
    bundles = json.loads(_run([py, "-c", "import json; from busgen_monai.plugins import builtin_bundles; "
                                         "print(json.dumps({k: str(v) for k, v in builtin_bundles().items()}))"],
                              work, env))
    assert all(v.startswith(site.strip()) for v in bundles.values()), bundles  # package data, not the checkout
    assert not str(ROOT) in json.dumps(bundles)

    _run([busgen, "phantom", "ph", "--n", "16", "--size", "32"], work, env)
    datalist = work / "ph" / "dataset" / "datalist.json"
    common = ["--num_workers", "0", "--progress_bar", "false", "--val_num_items", "2", "--sample_steps", "2",
              "--batch_size", "4", "--max_epochs", "1", "--epoch_length", "2"]
    _run([busgen, "run", "busgen_pretrain", "train,preset_tiny", "--datalist", datalist, "--output_dir", "pre",
          *common], work, env)
    ckpt = sorted((work / "pre" / "models").glob("*.pt"))
    assert ckpt, list((work / "pre").rglob("*"))
    _run([busgen, "sample", "gen", "--n", "2", "--checkpoint", ckpt[-1], "--datalist", datalist, "--steps", "2",
          "--quiet"], work, env)
    assert len(json.loads((work / "gen" / "datalist.json").read_text())["training"]) == 2
    # adapt (the overlay config on the installed pretrain config), package the merged model, verify the bundle
    _run([busgen, "run", "busgen_adapt", "train", "--base_checkpoint", ckpt[-1], "--datalist", datalist,
          "--output_dir", "adapt", "--new_pathologies", '["dcis"]', "--sample_devices", '["PhantomMed-L7"]',
          *common], work, env)
    models = work / "adapt" / "models"
    assert (models / "model.pt").is_file() and (models / "adapter.pt").is_file()
    _run([busgen, "package", "zoo", "--form", "merged", "--model", models / "model.pt", "--box-prior",
          models / "box_prior.json", "--devices", "PhantomMed-L7", "--name", "wheel_check"], work, env)
    out = _run([busgen, "verify", work / "zoo" / "wheel_check.zip"], work, env)
    assert "OK" in out or "ok" in out.lower(), out
