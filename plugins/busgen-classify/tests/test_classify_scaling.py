"""busgen-classify scaling tool: a tiny real-vs-generated curve (phantom stand-ins), plus the CLI and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_scaling_tiny_real_vs_generated(tmp_path):
    import contextlib
    import io

    from busgen_monai.cli import main
    from busgen_monai.data.phantom import write_dataset
    from busgen_classify.scaling import run_scaling

    real = write_dataset(tmp_path / "real", n=64, seed=0, size=(64, 64))
    gen = write_dataset(tmp_path / "gen", n=40, seed=5, size=(64, 64))  # stands in for a generated datalist
    out = tmp_path / "scaling"
    res = run_scaling(real, out, ks=[8, 16], generated_datalist=gen, repeats=1, iterations=4)
    assert Path(res["plot"]).is_file() and Path(res["plot"]).stat().st_size > 1000
    data = json.loads(Path(res["json"]).read_text())
    assert {(r["source"], r["k"]) for r in data["runs"]} == {("real", 8), ("real", 16), ("generated", 8), ("generated", 16)}
    for r in data["runs"]:
        assert 0.0 <= r["auc"] <= 1.0 and r["test_loss"] > 0 and r["train_items"] == r["k"]
        assert r["iterations"] >= 4
    assert len(data["summary"]) == 4
    assert not list(out.glob("runs/*/models"))  # checkpoints removed unless asked to keep them
    # the command through the plugin: every run is already done, so it resumes instantly and re-plots
    buf = io.StringIO()  # not capsys: MONAI's module loggers keep the stream they were created with
    with contextlib.redirect_stdout(buf):
        assert main(["classify-scaling", "--real", str(real), "--generated", str(gen), "--ks", "8,16",
                     "--iterations", "4", "--out", str(out)]) == 0
    printed = buf.getvalue()
    assert "generated  k=16" in printed and "scaling.png" in printed
    assert len(json.loads(Path(res["json"]).read_text())["runs"]) == 4
