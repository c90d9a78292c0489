"""busgen-nyu: the NYU-style breast-level weakly supervised classifier (Shen et al., Nat. Commun. 2021) and the
hybrid reader model, shipped as a busgen-monai plugin.

Modules (imported on demand; this package's ``__init__`` stays free of heavy imports):

* :mod:`.networks` - top-t % pooling, gated attention (Ilse et al. 2018), the breast model on a MONAI ResNet.
* :mod:`.data` - datalist(s) -> breast items (patient + laterality, patient or study), breast stacks, collate.
* :mod:`.engine` - batch preparation, loss, metric transforms, output collector, localisation, ensembling.
* :mod:`.evaluate` - outputs (CSV, saliency arrays, overlays) and the report (bootstrap CIs, localisation,
  hybrid reader model with DeLong tests).
* :mod:`.workflow` - run the bundle in-process (train / evaluate / infer) from Python.
* :mod:`.search` - random search over top-t / beta / learning rate and the top-k ensemble.
"""

__version__ = "0.1.0"

_SUBMODULES = ("networks", "data", "engine", "evaluate", "workflow", "search", "plugin")


def __getattr__(name: str):
    """Import submodules on first attribute access (``import busgen_nyu`` itself stays light)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
