"""Run the ``bus_detector`` bundle in-process from Python (the same configs ``python -m monai.bundle run`` uses),
and the main job's ``detect`` stage on the phantom.

Example::

    from busgen_detect.workflow import train, evaluate
    train(["preset_cpu_tiny"], datalists=["data/bus_bra.json"], output_dir="runs/det")
    rep = evaluate(["preset_cpu_tiny"], datalists=["data/bus_bra.json"], output_dir="runs/det")
    rep["results"]["detection"]["ap50"]

Overrides are MONAI config ids (``max_epochs``, ``train#trainer#max_epochs``); values are Python objects.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_root", "config_files", "run_bundle", "train", "evaluate", "infer", "lesion_free_phantom",
           "phantom_stage"]


def bundle_root() -> Path:
    """The folder of the ``bus_detector`` bundle shipped with this plugin."""
    return Path(__file__).resolve().parent / "bundles" / "bus_detector"


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
    """``train.json`` + presets + overrides. Returns ``{"workflow", "network", "output_dir", "summary"}``."""
    wf = run_bundle(["train", *presets], overrides)
    out_dir = wf.parser.get_parsed_content("output_dir")
    path = Path(out_dir) / "training_summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    return {"workflow": wf, "network": wf.parser.get_parsed_content("network"), "output_dir": out_dir, "summary": summary}


def evaluate(presets: Sequence[str] = (), **overrides: Any) -> dict[str, Any]:
    """``train.json`` + ``evaluate.json`` + presets + overrides; returns what
    :func:`busgen_detect.report.write_detection_report` returns."""
    wf = run_bundle(["train", "evaluate", *presets], overrides, run=False)
    wf.run()
    return wf.parser.get_parsed_content("evaluate#report", lazy=True)


def infer(presets: Sequence[str] = (), **overrides: Any) -> str:
    """``train.json`` + ``inference.json`` + presets + overrides; returns the predictions folder."""
    wf = run_bundle(["train", "inference", *presets], overrides)
    return str(wf.parser.get_parsed_content("predictions_dir"))


def lesion_free_phantom(out_dir: str | os.PathLike, n: int = 24, size: int = 128, seed: int = 1,
                        split_fractions: Sequence[float] = (0.0, 0.0, 1.0)) -> str:
    """A phantom data set of ``normal`` (lesion-free) images; returns its datalist path. Default: all in the
    test split. Patient/study ids get the prefix ``PHN-`` so they never collide with another phantom's ids.
    The main job's phantom has lesions in every image; this adds the normal images a detector needs."""
    from busgen_monai.data.phantom import write_dataset
    from busgen_monai.data.schema import iter_items, load_datalist, save_datalist

    path = write_dataset(out_dir, n=int(n), seed=int(seed), size=(int(size), int(size)), pathologies=("normal",),
                         split_fractions=tuple(float(f) for f in split_fractions))
    data = load_datalist(path)
    for _, _, it in iter_items(data):
        it["patient_id"] = "PHN-" + str(it["patient_id"]).removeprefix("PH-")
        it["study_id"] = "PHN-" + str(it["study_id"]).removeprefix("PH-")
    data["name"] = "phantom_normal"
    save_datalist(data, path)
    return str(path)


def phantom_stage(datalist: str | os.PathLike, out_dir: str | os.PathLike, max_epochs: int = 10, n_lesion_free: int = 48,
                  n_bootstrap: int = 1000, presets: Sequence[str] = ("preset_cpu_tiny",), **overrides: Any) -> dict[str, Any]:
    """The main job's ``detect`` stage: write ``n_lesion_free`` lesion-free phantom images (split 70/15/15 like
    the phantom), train the tiny detector on the training splits of both datalists (validation AP logged on their
    validation splits), evaluate the last epoch's weights on their test splits and write the report (the
    phantom's validation AP reaches 1.0 within a few epochs, so best-AP selection would keep an early epoch that
    still fires on normal tissue). Returns ``{"report", "ap50",
    "ap_small", "froc_mean", "lesion_free", "output_dir", "seconds"}``."""
    out = Path(out_dir)
    t0 = time.time()
    sources = [str(datalist)]
    if n_lesion_free > 0:
        sources.append(lesion_free_phantom(out / "lesion_free", n=n_lesion_free, split_fractions=(0.7, 0.15, 0.15)))
    common = {"datalists": sources, "output_dir": str(out), "max_epochs": int(max_epochs), **overrides}
    train(presets, **common)
    rep = evaluate(presets, n_bootstrap=int(n_bootstrap), **{"model_path": str(out / "models" / "model_final.pt"), **common})
    det = rep["results"]["detection"]
    return {"report": rep["report"], "ap50": det["ap50"]["estimate"], "ap_small": det["ap_small"]["estimate"],
            "froc_mean": det["froc_mean"], "lesion_free": det.get("lesion_free"), "output_dir": str(out),
            "seconds": round(time.time() - t0, 1)}
