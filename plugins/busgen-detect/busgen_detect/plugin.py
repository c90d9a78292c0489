"""The plugin object registered under the ``busgen_monai.plugins`` entry-point group.

Kept free of heavy imports: loading the plugin imports only this module (no torch, no MONAI).
"""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="detect",
    version=__version__,
    description="Downstream lesion detector (BUS-DM detection): 2-D RetinaNet on monai.apps.detection, AP@0.5 / "
                "AP_small / FROC report with patient-bootstrap CIs",
    components={
        "build_detector": "busgen_detect.networks.build_detector",
        "load_items": "busgen_detect.data.load_items",
        "boxes_to_pixels": "busgen_detect.transforms.NormalisedBoxesToPixelsd",
        "detection_ap": "busgen_detect.engine.DetectionAP",
        "collector": "busgen_detect.engine.DetectionCollector",
        "summary": "busgen_detect.metrics.detection_summary",
        "report": "busgen_detect.report.write_detection_report",
        "compare": "busgen_detect.report.compare_detectors",
        "train": "busgen_detect.workflow.train",
        "evaluate": "busgen_detect.workflow.evaluate",
        "infer": "busgen_detect.workflow.infer",
        "phantom_stage": "busgen_detect.workflow.phantom_stage",
    },
    bundles={"bus_detector": "bundles/bus_detector"},
)
