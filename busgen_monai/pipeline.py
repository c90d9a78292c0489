"""The main job: every busgen-monai stage, end to end, on data the project generates itself.

``busgen demo --out runs/demo`` runs the stages in order on CPU in minutes. Each stage writes into its
own folder ``OUT/<stage>/`` and, when it finishes, a ``done.json`` with its summary and wall time; a
re-run skips finished stages (``--force`` re-runs them), so an interrupted demo resumes where it stopped.
The whole run ends with ``OUT/summary.json`` and the pictures each stage made.

Stages (each new stage of the project joins this list):

1. ``phantom``  - phantom breast-ultrasound data set (PNG + masks + datalist) and a PACS-style DICOM export
2. ``ingest``   - ingest the PACS-style DICOM export (cines, crops, de-identification, rejects with reasons)
3. ``datalist`` - validate the phantom datalist, summarise it, draw a sample grid
4. ``pretrain`` - a short CPU pretraining run of the ``tiny`` preset (``bundles/busgen_pretrain``) on the phantom:
   seconds; it exercises the training path (its model is a final artefact, not used downstream)
5. ``adapt``    - LoRA adaptation (``bundles/busgen_adapt``) of the shipped generator (64 px, trained on BUS-BRA,
   ``docs/model_card.md``) to the phantom's four devices, and a model-zoo bundle zip of the adapter checked with
   ``busgen verify``
6. ``sample``   - generate a labelled synthetic set from the adapted generator with DPM-Solver++ and CFG
   (``bundles/busgen_sample``)
7. ``privacy``  - privacy plugin (``busgen-cpsample``): protecting classifier for the adapted generator, a guarded
   sample set (CPSampling), and the privacy audit (nearest training image by cosine and MS-SSIM) of the unguarded
   and guarded sets
8. ``clean``    - cleaning filter (plugin ``busgen-clean``): a judge trained on the real phantom removes generated
   images whose lesion disagrees with their label
9. ``classify`` - train the downstream classifier (plugin ``busgen-classify``, bundle ``bus_classifier``) on the
   cleaned generated set, evaluate it on the phantom's real test split: clinical report (AUROC with patient-bootstrap CI,
   sensitivity/specificity/PPV/NPV, ROC/PR plots, t-SNE, Grad-CAM)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.schema import atomic_write_text

__all__ = ["Stage", "STAGES", "run_demo", "DemoContext"]

logger = logging.getLogger(__name__)


@dataclass
class DemoContext:
    """Shared state between stages: the output root and what earlier stages produced."""

    out: Path
    results: dict[str, dict] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass
class Stage:
    name: str
    run: Callable[[DemoContext], dict]
    description: str


# ---------------------------------------------------------------------------------------------- stages
def _stage_phantom(ctx: DemoContext) -> dict:
    from .data.pacs_export import write_pacs_export
    from .data.phantom import write_dataset

    d = ctx.stage_dir("phantom")
    datalist = write_dataset(d / "dataset", n=240, seed=0, size=(128, 128))
    pacs = write_pacs_export(d / "pacs", n_patients=4, seed=0)
    return {"datalist": str(datalist), "pacs_export": str(pacs)}


def _stage_ingest(ctx: DemoContext) -> dict:
    from .data.ingest import ingest

    d = ctx.stage_dir("ingest")
    result = ingest(ctx.results["phantom"]["pacs_export"], d / "out", image_format="png", salt="busgen-demo",
                    workers=1)
    print(result.summary())
    return {"datalist": str(result.datalist_path), "rejects": str(result.rejects_path),
            "files_total": result.files_total, "files_ingested": result.files_ingested,
            "files_rejected": result.files_rejected, "frames_written": result.frames_written,
            "reject_reasons": dict(result.reasons)}


def _stage_datalist(ctx: DemoContext) -> dict:
    from .data.io import read_image_rgb
    from .data.schema import iter_items, load_datalist, summarize_datalist
    from .visualize import save_image_grid

    d = ctx.stage_dir("datalist")
    data = load_datalist(ctx.results["phantom"]["datalist"])
    summary = summarize_datalist(data)
    atomic_write_text(d / "summary.json", json.dumps(summary, indent=2))
    items = [it for _, _, it in iter_items(data)]
    # one row per device, benign and malignant side by side
    picked: list[dict] = []
    for device in sorted({it["device"] for it in items}):
        for pathology in ("benign", "malignant"):
            picked += [it for it in items if it["device"] == device and it["pathology"] == pathology][:4]
    base = Path(data["base_dir"])
    grid = save_image_grid(
        [read_image_rgb(base / it["image"]) for it in picked], d / "sample_grid.png",
        labels=[f"{it['pathology']} / {it['device']}" for it in picked],
        boxes=[it["boxes"] for it in picked], ncols=8, title="Phantom data set (boxes in yellow)")
    return {"summary": summary, "grid": str(grid)}


def _stage_pretrain(ctx: DemoContext) -> dict:
    import torch

    from .bundle_run import run_bundle
    from .inferers import export_generator, resolve_checkpoint

    d = ctx.stage_dir("pretrain")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is faster than two on small CPUs
    try:
        run_bundle("busgen_pretrain", "train", datalist=ctx.results["phantom"]["datalist"], output_dir=str(d),
                   preset_name="tiny", max_epochs=DEMO_PRETRAIN_EPOCHS, num_workers=0, progress_bar=True,
                   checkpoint_interval=500, sample_interval=DEMO_PRETRAIN_EPOCHS, val_interval=DEMO_PRETRAIN_EPOCHS)
    finally:
        torch.set_num_threads(threads)
    ckpt = resolve_checkpoint(d / "models")
    model = export_generator(ckpt, d / "model.pt")
    grids = sorted((d / "samples").glob("*.png"))
    return {"checkpoint": str(ckpt), "model": str(model), "sample_grid": str(grids[-1]) if grids else None}


def _stage_adapt(ctx: DemoContext) -> dict:
    """LoRA-adapt the shipped BUS-BRA generator to the phantom's devices (the adapt bundle's train config), package
    the adapter as a model-zoo bundle and verify it offline."""
    from .bundle_tools import package_bundle, verify_bundle
    from .bundle_run import run_bundle
    from .data.schema import load_datalist
    from .inferers import default_generator, generator_settings

    d = ctx.stage_dir("adapt")
    base = default_generator()
    datalist = ctx.results["phantom"]["datalist"]
    devices = [x for x in load_datalist(datalist, check_files=False).get("devices", []) if x not in ("unknown", "null")]
    run_dir = d / "run"
    run_bundle("busgen_adapt", "train", base_checkpoint=str(base), datalist=datalist, output_dir=str(run_dir),
               new_devices=devices, max_epochs=DEMO_ADAPT_EPOCHS, num_workers=0, progress_bar=True,
               sample_steps=10, sample_devices=devices, val_num_items=8, early_stopping_patience=DEMO_ADAPT_EPOCHS)
    models = run_dir / "models"
    settings = generator_settings(base)
    folder, zpath = package_bundle(d / "zoo", "adapter", adapter=models / "adapter.pt", base_checkpoint=base,
                                   preset_name=settings.get("name", "cpu"), name="busgen_adapt_phantom",
                                   box_prior=models / "box_prior.json", devices=devices)
    report = verify_bundle(zpath, base_checkpoint=base)
    verified = {k: v for k, v in report.items() if isinstance(v, (bool, int, float, str))}
    grids = sorted((run_dir / "samples").glob("*.png"))
    return {"base": str(base), "devices": devices, "adapter": str(models / "adapter.pt"),
            "model": str(models / "model.pt"), "box_prior": str(models / "box_prior.json"),
            "sample_grid": str(grids[-1]) if grids else None, "bundle_zip": str(zpath), "verified": verified}


def _stage_sample(ctx: DemoContext) -> dict:
    """Sample a labelled set from the *adapted* generator (merged model of the adapt stage)."""
    import json as _json

    from .bundle_run import run_bundle

    d = ctx.stage_dir("sample")
    run_bundle("busgen_sample", "inference", checkpoint=ctx.results["adapt"]["model"],
               datalist=ctx.results["phantom"]["datalist"], box_prior=ctx.results["adapt"]["box_prior"],
               output_dir=str(d), num_images=DEMO_NUM_GENERATED, num_inference_steps=DEMO_SAMPLE_STEPS, chunk_size=16)
    data = _json.loads((d / "datalist.json").read_text())
    return {"datalist": str(d / "datalist.json"), "generated": len(data["training"]),
            "grid": str(d / "sample_grid.png"), "model": ctx.results["adapt"]["model"]}


def _stage_privacy(ctx: DemoContext) -> dict:
    import json as _json

    import torch

    from .bundle_run import run_bundle
    from .plugins import discover_plugins

    registry = discover_plugins()
    plugin = registry["cpsample"]
    d = ctx.stage_dir("privacy")
    model = ctx.results["sample"]["model"]  # the adapted generator the sample stage used
    datalist = ctx.results["phantom"]["datalist"]
    protector = d / "protector.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_bundle("cpsample", "train_protector", generator_checkpoint=model, datalist=datalist,
                   protector_path=str(protector), channels=[16, 32, 32], max_iterations=DEMO_PROTECTOR_ITERATIONS,
                   check_interval=100, num_threads=1, progress_bar=True)
        overlay = plugin.bundle_paths()["cpsample"] / "configs" / "guard_overlay.json"
        guarded = d / "guarded"
        run_bundle("busgen_sample", f"inference,{overlay}", checkpoint=model, datalist=datalist,
                   box_prior=ctx.results["adapt"]["box_prior"], output_dir=str(guarded), num_images=DEMO_NUM_GUARDED,
                   num_inference_steps=DEMO_SAMPLE_STEPS, chunk_size=16,
                   protector_path=str(protector), cpsample_strength=30.0, cpsample_alpha=0.25)
        audit = registry.component("cpsample", "audit")
        summaries = {}
        for name, generated in (("unguarded", ctx.results["sample"]["datalist"]),
                                ("guarded", str(guarded / "datalist.json"))):
            s = audit(generated, datalist, d / f"audit_{name}", threshold=0.95, ssim_threshold=0.85, rule="both",
                      progress=False)
            summaries[name] = {k: s.get(k) for k in ("passed", "near_copies", "cosine", "ms_ssim")}
    finally:
        torch.set_num_threads(threads)
    stats = _json.loads((guarded / "guard_stats_rank0.json").read_text())
    return {"protector": str(protector), "guarded_datalist": str(guarded / "datalist.json"), "guard_stats": stats,
            "audit": summaries}


def _stage_clean(ctx: DemoContext) -> dict:
    import torch

    from .plugins import discover_plugins

    registry = discover_plugins()
    d = ctx.stage_dir("clean")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        judge = registry.component("clean", "train_judge")(ctx.results["phantom"]["datalist"], d / "judge",
                                                         seeds=(0,), epochs=15)
        summary = registry.component("clean", "clean_datalist")(ctx.results["sample"]["datalist"], d / "cleaned",
                                                               judge, threshold=0.5)
    finally:
        torch.set_num_threads(threads)
    return {"datalist": str(d / "cleaned" / "datalist.json"), "summary": summary,
            "rejects_grid": str(d / "cleaned" / "rejects_grid.png")}


def _stage_classify(ctx: DemoContext) -> dict:
    import json as _json

    import torch

    from .bundle_run import run_bundle

    d = ctx.stage_dir("classify")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = {"output_dir": str(d), "datalists": [ctx.results["phantom"]["datalist"]],
                  "train_datalists": [ctx.results["clean"]["datalist"]], "max_epochs": 8}
        run_bundle("bus_classifier", "train,presets/cpu_tiny", **common)
        run_bundle("bus_classifier", "train,evaluate,presets/cpu_tiny", n_bootstrap=1000, **common)
    finally:
        torch.set_num_threads(threads)
    reports = sorted(d.rglob("report.json")) or sorted(d.rglob("*.json"))
    report = next((r for r in reports if "auroc" in r.read_text()), None)
    auc = None
    if report is not None:
        text = _json.loads(report.read_text())
        auc = _find_key(text, "auroc")
    return {"report": str(report) if report else None, "test_auroc": auc, "output_dir": str(d)}


def _find_key(obj, key):
    """First value under ``key`` anywhere in a nested JSON object."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    if isinstance(obj, list):
        for v in obj:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


