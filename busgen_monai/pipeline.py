"""The main job: every busgen-monai stage, end to end, on data the project generates itself.

``busgen demo --out runs/demo`` runs :data:`STAGES` in order on CPU in minutes. The job is a table: each
:class:`Stage` names the bundle and config it runs (or, for the few steps that are not a bundle, the function),
its inputs (outputs of earlier stages, by ``"stage.output"`` name), fixed parameters and its outputs (paths in
the stage's own folder ``OUT/<stage>/``). :func:`run_demo` resolves the inputs, runs the bundle through the one
public :func:`busgen_monai.bundle_run.run_bundle`, checks that every declared output exists and records
``done.json`` (outputs, summary, seconds). A re-run skips finished stages (``--force`` re-runs them), so an
interrupted job resumes where it stopped. Every output is consumed by a later stage or is a final artefact
(:data:`FINAL`); ``tests/test_pipeline.py`` checks that.

The data flow is the one of ``DESIGN.md``::

    phantom (+ PACS export, labels CSV) -> ingest -> datalist -> pretrain
    phantom datalist -> adapt (LoRA on the shipped BUS-BRA generator) -> package (zoo bundle, hub push/pull, verify)
    adapted model -> sample -> audit;  adapted model -> protector -> guarded_sample -> audit_guarded
    phantom datalist -> judge;  sample -> clean -> classify_train -> classify (evaluated on the phantom's test split)
    clean (+ lesion-free normals) -> detect_train -> detect;  phantom -> nyu_train -> nyu
    PACS export + classifier -> deploy (DICOM SR + SC);  phantom + clean -> reader_study (built, not served)

A new stage of the project joins the table (plugins' stages name their plugin bundle).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .utils.io import atomic_write_text

__all__ = ["Stage", "STAGES", "FINAL", "run_demo", "DemoContext", "stage_graph"]

logger = logging.getLogger(__name__)

Params = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One row of the main job.

    Args:
        name: the stage's name (its folder under ``OUT``).
        description: one line for the log.
        bundle: the bundle it runs (core or plugin); ``None`` for a library step (``run``).
        config: the bundle's config(s), a comma list merged in order; ``"bundle:configs/x.json"`` names a config of
            another bundle (an overlay a plugin ships).
        inputs: bundle key (or ``run`` argument) -> ``"stage.output"`` (or a list of them) of an earlier stage.
        params: fixed bundle overrides, or a function of the resolved inputs returning them. ``"{stage}"`` in a
            string value is replaced by the stage's folder.
        outputs: output name -> path relative to the stage folder (checked to exist when the stage ends).
        output_key: the bundle key that receives the stage folder (``None``: the stage sets paths in ``params``).
        run: for a library step, ``run(stage_dir, **inputs) -> summary dict``.
        summarize: ``summarize(outputs) -> dict`` read from the declared outputs (e.g. a metric of a report).
        threads: torch threads while the stage runs (tiny networks run faster on one thread on small CPUs).
    """

    name: str
    description: str
    bundle: str | None = None
    config: str | None = None
    inputs: Mapping[str, str | list[str]] = field(default_factory=dict)
    params: Params = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    output_key: str | None = "output_dir"
    run: Callable[..., Mapping[str, Any] | None] | None = None
    summarize: Callable[[Mapping[str, str]], Mapping[str, Any]] | None = None
    threads: int = 1


@dataclass
class DemoContext:
    """What earlier stages produced: stage -> output name -> absolute path (and their summaries)."""

    out: Path
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def resolve(self, ref: str | list[str]) -> Any:
        if isinstance(ref, list):
            return [self.resolve(r) for r in ref]
        stage, _, output = ref.partition(".")
        try:
            return self.outputs[stage][output]
        except KeyError:
            raise KeyError(f"main job: input {ref!r} is not an output of an earlier stage "
                           f"(have {sorted(f'{s}.{o}' for s, outs in self.outputs.items() for o in outs)})") from None


