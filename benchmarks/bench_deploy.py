"""Benchmark of the busgen-deploy MONAI Deploy app: time per study, start-up time, installed environment size.

- **time per study**: one cine study (a single multi-frame ultrasound instance of ``--frames`` frames, 8 to 30,
  from the phantom PACS-export generator at a scanner-like size, 472 x 616 screen) run through the whole app
  graph (reader + crop -> classifier -> Grad-CAM -> SR + SC written) with the classifier already loaded, as a
  long-running app would; median of ``--repeat`` runs. Two settings: every frame scored
  (``--max-frames`` = the cine length) and the app's default of 8 frames spread over the cine. Also on the
  real 8-frame Doppler cine of ../shared/data/dicom when present.
- **start-up**: a cold ``python -m busgen_deploy -i STUDY -o OUT -m MODEL`` process on one single-frame study
  (what a MAP container does per job), wall clock, and its parts measured in-process: importing the app
  (MONAI Deploy/Holoscan, torch, MONAI, highdicom), loading the classifier bundle, and one graph run.
- **environment size**: the installed size of every distribution the app depends on (the closure of
  ``busgen-deploy``'s requirements in this environment), i.e. what a MAP's Python layer holds.

Two classifiers: the bundle's CPU preset (``preset_cpu_tiny``: 0.3 M-parameter ResNet at 64 px) and the
bundle's default (``resnet18`` at 128 px); their weights are random (timing does not depend on them) and are
written to a temporary folder only.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_deploy.py [--frames 8 16 30] [--repeat 3] \\
        [--json docs/benchmarks/bench_deploy_results.json] [--md docs/benchmarks/bench_deploy_results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BUSGEN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def make_cine_study(dst: Path, n_frames: int, seed: int = 0) -> Path:
    """A folder holding one phantom cine (single instance, ``n_frames`` frames, 400 x 520 image in a 472 x 616 screen)."""
    import pydicom

    from busgen_monai.data.pacs_export import write_pacs_export

    export = write_pacs_export(dst / "export_src", n_patients=1, seed=seed, size=(400, 520), frames=(n_frames, n_frames))
    for p in sorted(export.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            continue
        if ds.get("Modality") == "US" and int(ds.get("NumberOfFrames", 1) or 1) == n_frames:
            study = dst / f"cine{n_frames}"
            study.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, study / "cine.dcm")
            shutil.rmtree(dst / "export_src")
            return study
    raise RuntimeError(f"the phantom export has no {n_frames}-frame cine")


def make_checkpoint(dst: Path, configs: str, bundle_name: str = "bus_classifier") -> Path:
    """Random weights of the bundle's network for ``configs`` (timing only)."""
    import torch
    from monai.bundle import ConfigParser

    from busgen_monai.bundle_run import resolve_bundle, resolve_configs

    bundle = resolve_bundle(bundle_name)
    parser = ConfigParser()
    parser.read_config([str(f) for f in resolve_configs(bundle, configs)])
    net = parser.get_parsed_content("network_def")
    path = dst / (bundle_name + "_" + configs.replace(",", "_").replace("/", "-") + ".pt")
    torch.save({"model": net.state_dict()}, path)
    return path


def dist_closure(name: str) -> dict[str, int]:
    """Installed bytes of ``name`` and every distribution it requires (recursively, extras ignored)."""
    seen: dict[str, int] = {}
    todo = [name]
    while todo:
        n = re.split(r"[\s<>=!~;\[(]", todo.pop(), maxsplit=1)[0].strip()
        key = n.lower().replace("_", "-")
        if not key or key in seen:
            continue
        try:
            dist = metadata.distribution(n)
        except metadata.PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or []:
            try:
                size += (dist.locate_file(f)).stat().st_size
            except OSError:
                pass
        seen[key] = size
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(req)
    return seen


