"""Run the ``bus_classifier`` bundle in-process from Python (the same configs ``busgen run`` uses).

Example::

    from busgen_classify.workflow import train, evaluate
    out = train(["presets/cpu_tiny"], datalists=["data/bus_bra.json"], output_dir="runs/clf")
    rep = evaluate(["presets/cpu_tiny"], datalists=["data/bus_bra.json"], output_dir="runs/clf")
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
    """Config names (``train``, ``presets/cpu_tiny``) or paths -> existing file paths, in order."""
    root = Path(root) if root is not None else bundle_root()
    out = []
    for c in configs:
        p = Path(c)
        cands = [p, root / "configs" / p, root / "configs" / f"{c}.json"]
        found = next((q for q in cands if q.is_file()), None)
        if found is None:
            have = sorted(str(q.relative_to(root / "configs").with_suffix("")) for q in (root / "configs").rglob("*.json"))
            raise FileNotFoundError(f"bus_classifier has no config {str(c)!r}; it has {have}")
        out.append(str(found.resolve()))
    return out


def run_bundle(configs: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None,
               logging_file: str | bool | None = False, run: bool = True):
    """Build a ``monai.bundle.ConfigWorkflow`` from config files (merged in order) and overrides, then
    initialise, run and finalise it. Returns the workflow (``wf.parser.get_parsed_content(id)`` gives any
    object it built, e.g. ``"network"``)."""
    from monai.bundle import ConfigWorkflow

    root = bundle_root()
    kwargs = {"bundle_root": str(root), **dict(overrides or {})}
    wf = ConfigWorkflow(config_file=config_files(configs), meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=logging_file, workflow_type=None, **kwargs)
    wf.initialize()
    if run:
        wf.run()
        wf.finalize()
    return wf


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
