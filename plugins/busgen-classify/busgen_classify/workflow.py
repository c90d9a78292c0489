"""Run the ``bus_classifier`` bundle in-process from Python (the same configs ``busgen run`` uses).

Example::

    from busgen_classify.workflow import train, evaluate
    out = train(["preset_cpu_tiny"], datalists=["data/bus_bra.json"], output_dir="runs/clf")
    rep = evaluate(["preset_cpu_tiny"], datalists=["data/bus_bra.json"], output_dir="runs/clf")
    rep["results"]["auroc"]

Overrides are MONAI config ids (``train#trainer#max_epochs`` or top-level ``max_epochs``); values are
Python objects (no ``$`` needed for plain values).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_root", "config_files", "run_bundle", "train", "evaluate", "infer"]


def bundle_root() -> Path:
    """The folder of the ``bus_classifier`` bundle shipped with this plugin."""
    return Path(__file__).resolve().parent / "bundles" / "bus_classifier"


def config_files(configs: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> list[str]:
    """Config names (``train``, ``preset_cpu_tiny``) or paths -> existing file paths, in order (the library's
    resolver: a missing name is an error listing the bundle's configs)."""
    from busgen_monai.bundle_run import resolve_configs

    base = Path(root) if root is not None else bundle_root()
    return [str(p) for p in resolve_configs(base, ",".join(str(c) for c in configs))]


def run_bundle(configs: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None,
               logging_file: str | bool | None = False, run: bool = True):
    """``monai.bundle.ConfigWorkflow`` from config files (merged in order) and overrides, validated, initialised,
    run and finalised (:func:`busgen_monai.bundle_run.bundle_workflow`). Returns the workflow
    (``wf.parser.get_parsed_content(id)`` gives any object it built, e.g. ``"network"``)."""
    from busgen_monai.bundle_run import bundle_workflow

    return bundle_workflow(bundle_root(), [str(c) for c in configs], overrides, run=run, logging_file=logging_file)


def train(presets: Sequence[str] = (), **overrides: Any) -> dict[str, Any]:
    """Train with ``train.json`` + ``presets`` + overrides. Returns ``{"workflow", "network", "output_dir",
    "summary"}`` (``summary``: the ``training_summary.json`` content)."""
    import json

    wf = run_bundle(["train", *presets], overrides)
    out_dir = wf.parser.get_parsed_content("output_dir")
    summary_path = Path(out_dir) / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {"workflow": wf, "network": wf.parser.get_parsed_content("network"), "output_dir": out_dir, "summary": summary}


def evaluate(presets: Sequence[str] = (), **overrides: Any) -> dict[str, Any]:
    """Evaluate with ``train.json`` + ``evaluate.json`` + ``presets`` + overrides; returns what
    :func:`busgen_classify.evaluate.write_clinical_report` returns."""
    wf = run_bundle(["train", "evaluate", *presets], overrides, run=False)
    wf.run()
    return wf.parser.get_parsed_content("evaluate#report", lazy=True)


def infer(presets: Sequence[str] = (), **overrides: Any) -> str:
    """Predict with ``inference.json`` + overrides; returns the predictions CSV path."""
    run_bundle(["inference", *presets], overrides)
    return overrides.get("predictions_csv") or os.path.join(overrides.get("output_dir", "runs/bus_classifier"),
                                                            "inference", "predictions.csv")