DEMO_PRETRAIN_EPOCHS = 6
DEMO_ADAPT_EPOCHS = 8
DEMO_SAMPLE_STEPS = 20
DEMO_NUM_GENERATED = 128
DEMO_NUM_GUARDED = 32
DEMO_PROTECTOR_ITERATIONS = 400

STAGES: list[Stage] = [
    Stage("phantom", _stage_phantom, "phantom data set + PACS-style DICOM export"),
    Stage("ingest", _stage_ingest, "ingest the phantom PACS export (DICOM cines -> de-identified frames + datalist)"),
    Stage("datalist", _stage_datalist, "validate and summarise the datalist, sample grid PNG"),
    Stage("pretrain", _stage_pretrain, "short CPU pretraining of the tiny conditional diffusion model (exercises "
          "the training path; the shipped generator is the base of the next stages)"),
    Stage("adapt", _stage_adapt, "LoRA adaptation of the shipped BUS-BRA generator to the phantom's devices, zoo "
          "bundle + verify"),
    Stage("sample", _stage_sample, "generate a labelled synthetic set from the adapted generator (DPM-Solver++, CFG)"),
    Stage("privacy", _stage_privacy, "privacy guard (CPSampling) and audit of the generated sets against the training set"),
    Stage("clean", _stage_clean, "cleaning filter: remove generated images whose lesion disagrees with the label"),
    Stage("classify", _stage_classify, "downstream classifier trained on generated data, evaluated on real phantom data"),
]


