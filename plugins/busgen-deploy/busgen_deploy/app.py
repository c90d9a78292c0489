"""The MONAI Deploy application: breast-ultrasound DICOM in, DICOM SR + saliency Secondary Capture out.

Run on a folder (what a MONAI Application Package does with its input/output mounts)::

    busgen deploy-run -i DICOM_FOLDER -o OUT -m runs/bus_classifier/models/model.pt \\
        --configs inference,preset_cpu_tiny [--threshold 0.5]
    python -m busgen_deploy -i ... -o ... -m ...          # the same, as the MAP's entry point

Inputs and outputs follow the SDK's conventions: ``-i/-o/-m`` or ``HOLOSCAN_INPUT_PATH``,
``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH``. The model path is the classifier checkpoint
(``model.pt``), or a bundle folder (``configs/`` + ``models/model.pt``), optionally holding a
``deploy.json`` with the :class:`~busgen_deploy.model.ModelConfig` fields (configs, threshold,
overrides...), which is how a MAP ships its model and operating point together.

Exit status: 0 when every study got its SR and SC, 2 when at least one study produced nothing (listed
with its DICOM-level reason in ``OUT/errors.json``), 1 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application

from . import __version__
from .model import BundleClassifier, ModelConfig
from .operators import BusClassifierInferenceOperator, DicomResultWriterOperator, UltrasoundStudyReaderOperator

__all__ = ["BusgenDeployApp", "model_config_from_path", "run_app", "main"]


class BusgenDeployApp(Application):
    """reader -> classifier -> SR/SC writer (see :mod:`busgen_deploy.operators`).

    Args:
        input_folder, output_folder: DICOM in, results out.
        model_config: the classifier and its operating point.
        classifier: an already loaded classifier (skips loading; used by benchmarks and long-running services).
        max_frames: frames scored per instance.
        detector_config, detector: optional lesion detector (:class:`~busgen_deploy.detector.DetectorConfig` or a
            loaded :class:`~busgen_deploy.detector.BundleDetector`): boxes as SR spatial coordinates.
    """

    name = "busgen-deploy"
    description = "Breast-ultrasound lesion malignancy score: DICOM in, TID 1500 SR + saliency SC out"
    version = __version__

    def __init__(self, *args, input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                 model_config: ModelConfig | None = None, classifier: BundleClassifier | None = None,
                 max_frames: int = 8, detector_config=None, detector=None, **kwargs):
        self.detector_config = detector_config
        self.detector = detector
        self.input_folder = Path(input_folder)
        self.output_folder = Path(output_folder)
        self.model_config = model_config or ModelConfig()
        self.classifier = classifier
        self.max_frames = int(max_frames)
        self.writer: DicomResultWriterOperator | None = None
        super().__init__(*args, **kwargs)

    def compose(self):
        reader = UltrasoundStudyReaderOperator(self, CountCondition(self, 1), input_folder=self.input_folder,
                                               max_frames=self.max_frames, name="us_study_reader")
        infer = BusClassifierInferenceOperator(self, model_config=self.model_config, classifier=self.classifier,
                                               detector_config=self.detector_config, detector=self.detector,
                                               name="bus_classifier_inference")
        self.writer = DicomResultWriterOperator(self, output_folder=self.output_folder, app_version=__version__,
                                                name="dicom_sr_sc_writer")
        self.add_flow(reader, infer, {("studies", "studies")})
        self.add_flow(infer, self.writer, {("results", "results")})


def model_config_from_path(model: str | os.PathLike | None, **overrides) -> ModelConfig:
    """A :class:`ModelConfig` from a model path (checkpoint file, or bundle folder with optional ``deploy.json``)
    plus explicit ``overrides`` (``None`` values ignored)."""
    fields: dict = {}
    if model:
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model path {path} does not exist (give the classifier's model.pt or a bundle "
                                    "folder with configs/ and models/model.pt)")
        if path.is_dir():
            deploy = path / "deploy.json"
            if deploy.is_file():
                fields.update(json.loads(deploy.read_text()))
            if (path / "configs").is_dir():
                fields.setdefault("bundle", str(path))
            for cand in (path / "models" / "model.pt", path / "model.pt"):
                if cand.is_file():
                    fields.setdefault("model_path", str(cand))
                    break
            if fields.get("model_path") and not os.path.isabs(fields["model_path"]):
                fields["model_path"] = str(path / fields["model_path"])
        else:
            fields["model_path"] = str(path)
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "overrides":
            fields["overrides"] = {**fields.get("overrides", {}), **v}
        else:
            fields[k] = v
    return ModelConfig.from_mapping(fields)


def run_app(input_folder, output_folder, model_config: ModelConfig | None = None, *,
            classifier: BundleClassifier | None = None, max_frames: int = 8, detector_config=None,
            detector=None) -> dict:
    """Run the app once; returns the run report (``{"written": [...], "failed": [...]}``)."""
    app = BusgenDeployApp(input_folder=input_folder, output_folder=output_folder, model_config=model_config,
                          classifier=classifier, max_frames=max_frames, detector_config=detector_config,
                          detector=detector)
    app.run()
    return dict(app.writer.report) if app.writer is not None else {}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="busgen deploy-run",
        description="MONAI Deploy app: score every breast-ultrasound study in a DICOM folder with the lesion "
                    "classifier bundle and write a TID 1500 SR and a saliency Secondary Capture per study.",
        epilog="outputs: OUT/<study label>/{sr.dcm, sc.dcm, result.json}, OUT/errors.json (studies that produced "
               "nothing, with the reason), OUT/run_report.json. Against a PACS: busgen deploy-pacs --help.")
    p.add_argument("-i", "--input", default=os.environ.get("HOLOSCAN_INPUT_PATH"),
                   help="DICOM folder (default $HOLOSCAN_INPUT_PATH)")
    p.add_argument("-o", "--output", default=os.environ.get("HOLOSCAN_OUTPUT_PATH"),
                   help="output folder (default $HOLOSCAN_OUTPUT_PATH)")
    p.add_argument("-m", "--model", default=os.environ.get("HOLOSCAN_MODEL_PATH"),
                   help="classifier checkpoint model.pt, or a bundle folder (configs/, models/model.pt, optional "
                        "deploy.json); default $HOLOSCAN_MODEL_PATH")
    p.add_argument("--bundle", help="classifier bundle name or folder (default bus_classifier)")
    p.add_argument("--configs", help="bundle configs the checkpoint was trained with, e.g. inference,preset_cpu_tiny")
    p.add_argument("--threshold", type=float, help="operating point on the malignancy probability (default 0.5)")
    p.add_argument("--threshold-source", help="where the operating point comes from (written into the SR)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="bundle config override (JSON value), e.g. --set backbone=resnet18")
    p.add_argument("--max-frames", type=int, default=8, help="frames scored per instance (default 8)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--detector-model", help="optional lesion detector checkpoint (bus_detector's models/model.pt): "
                                            "boxes of each instance's key frame go into the SR as spatial coordinates")
    p.add_argument("--detector-configs", default="train",
                   help="bus_detector configs the detector was trained with, e.g. train,preset_cpu_tiny")
    p.add_argument("--detector-threshold", type=float, default=0.3, help="detection score threshold (default 0.3)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``busgen deploy-run``; see :func:`_parser` and the module docstring for the exit status."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if not args.input or not args.output:
        print("error: give -i INPUT and -o OUTPUT (or set HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH)", file=sys.stderr)
        return 1
    overrides = {}
    for pair in args.set:
        key, eq, value = pair.partition("=")
        if not eq:
            print(f"error: --set expects KEY=VALUE, got {pair!r}", file=sys.stderr)
            return 1
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name source UIDs
    try:
        cfg = model_config_from_path(args.model, bundle=args.bundle, configs=args.configs, threshold=args.threshold,
                                     threshold_source=args.threshold_source, device=args.device,
                                     overrides=overrides or None)
        t0 = time.perf_counter()
        classifier = BundleClassifier(cfg)
        detector = None
        if args.detector_model:
            from .detector import BundleDetector, DetectorConfig

            detector = BundleDetector(DetectorConfig(model_path=args.detector_model, configs=args.detector_configs,
                                                     score_threshold=args.detector_threshold))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not Path(args.input).exists():
        print(f"error: input folder {args.input} does not exist", file=sys.stderr)
        return 1
    report = run_app(args.input, args.output, cfg, classifier=classifier, max_frames=args.max_frames,
                     detector=detector)
    for w in report.get("written", []):
        print(f"{w['study']}: score {w['score']:.3f} -> {w['decision']}")
    for f in report.get("failed", []):
        print(f"{f['study']}: FAILED ({f['code']}): {f['message']}", file=sys.stderr)
    print(f"{len(report.get('written', []))} studies written, {len(report.get('failed', []))} failed, to "
          f"{args.output} in {time.perf_counter() - t0:.1f} s")
    return 2 if report.get("failed") else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
