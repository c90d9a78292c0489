"""Small random search over the NYU model's hyper-parameters and the top-k ensemble (Shen et al. 2021 ensembled the
top 3 of 30 random-search runs).

Each run trains the bundle (``train.json`` + presets) with ``top_t``, ``beta``, ``learning_rate`` and ``seed`` drawn
from log-uniform ranges, in its own folder; runs are ranked by their best validation malignant AUROC; the top ``k``
checkpoints go to ``evaluate.json`` / ``inference.json`` as ``model_paths`` (the ensemble averages breast and image
probabilities and saliency maps). Runs already finished (their ``training_summary.json`` exists) are not repeated.

Example::

    from busgen_nyu.search import random_search
    res = random_search(["preset_cpu_tiny"], n_runs=6, top_k=3, out_dir="runs/nyu_search",
                        datalists=["runs/phantom/datalist.json"], group_by="patient")
    res["model_paths"]   # -> evaluate(["preset_cpu_tiny"], model_paths=res["model_paths"], ...)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busgen_monai.utils.io import atomic_write_json

__all__ = ["DEFAULT_SPACE", "draw_settings", "random_search"]

#: name -> (low, high) of a log-uniform draw
DEFAULT_SPACE: dict[str, tuple[float, float]] = {"top_t": (0.01, 0.2), "beta": (1e-4, 1e-1),
                                                 "learning_rate": (1e-4, 3e-3)}


def draw_settings(n_runs: int, space: Mapping[str, tuple[float, float]] | None = None, seed: int = 0) -> list[dict]:
    """``n_runs`` settings drawn log-uniformly from ``space`` (each with its own training ``seed``)."""
    space = dict(DEFAULT_SPACE if space is None else space)
    for name, (lo, hi) in space.items():
        if not 0 < lo <= hi:
            raise ValueError(f"search space {name}: need 0 < low <= high, got ({lo}, {hi})")
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(int(n_runs)):
        s = {k: float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for k, (lo, hi) in space.items()}
        s["seed"] = int(seed * 1000 + i)
        runs.append(s)
    return runs


def random_search(presets: Sequence[str] = (), n_runs: int = 30, top_k: int = 3, out_dir: str | os.PathLike = "runs/nyu_search",
                  space: Mapping[str, tuple[float, float]] | None = None, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Train ``n_runs`` randomly drawn settings and return the ``top_k`` best by validation malignant AUROC.

    Returns:
        ``{"runs": [{"settings", "output_dir", "best_val_metric", "checkpoint"}, ...] (best first),
        "model_paths": [top-k checkpoints]}``, also written to ``<out_dir>/search.json``.
    """
    from .workflow import train

    if top_k < 1 or top_k > n_runs:
        raise ValueError(f"top_k must be in 1..n_runs ({n_runs}), got {top_k}")
    out = Path(out_dir)
    results = []
    for i, settings in enumerate(draw_settings(n_runs, space, seed)):
        run_dir = out / f"run{i:03d}"
        summary_path = run_dir / "training_summary.json"
        if not summary_path.is_file():
            train(presets, **{**overrides, **settings, "output_dir": str(run_dir)})
        summary = json.loads(summary_path.read_text())
        ckpt = run_dir / "models" / "model.pt"
        results.append({"settings": settings, "output_dir": str(run_dir),
                        "best_val_metric": summary.get("best_val_metric"),
                        "checkpoint": str(ckpt if ckpt.is_file() else run_dir / "models" / "model_final.pt")})
    results.sort(key=lambda r: -1.0 if r["best_val_metric"] is None else -float(r["best_val_metric"]))
    payload = {"runs": results, "model_paths": [r["checkpoint"] for r in results[:top_k]], "top_k": top_k}
    atomic_write_json(out / "search.json", payload, indent=2)
    return payload
