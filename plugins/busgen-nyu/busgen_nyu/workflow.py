"""Run the ``nyu_breast`` bundle in-process from Python (the same configs ``python -m monai.bundle run`` uses).

Example::

    from busgen_nyu.workflow import train, evaluate
    train(["presets/cpu_tiny"], datalists=["runs/phantom/datalist.json"], group_by="patient", output_dir="runs/nyu")
    rep = evaluate(["presets/cpu_tiny"], datalists=["runs/phantom/datalist.json"], group_by="patient",
                   output_dir="runs/nyu")
    rep["results"]["breast_auroc (malignant)"]

Overrides are MONAI config ids (top-level ``max_epochs`` or nested ``train#trainer#max_epochs``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_root", "config_files", "run_bundle", "train", "evaluate", "infer"]


def bundle_root() -> Path:
    """The folder of the ``nyu_breast`` bundle shipped with this plugin."""
    return Path(__file__).resolve().parent / "bundles" / "nyu_breast"


def config_files(configs: Sequence[str | os.PathLike]) -> list[str]:
    """Config names (``train``, ``presets/cpu_tiny``) or paths -> existing file paths, in order."""
    root = bundle_root()
    out = []
    for c in configs:
        p = Path(c)
        found = next((q for q in (p, root / "configs" / p, root / "configs" / f"{c}.json") if q.is_file()), None)
        if found is None:
            have = sorted(str(q.relative_to(root / "configs").with_suffix("")) for q in (root / "configs").rglob("*.json"))
            raise FileNotFoundError(f"nyu_breast has no config {str(c)!r}; it has {have}")
        out.append(str(found.resolve()))
    return out


def run_bundle(configs: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None, run: bool = True):
    """Build a ``monai.bundle.ConfigWorkflow`` from config files (merged in order) and overrides, initialise it and
    (with ``run``) run and finalise it. Returns the workflow."""
    from monai.bundle import ConfigWorkflow

    root = bundle_root()
    wf = ConfigWorkflow(config_file=config_files(configs), meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=False, workflow_type=None, **{"bundle_root": str(root), **dict(overrides or {})})
    wf.initialize()
    if run:
        wf.run()
        wf.finalize()
    return wf


def train(presets: Sequence[str] = (), **overrides: Any) -> dict[str, Any]:
    """Train with ``train.json`` + ``presets`` + overrides; returns ``{"workflow", "network", "output_dir", "summary"}``."""
    wf = run_bundle(["train", *presets], overrides)
    out_dir = wf.parser.get_parsed_content("output_dir")
    path = Path(out_dir) / "training_summary.json"
    return {"workflow": wf, "network": wf.parser.get_parsed_content("network"), "output_dir": out_dir,
            "summary": json.loads(path.read_text()) if path.is_file() else {}}


def evaluate(presets: Sequence[str] = (), **overrides: Any) -> dict[str, Any]:
    """Evaluate with ``train.json`` + ``evaluate.json`` + ``presets`` + overrides; returns what
    :func:`busgen_nyu.evaluate.write_nyu_report` returns."""
    wf = run_bundle(["train", "evaluate", *presets], overrides, run=False)
    wf.parser.get_parsed_content("evaluate#evaluator").run()
    return wf.parser.get_parsed_content("evaluate#report", lazy=True)


def infer(presets: Sequence[str] = (), **overrides: Any) -> str:
    """Predict with ``train.json`` + ``inference.json`` + overrides; returns the output folder."""
    wf = run_bundle(["train", "inference", *presets], overrides)
    return str(wf.parser.get_parsed_content("inference_dir"))