# ---------------------------------------------------------------------------------------------- library steps
def _phantom(stage_dir: Path) -> dict:
    """The phantom data set, its PACS-style export, and the labels CSV a hospital would export from its records."""
    from .synthetic import write_dataset, write_pacs_export

    write_dataset(stage_dir / "dataset", n=240, seed=0, size=(128, 128))
    write_pacs_export(stage_dir / "pacs", n_patients=4, seed=0)  # the export, next to its ground truth
    truth = json.loads((stage_dir / "pacs" / "ground_truth.json").read_text())
    rows = [{"patient_id": p["phi"]["PatientID"], "laterality": p["lesion_laterality"], "pathology": p["pathology"]}
            for p in truth["patients"]]
    with open(stage_dir / "labels.csv.tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient_id", "laterality", "pathology"])
        writer.writeheader()
        writer.writerows(rows)
    (stage_dir / "labels.csv.tmp").replace(stage_dir / "labels.csv")
    return {"patients": len(rows)}


def _datalist(stage_dir: Path, phantom: str, ingested: str) -> dict:
    """Validate and summarise both datalists; a grid of the phantom, one row per device."""
    from .data.io import read_image_rgb
    from .data.schema import iter_items, load_datalist, summarize_datalist
    from .visualize import save_image_grid

    summaries = {}
    for name, path in (("phantom", phantom), ("ingested", ingested)):
        summaries[name] = summarize_datalist(load_datalist(path))  # validates (files, boxes, splits) on load
    atomic_write_text(stage_dir / "summary.json", json.dumps(summaries, indent=2))
    data = load_datalist(phantom)
    items = [it for _, _, it in iter_items(data)]
    picked: list[dict] = []
    for device in sorted({it["device"] for it in items}):
        for pathology in ("benign", "malignant"):
            picked += [it for it in items if it["device"] == device and it["pathology"] == pathology][:4]
    base = Path(data["base_dir"])
    save_image_grid([read_image_rgb(base / it["image"]) for it in picked], stage_dir / "sample_grid.png",
                    labels=[f"{it['pathology']} / {it['device']}" for it in picked],
                    boxes=[it["boxes"] for it in picked], ncols=8, title="Phantom data set (boxes in yellow)")
    return {"items": {k: v["items"] for k, v in summaries.items()},
            "devices": sorted(summaries["phantom"]["device"])}


def _package(stage_dir: Path, adapter: str, box_prior: str, datalist: str) -> dict:
    """Package the adapter as a model-zoo bundle, push it to a bundle hub (a folder here), pull it back into a fresh
    folder and verify it there (hashes, zoo schema, shapes, a load-and-sample round trip)."""
    from .bundle_tools import package_bundle, verify_bundle
    from .hub import pull_bundle, push_bundle
    from .inferers import default_generator, generator_settings

    base = default_generator()
    devices = _devices(datalist)
    _, zpath = package_bundle(stage_dir / "zoo", "adapter", adapter=adapter, base_checkpoint=base,
                              preset_name=generator_settings(base).get("name", "cpu"), name="busgen_adapt_phantom",
                              box_prior=box_prior, devices=devices)
    push_bundle(zpath, stage_dir / "hub")
    pulled = stage_dir / "pulled"
    if (pulled / "busgen_adapt_phantom").exists():  # a re-run after an interruption
        import shutil

        shutil.rmtree(pulled / "busgen_adapt_phantom")
    path = pull_bundle("busgen_adapt_phantom", stage_dir / "hub", pulled)
    report = verify_bundle(path, base_checkpoint=base)
    return {"verified": {k: v for k, v in report.items() if isinstance(v, (bool, int, float, str))}}


def _plugin_object(plugin: str, dotted: str) -> Any:
    """An object of an installed plugin, through the registry (the main job imports no plugin module directly)."""
    from .plugins import discover_plugins, locate

    registry = discover_plugins()
    if plugin not in registry:
        raise RuntimeError(f"main job: this stage needs the {plugin!r} plugin, which is not installed "
                           f"(pip install -e plugins/busgen-{plugin}); installed: {sorted(registry)}")
    return locate(dotted)


