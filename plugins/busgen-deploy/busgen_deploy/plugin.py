"""The plugin object registered under the ``busgen_monai.plugins`` entry-point group.

Kept free of heavy imports: loading the plugin imports only this module (no torch, MONAI or Holoscan).
"""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="deploy",
    version=__version__,
    description="MONAI Deploy app: ultrasound DICOM in, TID 1500 SR + saliency Secondary Capture out; PACS "
                "round trip (DICOMweb) and PACS ingestion",
    components={
        "app": "busgen_deploy.app.BusgenDeployApp",
        "reader_operator": "busgen_deploy.operators.UltrasoundStudyReaderOperator",
        "inference_operator": "busgen_deploy.operators.BusClassifierInferenceOperator",
        "writer_operator": "busgen_deploy.operators.DicomResultWriterOperator",
        "classifier": "busgen_deploy.model.BundleClassifier",
        "detector": "busgen_deploy.detector.BundleDetector",
        "dicomweb_client": "busgen_deploy.pacs.DicomWebClient",
        "pacs_ingest": "busgen_deploy.pacs_ingest.pacs_ingest",
    },
    commands={
        "deploy-run": "busgen_deploy.app.main",
        "deploy-pacs": "busgen_deploy.pacs.main",
        "pacs-ingest": "busgen_deploy.pacs_ingest.main",
    },
)
