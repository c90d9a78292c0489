"""The plugin object registered under the ``busgen_monai.plugins`` entry-point group.

Kept free of heavy imports: loading the plugin imports only this module (no torch, no MONAI).
"""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="classify",
    version=__version__,
    description="Downstream lesion classifier (BUS-DM): train/evaluate/infer bundle, clinical report, scaling curves",
    components={
        "build_classifier": "busgen_classify.networks.build_classifier",
        "load_items": "busgen_classify.data.load_items",
        "load_image": "busgen_classify.transforms.LoadImageRGBd",
        "lesion_crop": "busgen_classify.transforms.LesionCropd",
        "prediction_collector": "busgen_classify.handlers.PredictionCollector",
        "pretrained_loader": "busgen_classify.handlers.PretrainedCheckpointLoader",
        "clinical_report": "busgen_classify.evaluate.write_clinical_report",
        "gradcam": "busgen_classify.gradcam.save_gradcam_grid",
        "train": "busgen_classify.workflow.train",
        "evaluate": "busgen_classify.workflow.evaluate",
        "scaling": "busgen_classify.scaling.run_scaling",
        "export": "busgen_classify.export.export_torchscript",
    },
    bundles={"bus_classifier": "bundles/bus_classifier"},
    commands={
        "classify-scaling": "busgen_classify.scaling.main",
        "classify-export": "busgen_classify.export.main",
    },
)