def _deploy(stage_dir: Path, pacs_export: str, model: str) -> dict:
    """The MONAI Deploy app on the phantom PACS export with the trained classifier: a DICOM SR and a saliency
    Secondary Capture per study."""
    run_app = _plugin_object("deploy", "busgen_deploy.app.run_app")
    model_config = _plugin_object("deploy", "busgen_deploy.model.ModelConfig")
    report = run_app(pacs_export, stage_dir / "out", model_config(configs="inference,preset_cpu_tiny",
                                                                  model_path=model))
    return {"studies_written": len(report.get("written", [])), "studies_failed": len(report.get("failed", []))}


def _reader_study(stage_dir: Path, real: str, generated: str) -> dict:
    """Build (not serve) a visual Turing test from the phantom's real test images and the cleaned generated set."""
    build = _plugin_object("readerstudy", "busgen_readerstudy.build.build_study")
    build(real, generated, stage_dir / "study", n_per_side=24, seed=0, readers=3, force=True)
    return {"images": 48, "readers": 3}


def _normals(stage_dir: Path) -> dict:
    """Lesion-free phantom images (70/15/15 split): the phantom has a lesion in every image, and a detector's false
    positives are measured on normal images, as the paper does."""
    write = _plugin_object("detect", "busgen_detect.workflow.lesion_free_phantom")
    write(stage_dir / "dataset", n=48, split_fractions=(0.7, 0.15, 0.15))
    return {"images": 48}


def _detect_summary(outputs: Mapping[str, str]) -> dict:
    det = _read(outputs["report"])["results"]["detection"]
    return {"ap50": det["ap50"], "ap_small": det["ap_small"], "froc_mean": det["froc_mean"]}


def _devices(datalist: str) -> list[str]:
    from .data.schema import load_datalist

    return [x for x in load_datalist(datalist, check_files=False).get("devices", []) if x not in ("unknown", "null")]


def _adapt_params(inputs: Mapping[str, Any]) -> dict:
    from .inferers import default_generator

    devices = _devices(inputs["datalist"])
    return {"base_checkpoint": str(default_generator()), "new_devices": devices, "sample_devices": devices,
            "max_epochs": DEMO_ADAPT_EPOCHS, "early_stopping_patience": DEMO_ADAPT_EPOCHS, "num_workers": 0,
            "sample_steps": 10, "val_num_items": 8, "progress_bar": True}


