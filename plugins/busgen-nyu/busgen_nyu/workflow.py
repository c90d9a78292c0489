"""Run the ``nyu_breast`` bundle in-process from Python (the same configs ``python -m monai.bundle run`` uses).

Example::

    from busgen_nyu.workflow import train, evaluate
    train(["preset_cpu_tiny"], datalists=["runs/phantom/datalist.json"], group_by="patient", output_dir="runs/nyu")
    rep = evaluate(["preset_cpu_tiny"], datalists=["runs/phantom/datalist.json"], group_by="patient",
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


def config_files(configs: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> list[str]:
    """Config names (``train``, ``preset_cpu_tiny``) or paths -> existing file paths, in order (the library's
    resolver: a missing name is an error listing the bundle's configs)."""
    from busgen_monai.bundle_run import resolve_configs

    base = Path(root) if root is not None else bundle_root()
    return [str(p) for p in resolve_configs(base, ",".join(str(c) for c in configs))]


def run_bundle(configs: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None, run: bool = True):
    """``monai.bundle.ConfigWorkflow`` from config files (merged in order) and overrides, validated, initialised,
    run and finalised (:func:`busgen_monai.bundle_run.bundle_workflow`). Returns the workflow
    (``wf.parser.get_parsed_content(id)`` gives any object it built, e.g. ``"network"``)."""
    from busgen_monai.bundle_run import bundle_workflow

    return bundle_workflow(bundle_root(), [str(c) for c in configs], overrides, run=run, logging_file=False)


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