def run_demo(out: str | Path = "runs/demo", force: bool = False, until: str | None = None) -> dict:
    """Run the main job (all stages, or the stages up to and including ``until``).

    Returns the summary also written to ``OUT/summary.json``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ctx = DemoContext(Path(out).resolve())
    ctx.out.mkdir(parents=True, exist_ok=True)
    known = [s.name for s in STAGES]
    if until is not None and until not in known:
        raise ValueError(f"unknown demo stage {until!r}; stages are {known}")
    selected = STAGES[: known.index(until) + 1] if until else STAGES
    timings: dict[str, Any] = {}
    t_all = time.perf_counter()
    for stage in selected:
        done = ctx.out / stage.name / "done.json"
        if done.is_file() and not force:
            ctx.results[stage.name] = json.loads(done.read_text())["result"]
            timings[stage.name] = "done earlier (skipped)"
            print(f"[busgen demo] {stage.name}: already done, skipped ({done})")
            continue
        print(f"[busgen demo] {stage.name}: {stage.description} ...", flush=True)
        t0 = time.perf_counter()
        result = stage.run(ctx)
        dt = time.perf_counter() - t0
        ctx.results[stage.name] = result
        timings[stage.name] = round(dt, 2)
        atomic_write_text(done, json.dumps({"result": result, "seconds": round(dt, 2)}, indent=2, default=str))
        print(f"[busgen demo] {stage.name}: done in {dt:.1f} s", flush=True)
    summary = {"out": str(ctx.out), "seconds": timings, "total_seconds": round(time.perf_counter() - t_all, 2),
               "results": ctx.results}
    atomic_write_text(ctx.out / "summary.json", json.dumps(summary, indent=2, default=str))
    print(f"[busgen demo] finished in {summary['total_seconds']:.1f} s; summary: {ctx.out / 'summary.json'}")
    return summary