def _read(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _ingest_summary(outputs: Mapping[str, str]) -> dict:
    report = _read(outputs["report"])
    data = _read(outputs["datalist"])
    counts = report["counts"]
    return {"files_ingested": counts["ingested"], "files_rejected": counts["rejected"], "frames": counts["items"],
            "patients": counts["patients"], "pathologies": data.get("pathologies"), "reject_reasons": counts["reasons"]}


def _audit_summary(outputs: Mapping[str, str]) -> dict:
    s = _read(outputs["summary"])
    return {"passed": s["passed"], "near_copies": s["near_copies"], "cosine_max": s["cosine"]["max"],
            "ms_ssim_max": s["ms_ssim"]["max"]}


def _clean_summary(outputs: Mapping[str, str]) -> dict:
    s = _read(outputs["summary"])
    return {"kept": s["kept"], "rejected": s["rejected"], "total": s["total"]}


def _classify_summary(outputs: Mapping[str, str]) -> dict:
    return {"test_auroc": _read(outputs["report"])["results"]["auroc"]}


def _nyu_summary(outputs: Mapping[str, str]) -> dict:
    results = _read(outputs["report"])["results"]
    return {"breast_auroc": results["breast_auroc (malignant)"],
            "pointing_game": results["localisation"]["pointing_game"]}


def _sample_summary(outputs: Mapping[str, str]) -> dict:
    return {"generated": len(_read(outputs["datalist"])["training"])}


# ---------------------------------------------------------------------------------------------- the table
DEMO_PRETRAIN_EPOCHS = 6
DEMO_ADAPT_EPOCHS = 8
DEMO_SAMPLE_STEPS = 20
DEMO_NUM_GENERATED = 128
DEMO_NUM_GUARDED = 32
DEMO_PROTECTOR_ITERATIONS = 400

STAGES: list[Stage] = [
    Stage("phantom", "phantom data set + PACS-style DICOM export + the hospital's labels CSV", run=_phantom,
          outputs={"datalist": "dataset/datalist.json", "pacs_export": "pacs/export", "labels": "labels.csv"}),
    Stage("ingest", "ingest the PACS export (DICOM cines -> de-identified frames + datalist, labels from the CSV)",
          bundle="busgen_ingest", config="ingest",
          inputs={"source": "phantom.pacs_export", "labels": "phantom.labels"},
          params={"salt": "busgen-demo", "workers": 1},
          outputs={"datalist": "datalist.json", "rejects": "rejects.csv", "report": "ingest_report.json"},
          summarize=_ingest_summary),
    Stage("datalist", "validate and summarise the phantom and ingested datalists, sample grid", run=_datalist,
          inputs={"phantom": "phantom.datalist", "ingested": "ingest.datalist"},
          outputs={"summary": "summary.json", "grid": "sample_grid.png"}),
    Stage("pretrain", "short CPU pretraining of the tiny preset on the ingested frames (exercises the training path; "
          "the shipped generator is the base of the next stages)", bundle="busgen_pretrain", config="train",
          inputs={"datalist": "ingest.datalist"},
          params={"preset_name": "tiny", "max_epochs": DEMO_PRETRAIN_EPOCHS, "num_workers": 0, "progress_bar": True,
                  "checkpoint_interval": 500, "sample_interval": DEMO_PRETRAIN_EPOCHS,
                  "val_interval": DEMO_PRETRAIN_EPOCHS},
          outputs={"models": "models", "samples": "samples"}),
    Stage("adapt", "LoRA adaptation of the shipped BUS-BRA generator to the phantom's devices", bundle="busgen_adapt",
          config="train", inputs={"datalist": "phantom.datalist"}, params=_adapt_params,
          outputs={"model": "models/model.pt", "adapter": "models/adapter.pt", "peft_adapter": "models/peft_adapter",
                   "box_prior": "models/box_prior.json", "samples": "samples"}),
    Stage("package", "model-zoo bundle of the adapter, pushed to a bundle hub, pulled back and verified", run=_package,
          inputs={"adapter": "adapt.adapter", "box_prior": "adapt.box_prior", "datalist": "phantom.datalist"},
          outputs={"zip": "zoo/busgen_adapt_phantom.zip", "hub": "hub", "pulled": "pulled/busgen_adapt_phantom"}),
    Stage("sample", "generate a labelled synthetic set from the adapted generator (DPM-Solver++, CFG)",
          bundle="busgen_sample", config="inference",
          inputs={"checkpoint": "adapt.model", "datalist": "phantom.datalist", "box_prior": "adapt.box_prior"},
          params={"num_images": DEMO_NUM_GENERATED, "num_inference_steps": DEMO_SAMPLE_STEPS, "chunk_size": 16},
          outputs={"datalist": "datalist.json", "grid": "sample_grid.png"}, summarize=_sample_summary, threads=0),
    Stage("audit", "privacy audit of the generated set: nearest training image by cosine and MS-SSIM",
          bundle="cpsample", config="audit",
          inputs={"generated_datalist": "sample.datalist", "training_datalist": "phantom.datalist"},
          params={"threshold": 0.95, "ssim_threshold": 0.85, "rule": "both", "progress": False, "fail_on_leak": False},
          outputs={"summary": "summary.json"}, summarize=_audit_summary),
    Stage("protector", "CPSampling's protecting classifier for the adapted generator", bundle="cpsample",
          config="train_protector", inputs={"generator_checkpoint": "adapt.model", "datalist": "phantom.datalist"},
          params={"protector_path": "{stage}/protector.pt", "channels": [16, 32, 32],
                  "max_iterations": DEMO_PROTECTOR_ITERATIONS, "check_interval": 100, "num_threads": 1,
                  "progress_bar": True},
          outputs={"protector": "protector.pt"}, output_key=None),
    Stage("guarded_sample", "a guarded sample set (CPSampling) from the adapted generator", bundle="busgen_sample",
          config="inference,cpsample:configs/guard_overlay.json",
          inputs={"checkpoint": "adapt.model", "datalist": "phantom.datalist", "box_prior": "adapt.box_prior",
                  "protector_path": "protector.protector"},
          params={"num_images": DEMO_NUM_GUARDED, "num_inference_steps": DEMO_SAMPLE_STEPS, "chunk_size": 16,
                  "cpsample_strength": 30.0, "cpsample_alpha": 0.25},
          outputs={"datalist": "datalist.json", "guard_stats": "guard_stats_rank0.json"},
          summarize=_sample_summary, threads=0),
    Stage("audit_guarded", "privacy audit of the guarded set", bundle="cpsample", config="audit",
          inputs={"generated_datalist": "guarded_sample.datalist", "training_datalist": "phantom.datalist"},
          params={"threshold": 0.95, "ssim_threshold": 0.85, "rule": "both", "progress": False, "fail_on_leak": False},
          outputs={"summary": "summary.json"}, summarize=_audit_summary),
    Stage("judge", "the cleaning filter's judge, trained on the real phantom", bundle="clean", config="train_judge",
          inputs={"datalist": "phantom.datalist"}, params={"seeds": [0], "epochs": 15, "progress": False},
          outputs={"judge": "."}),
    Stage("clean", "remove generated images whose lesion disagrees with their label", bundle="clean", config="clean",
          inputs={"generated": "sample.datalist", "judge": "judge.judge"}, params={"threshold": 0.5},
          outputs={"datalist": "datalist.json", "summary": "summary.json", "rejects_grid": "rejects_grid.png"},
          summarize=_clean_summary),
    Stage("classify_train", "downstream classifier trained on the cleaned generated set", bundle="bus_classifier",
          config="train,preset_cpu_tiny",
          inputs={"datalists": ["phantom.datalist"], "train_datalists": ["clean.datalist"]},
          params={"max_epochs": 8}, outputs={"model": "models/model.pt", "args": "models/training_args.json"}),
    Stage("classify", "the classifier evaluated on the phantom's real test split: clinical report (every training "
          "argument read back from the training run's args file)", bundle="bus_classifier", config="train,evaluate",
          inputs={"args_file": "classify_train.args", "model_path": "classify_train.model"},
          params={"n_bootstrap": 1000},
          outputs={"report": "eval/report.json", "html": "eval/report.html"}, summarize=_classify_summary),
    Stage("normals", "lesion-free phantom images for the detector (its false positives on normal tissue)",
          run=_normals, outputs={"datalist": "dataset/datalist.json"}),
    Stage("detect_train", "lesion detector (RetinaNet) trained on the cleaned generated set, its conditioning boxes as "
          "labels, plus lesion-free images", bundle="bus_detector", config="train,preset_cpu_tiny",
          inputs={"datalists": ["phantom.datalist", "normals.datalist"],
                  "train_datalists": ["clean.datalist", "normals.datalist"]},
          params={"max_epochs": 10}, outputs={"model": "models/model_final.pt"}),
    Stage("detect", "the detector on the phantom's real test split: AP@0.5, AP_small, FROC, false positives on normals",
          bundle="bus_detector", config="train,evaluate,preset_cpu_tiny",
          inputs={"model_path": "detect_train.model", "datalists": ["phantom.datalist", "normals.datalist"]},
          params={"n_bootstrap": 1000}, outputs={"report": "eval/report.json", "html": "eval/report.html"},
          summarize=_detect_summary),
    Stage("nyu_train", "NYU-style breast-level model (saliency, top-t % pooling, gated attention) on breast labels",
          bundle="nyu_breast", config="train,preset_cpu_tiny", inputs={"datalists": ["phantom.datalist"]},
          params={"group_by": "patient", "max_epochs": 10}, outputs={"model": "models/model.pt"}),
    Stage("nyu", "breast-level report, localisation against the lesion masks, hybrid reader model",
          bundle="nyu_breast", config="train,evaluate,preset_cpu_tiny",
          inputs={"model_path": "nyu_train.model", "datalists": ["phantom.datalist"]},
          params={"group_by": "patient", "n_bootstrap": 1000},
          outputs={"report": "eval/report.json", "html": "eval/report.html"}, summarize=_nyu_summary),
    Stage("latent_ae", "second generator family (CoLDiT-style): MONAI AutoencoderKL on the phantom, reconstruction "
          "report", bundle="busgen_autoencoder", config="train,preset_cpu_tiny", inputs={"datalist": "phantom.datalist"},
          params={"num_workers": 0, "progress_bar": False},
          outputs={"models": "models", "report": "reconstruction.json", "grid": "reconstruction.png"}),
    Stage("latent", "latent diffusion transformer (adaLN-Zero DiT, BI-RADS/pathology/device classes) on the "
          "autoencoder's latents, through MONAI's LatentDiffusionInferer", bundle="busgen_latent",
          config="train,preset_cpu_tiny", inputs={"datalist": "phantom.datalist", "autoencoder_checkpoint": "latent_ae.models"},
          params={"num_workers": 0, "progress_bar": False}, outputs={"model": "model.pt"}),
    Stage("latent_protector", "CPSampling's protecting classifier for the latent generator, trained on its latents "
          "(train_protector notices the latent checkpoint)", bundle="cpsample", config="train_protector",
          inputs={"generator_checkpoint": "latent.model", "datalist": "phantom.datalist"},
          params={"protector_path": "{stage}/protector.pt", "channels": [16, 32, 32],
                  "max_iterations": DEMO_PROTECTOR_ITERATIONS, "check_interval": 100, "num_threads": 1,
                  "progress_bar": True},
          outputs={"protector": "protector.pt"}, output_key=None),
    Stage("latent_sample", "a BI-RADS-balanced, CPSampling-guarded set from the latent generator (the sample bundle, "
          "latent overlay + cpsample's guard overlay)", bundle="busgen_sample",
          config="inference,latent,cpsample:configs/guard_overlay.json",
          inputs={"checkpoint": "latent.model", "datalist": "phantom.datalist",
                  "protector_path": "latent_protector.protector"},
          params={"num_images": 16, "num_inference_steps": 10, "birads": ["2", "3", "4a", "5"], "progress": False,
                  "cpsample_strength": 30.0, "cpsample_alpha": 0.25},
          outputs={"datalist": "datalist.json", "grid": "sample_grid.png", "guard_stats": "guard_stats_rank0.json"},
          summarize=_sample_summary, threads=0),
    Stage("latent_audit", "privacy audit of the latent set (decoded images vs the training images)", bundle="cpsample",
          config="audit", inputs={"generated_datalist": "latent_sample.datalist", "training_datalist": "phantom.datalist"},
          params={"threshold": 0.95, "ssim_threshold": 0.85, "rule": "both", "progress": False, "fail_on_leak": False},
          outputs={"summary": "summary.json"}, summarize=_audit_summary),
    Stage("deploy", "MONAI Deploy app on the phantom PACS export: DICOM SR + saliency Secondary Capture per study",
          run=_deploy, inputs={"pacs_export": "phantom.pacs_export", "model": "classify_train.model"},
          outputs={"results": "out", "report": "out/run_report.json"}),
    Stage("reader_study", "a visual Turing test (real vs generated), built for readers (served with "
          "`busgen reader-study serve`)", run=_reader_study,
          inputs={"real": "phantom.datalist", "generated": "clean.datalist"},
          outputs={"study": "study/study.json", "codes": "study/reader_codes.csv"}),
]

#: outputs no later stage reads: what the main job is for (reports, models, bundles, pictures)
FINAL = {"phantom.pacs_export", "ingest.rejects", "ingest.report", "datalist.summary", "datalist.grid", "pretrain.models",
         "pretrain.samples", "adapt.peft_adapter", "adapt.samples", "package.zip", "package.hub", "package.pulled",
         "sample.grid", "audit.summary", "guarded_sample.guard_stats", "audit_guarded.summary", "clean.summary",
         "clean.rejects_grid", "classify.report", "classify.html", "nyu.report", "nyu.html", "deploy.results",
         "deploy.report", "reader_study.study", "reader_study.codes", "detect.report", "detect.html",
         "latent_ae.report", "latent_ae.grid", "latent_sample.grid", "latent_sample.guard_stats", "latent_audit.summary"}


def stage_graph(stages: list[Stage] = STAGES) -> dict[str, set[str]]:
    """``"stage.output"`` -> the stages that read it (for checks and docs/architecture.md)."""
    readers: dict[str, set[str]] = {f"{s.name}.{o}": set() for s in stages for o in s.outputs}
    for s in stages:
        for ref in s.inputs.values():
            for r in ref if isinstance(ref, list) else [ref]:
                readers.setdefault(r, set()).add(s.name)
    return readers


# ---------------------------------------------------------------------------------------------- the runner
def _config_arg(config: str) -> str:
    """``a,b,plugin_bundle:configs/x.json`` -> the comma list run_bundle takes (other bundles' files as paths)."""
    from .bundle_run import resolve_bundle

    parts = []
    for part in config.split(","):
        bundle, sep, rel = part.partition(":")
        parts.append(str(resolve_bundle(bundle) / rel) if sep else part)
    return ",".join(parts)


def _format(value: Any, stage_dir: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{stage}", str(stage_dir))
    if isinstance(value, list):
        return [_format(v, stage_dir) for v in value]
    return value


def _run_stage(stage: Stage, ctx: DemoContext) -> dict:
    import torch

    from .bundle_run import run_bundle

    d = ctx.stage_dir(stage.name)
    inputs = {k: ctx.resolve(v) for k, v in stage.inputs.items()}
    threads = torch.get_num_threads()
    if stage.threads:
        torch.set_num_threads(stage.threads)
    try:
        if stage.run is not None:
            summary = dict(stage.run(d, **inputs) or {})
        else:
            params = stage.params(inputs) if callable(stage.params) else stage.params
            overrides = {**{k: _format(v, d) for k, v in params.items()}, **inputs}
            if stage.output_key:
                overrides[stage.output_key] = str(d)
            run_bundle(stage.bundle, _config_arg(stage.config), **overrides)
            summary = {}
    finally:
        torch.set_num_threads(threads)
    outputs = {name: str((d / rel).resolve()) for name, rel in stage.outputs.items()}
    missing = [f"{name} ({path})" for name, path in outputs.items() if not Path(path).exists()]
    if missing:
        raise RuntimeError(f"main job: stage {stage.name!r} finished without its declared outputs {missing}")
    ctx.outputs[stage.name] = outputs
    if stage.summarize is not None:
        summary.update(stage.summarize(outputs))
    return summary


def run_demo(out: str | Path = "runs/demo", force: bool = False, until: str | None = None) -> dict:
    """Run the main job (all stages, or the stages up to and including ``until``).

    Returns the summary also written to ``OUT/summary.json``: per stage its outputs, summary and seconds."""
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
            record = json.loads(done.read_text())
            if set(record.get("outputs", {})) == set(stage.outputs) and all(
                    Path(p).exists() for p in record["outputs"].values()):
                ctx.outputs[stage.name], ctx.results[stage.name] = record["outputs"], record["result"]
                timings[stage.name] = "done earlier (skipped)"
                print(f"[busgen demo] {stage.name}: already done, skipped ({done})")
                continue
        print(f"[busgen demo] {stage.name}: {stage.description} ...", flush=True)
        t0 = time.perf_counter()
        result = _run_stage(stage, ctx)
        dt = time.perf_counter() - t0
        ctx.results[stage.name] = result
        timings[stage.name] = round(dt, 2)
        atomic_write_text(done, json.dumps({"outputs": ctx.outputs[stage.name], "result": result,
                                            "seconds": round(dt, 2)}, indent=2, default=str))
        print(f"[busgen demo] {stage.name}: done in {dt:.1f} s", flush=True)
    summary = {"out": str(ctx.out), "seconds": timings, "total_seconds": round(time.perf_counter() - t_all, 2),
               "outputs": ctx.outputs, "results": ctx.results}
    atomic_write_text(ctx.out / "summary.json", json.dumps(summary, indent=2, default=str))
    print(f"[busgen demo] finished in {summary['total_seconds']:.1f} s; summary: {ctx.out / 'summary.json'}")
    return summary
