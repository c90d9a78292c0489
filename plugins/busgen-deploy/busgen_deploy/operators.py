"""MONAI Deploy App SDK operators of the app: read a DICOM folder by study, classify + explain, write SR + SC.

The graph (``busgen_deploy.app.BusgenDeployApp``)::

    UltrasoundStudyReaderOperator --studies--> BusClassifierInferenceOperator --results--> DicomResultWriterOperator

Studies travel as one list per run (in memory), each entry either a read study or a failure; a study that
fails at any stage becomes a failure entry that the writer records in ``errors.json`` and never writes
results for; other studies go on.

Why not the SDK's ``MonaiBundleInferenceOperator``: it runs one ``Image`` per call through the bundle's
preprocessing and a TorchScript network, which suits segmentation volumes. Here one study is a set of
cine frames scored together (then aggregated), and the saliency map needs Grad-CAM hooks that TorchScript
modules do not support. :class:`BusClassifierInferenceOperator` therefore subclasses the SDK's
``InferenceOperator`` and reuses the same building blocks as the bundle operator: the bundle's configs
parsed with ``monai.bundle.ConfigParser``, the bundle's ``preprocessing`` with its loaders filtered out by
the SDK's ``filter_compose`` and the bundle's ``postprocessing`` (see :mod:`busgen_deploy.model`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.operators.inference_operator import InferenceOperator

from busgen_monai.utils.io import atomic_write_json

from .model import BundleClassifier, ModelConfig
from .results import record_error, saliency_image, score_study, write_outputs
from .study import StudyError, find_studies, read_study, study_label

__all__ = ["StudyFailure", "UltrasoundStudyReaderOperator", "BusClassifierInferenceOperator",
           "DicomResultWriterOperator"]

logger = logging.getLogger("busgen_deploy")


@dataclass
class StudyFailure:
    """A study that produced nothing: ``code`` (``no_ultrasound``, ``no_readable_instance``, ``inference_error``,
    ``write_error``) and a message naming the study by its label."""

    label: str
    code: str
    message: str


class UltrasoundStudyReaderOperator(Operator):
    """Source operator: every study under ``input_folder`` -> ``studies`` (list of ``StudyInput`` / ``StudyFailure``).

    Args:
        fragment: the application.
        input_folder: folder of DICOM files (any layout, any file names).
        max_frames: frames read per instance (spread over a cine).
    """

    def __init__(self, fragment: Fragment, *args, input_folder: str | Path, max_frames: int = 8, **kwargs):
        self.input_folder = Path(input_folder)
        self.max_frames = int(max_frames)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("studies")

    def compute(self, op_input, op_output, context):
        studies, unreadable = find_studies(self.input_folder)
        out: list = []
        if unreadable:
            logger.warning("%d DICOM file(s) with an unreadable header or no StudyInstanceUID were ignored: %s",
                           len(unreadable), ", ".join(sorted({u["reason"] for u in unreadable})))
        if not studies:
            out.append(StudyFailure("ST-none", "no_study", f"no DICOM study found under {self.input_folder}"))
        for uid, members in studies.items():
            try:
                study = read_study(uid, members, root=self.input_folder, max_frames=self.max_frames)
            except StudyError as err:
                logger.error("%s", err)
                out.append(StudyFailure(study_label(uid), err.code, str(err)))
                continue
            except Exception as err:  # noqa: BLE001 - never crash the pipeline on one study
                out.append(StudyFailure(study_label(uid), "read_error",
                                        f"study {study_label(uid)}: unexpected {type(err).__name__} while reading"))
                continue
            for r in study.rejected:
                logger.warning("study %s: instance %s rejected (%s): %s", study.label, r["file"], r["reason"],
                               r["detail"])
            out.append(study)
        op_output.emit(out, "studies")


class BusClassifierInferenceOperator(InferenceOperator):
    """Scores every frame of every study with the classifier bundle and computes the key frame's Grad-CAM overlay.

    Input ``studies``; output ``results``: list of ``(StudyInput, StudyResult, overlay RGB array)`` or
    ``StudyFailure``.

    Args:
        fragment: the application.
        model_config: :class:`~busgen_deploy.model.ModelConfig` (bundle, configs, weights, operating point).
        classifier: an already built :class:`~busgen_deploy.model.BundleClassifier` (overrides ``model_config``).
        detector_config, detector: optional lesion detector (:mod:`busgen_deploy.detector`): boxes of each
            instance's highest-scoring frame, written into the SR as spatial coordinates.
    """

    def __init__(self, fragment: Fragment, *args, model_config: ModelConfig | None = None,
                 classifier: BundleClassifier | None = None, detector_config=None, detector=None, **kwargs):
        self.model_config = model_config or ModelConfig()
        self._classifier = classifier
        self.detector_config = detector_config
        self._detector = detector
        super().__init__(fragment, *args, **kwargs)

    @property
    def detector(self):
        """The optional lesion detector (``None`` unless a detector config or instance was given)."""
        if self._detector is None and self.detector_config is not None:
            from .detector import BundleDetector

            self._detector = BundleDetector(self.detector_config)
        return self._detector

    @property
    def classifier(self) -> BundleClassifier:
        if self._classifier is None:
            self._classifier = BundleClassifier(self.model_config)
        return self._classifier

    def setup(self, spec: OperatorSpec):
        spec.input("studies")
        spec.output("results")

    # the SDK's InferenceOperator interface
    def pre_process(self, data, *args, **kwargs):
        return [f for inst in data.instances for f in inst.frames]

    def predict(self, data, *args, **kwargs):
        return self.classifier.predict(data)

    def post_process(self, data, *args, **kwargs):
        return data

    def compute(self, op_input, op_output, context):
        studies = op_input.receive("studies")
        out: list = []
        for study in studies:
            if isinstance(study, StudyFailure):
                out.append(study)
                continue
            try:
                t0 = time.perf_counter()
                result = score_study(study, self.classifier, self.detector)
                overlay = saliency_image(study, result, self.classifier)
                logger.info("study %s: score %.3f (%s) from %d instance(s) in %.2f s", study.label, result.score,
                            result.decision, len(result.instances), time.perf_counter() - t0)
                out.append((study, result, overlay))
            except Exception as err:  # noqa: BLE001 - one study never crashes the pipeline
                logger.exception("study %s: inference failed", study.label)
                out.append(StudyFailure(study.label, "inference_error",
                                        f"study {study.label}: inference failed ({type(err).__name__}: "
                                        f"{str(err)[:200]})"))
        op_output.emit(out, "results")


class DicomResultWriterOperator(Operator):
    """Sink: writes ``OUT/<study>/{sr.dcm, sc.dcm, result.json}`` per study (atomically), ``OUT/errors.json`` for
    studies that produced nothing, and ``OUT/run_report.json``.

    After the run, :attr:`report` holds the run report (studies written, failures)."""

    def __init__(self, fragment: Fragment, *args, output_folder: str | Path, app_version: str = "0", **kwargs):
        self.output_folder = Path(output_folder)
        self.app_version = app_version
        self.report: dict = {}
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("results")

    def compute(self, op_input, op_output, context):
        results = op_input.receive("results")
        self.output_folder.mkdir(parents=True, exist_ok=True)
        written, failed = [], []
        for item in results:
            if isinstance(item, StudyFailure):
                record_error(self.output_folder, item.label, item.code, item.message)
                failed.append({"study": item.label, "code": item.code, "message": item.message})
                continue
            study, result, overlay = item
            try:
                summary = write_outputs(self.output_folder, study, result, overlay, app_version=self.app_version)
                written.append({"study": study.label, "score": summary["score"], "decision": summary["decision"]})
            except Exception as err:  # noqa: BLE001
                logger.exception("study %s: writing the results failed", study.label)
                msg = f"study {study.label}: the SR/SC could not be written ({type(err).__name__}: {str(err)[:200]})"
                record_error(self.output_folder, study.label, "write_error", msg)
                failed.append({"study": study.label, "code": "write_error", "message": msg})
        self.report = {"written": written, "failed": failed}
        atomic_write_json(self.output_folder / "run_report.json", self.report)