def time_study(study: Path, out: Path, classifier, max_frames: int, repeat: int, detector=None) -> dict:
    from busgen_deploy.app import run_app

    times = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        report = run_app(study, out, classifier.config, classifier=classifier, max_frames=max_frames,
                         detector=detector)
        times.append(time.perf_counter() - t0)
        if len(report.get("written", [])) != 1:
            raise RuntimeError(f"the app did not write the study: {report}")
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "runs": len(times)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 30])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    results: dict = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                                 "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None,
                                 "cores": os.cpu_count(), "load_average_start": round(os.getloadavg()[0], 2)}}
    try:
        # ---------------------------------------------------------------- start-up (cold process)
        single = work / "single"
        single.mkdir()
        t_imp = time.perf_counter()
        import busgen_deploy.app  # noqa: F401 - timed import (MONAI Deploy/Holoscan, torch, MONAI, highdicom)
        import_s = time.perf_counter() - t_imp
        from busgen_deploy.model import BundleClassifier, ModelConfig

        presets = {"cpu_tiny (resnet_tiny, 64 px)": "inference,preset_cpu_tiny",
                   "default (resnet18, 128 px)": "inference"}
        ckpts = {k: make_checkpoint(work, v) for k, v in presets.items()}
        study8 = make_cine_study(work / "s8", 8)
        import pydicom

        ds = pydicom.dcmread(study8 / "cine.dcm")
        one = ds.copy()
        still = single / "still.dcm"
        from pydicom.uid import generate_uid

        arr = ds.pixel_array[0]
        one.NumberOfFrames = 1
        one.PixelData = arr.tobytes()
        one.SOPInstanceUID = one.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        one.SOPClassUID = one.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
        for kw in ("FrameTime", "FrameIncrementPointer", "CineRate"):
            if kw in one:
                delattr(one, kw)
        one.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        one.save_as(still, enforce_file_format=True)

        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        label, configs = next(iter(presets.items()))
        cold = []
        for _ in range(args.repeat):
            shutil.rmtree(work / "cold_out", ignore_errors=True)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "busgen_deploy", "-i", str(single), "-o", str(work / "cold_out"),
                                   "-m", str(ckpts[label]), "--configs", configs], capture_output=True, text=True,
                                  env=env)
            cold.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(f"cold run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        t0 = time.perf_counter()
        clf = BundleClassifier(ModelConfig(configs=configs, model_path=str(ckpts[label])))
        load_s = time.perf_counter() - t0
        first = time_study(single, work / "first_out", clf, 8, 1)
        results["startup"] = {
            "cold_process_one_still_median_s": round(statistics.median(cold), 2),
            "cold_process_runs": len(cold),
            "import_app_s": round(import_s, 2),
            "load_classifier_s": round(load_s, 2),
            "first_graph_run_one_still_s": first["median_s"],
            "classifier": label,
        }
        print(json.dumps(results["startup"]), flush=True)

        # ---------------------------------------------------------------- time per study
        studies = {8: study8}
        for n in args.frames:
            if n not in studies:
                studies[n] = make_cine_study(work / f"s{n}", n)
        rows = []
        for label, configs in presets.items():
            clf = BundleClassifier(ModelConfig(configs=configs, model_path=str(ckpts[label])))
            time_study(studies[8], work / "warm", clf, 8, 1)  # warm-up
            for n in args.frames:
                for mf, setting in ((n, "every frame"), (8, "8 frames (default)")):
                    if setting == "8 frames (default)" and n == 8:
                        continue
                    r = time_study(studies[n], work / "o", clf, mf, args.repeat)
                    rows.append({"classifier": label, "study": f"phantom cine {n} frames (472x616)",
                                 "frames_scored": min(mf, n), "setting": setting, **r})
                    print(json.dumps(rows[-1]), flush=True)
            real = SHARED / "dicom" / "us_doppler_8f_implicit_le_rgb.dcm"
            if real.is_file():
                rs = work / "real8"
                rs.mkdir(exist_ok=True)
                shutil.copy(real, rs / "cine.dcm")
                r = time_study(rs, work / "o", clf, 8, args.repeat)
                rows.append({"classifier": label, "study": "real Doppler cine 8 frames (RGB, ../shared/data/dicom)",
                             "frames_scored": 8, "setting": "every frame", **r})
                print(json.dumps(rows[-1]), flush=True)
        # the optional detector (bus_detector cpu_tiny preset) on top of the default classifier
        from busgen_deploy.detector import BundleDetector, DetectorConfig

        det_ckpt = make_checkpoint(work, "train,preset_cpu_tiny", "bus_detector")
        det = BundleDetector(DetectorConfig(model_path=str(det_ckpt), configs="train,preset_cpu_tiny"))
        for n in args.frames:
            r = time_study(studies[n], work / "o", clf, 8, args.repeat, detector=det)
            rows.append({"classifier": f"{label} + detector (bus_detector cpu_tiny)",
                         "study": f"phantom cine {n} frames (472x616)", "frames_scored": min(8, n),
                         "setting": "8 frames (default)", **r})
            print(json.dumps(rows[-1]), flush=True)
        results["per_study"] = rows

        # ---------------------------------------------------------------- environment size
        closure = dist_closure("busgen-deploy")
        total = sum(closure.values())
        top = sorted(closure.items(), key=lambda kv: -kv[1])[:12]
        base = {**dist_closure("busgen-monai"), **dist_closure("busgen-classify")}
        extra = {k: v for k, v in closure.items() if k not in base}
        results["environment"] = {"distributions": len(closure), "total_mb": round(total / 2**20, 1),
                                  "largest_mb": {k: round(v / 2**20, 1) for k, v in top},
                                  "added_by_deploy_mb": round(sum(extra.values()) / 2**20, 1),
                                  "added_by_deploy": sorted(extra)}
        print(json.dumps(results["environment"]), flush=True)
        results["machine"]["load_average_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(to_markdown(results))
    return 0


def to_markdown(r: dict) -> str:
    s, e, m = r["startup"], r["environment"], r["machine"]
    lines = [
        "# busgen-deploy benchmark (MONAI Deploy app: ultrasound DICOM in, SR + SC out)",
        "",
        f"Measured with `OMP_NUM_THREADS={m['threads']} python benchmarks/bench_deploy.py` on this project's CPU "
        f"machine ({m['cores']} cores shared with other jobs: 1-minute load average {m.get('load_average_start')} at "
        f"the start, {m.get('load_average_end')} at the end, so the times are upper bounds; Python {m['python']}); "
        "medians of repeated runs. Classifier weights "
        "are random (timing only). Per-study time is the whole app graph (read + crop, classifier, Grad-CAM, SR + SC "
        "written atomically) with the classifier already loaded.",
        "",
        "## Time per study",
        "",
        "| classifier | study | frames scored | median s | min s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in r["per_study"]:
        lines.append(f"| {row['classifier']} | {row['study']} | {row['frames_scored']} ({row['setting']}) | "
                     f"{row['median_s']:.2f} | {row['min_s']:.2f} |")
    lines += [
        "",
        "## Start-up",
        "",
        f"- cold process (`python -m busgen_deploy -i STUDY -o OUT -m MODEL`, one single-frame study, "
        f"{s['classifier']}): **{s['cold_process_one_still_median_s']:.1f} s** wall clock "
        f"(median of {s['cold_process_runs']})",
        f"- of which, measured in-process: importing the app (MONAI Deploy App SDK/Holoscan, torch, MONAI, "
        f"highdicom) {s['import_app_s']:.1f} s, loading the classifier bundle {s['load_classifier_s']:.1f} s, first "
        f"graph run on the study {s['first_graph_run_one_still_s']:.2f} s",
        "",
        "## Installed environment",
        "",
        f"The app's Python dependency closure (`busgen-deploy` and everything it requires, as installed here): "
        f"**{e['total_mb']:.0f} MB** in {e['distributions']} distributions, of which "
        f"**{e['added_by_deploy_mb']:.0f} MB** in {len(e['added_by_deploy'])} distributions are added by the app on top "
        f"of busgen-monai + busgen-classify ({', '.join(e['added_by_deploy'])}). Largest:",
        "",
        "| distribution | MB |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v:.0f} |" for k, v in e["largest_mb"].items()]
    lines += [
        "",
        "The MONAI Deploy App SDK 4.0 requires `holoscan-cu13` (with `cupy-cuda13x` and the CUDA Python bindings) "
        "and `tritonclient[all]` even on a CPU-only machine; they make up most of the size. A MAP built from the "
        "SDK's base image adds the OS and CUDA layers on top of this.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
