"""busgen-classify: the downstream lesion-classifier bundle (BUS-DM) of busgen-monai, shipped as a plugin.

Modules (imported on demand; this package's ``__init__`` stays free of heavy imports):

* :mod:`.data` - datalist(s) -> classifier items (label from any datalist key), class-balanced weights.
* :mod:`.transforms` - image loading (PNG/JPEG/NIfTI through busgen-monai's reader) and lesion-box crop.
* :mod:`.networks` - MONAI backbones (ResNet for CPU, ViT for paper scale) behind one builder.
* :mod:`.engine` - small helpers the bundle configs call (checkpoints, output transforms).
* :mod:`.handlers` - an ignite handler collecting predictions and penultimate features.
* :mod:`.gradcam` - Grad-CAM saliency maps (``monai.visualize.GradCAM``) and overlay grids.
* :mod:`.evaluate` - the clinical report (AUROC/AUPRC/operating points, patient bootstrap CIs, DeLong,
  ROC/PR/t-SNE plots, Grad-CAM) written with :func:`busgen_monai.evaluation.write_report`.
* :mod:`.workflow` - run the bundle in-process (train / evaluate) from Python.
* :mod:`.scaling` - AUC and test loss against the number of training images, real vs generated.
* :mod:`.export` - TorchScript export through ``monai.bundle ckpt_export`` with an equivalence check.
"""

__version__ = "0.1.0"

_SUBMODULES = ("data", "transforms", "networks", "engine", "handlers", "gradcam", "evaluate", "workflow", "scaling",
               "export", "plugin")


def __getattr__(name: str):
    """Import submodules on first attribute access, so bundle configs can ``$import busgen_classify`` and call
    ``busgen_classify.data.load_items(...)`` while ``import busgen_classify`` itself stays light."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
