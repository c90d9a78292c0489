"""busgen-detect: downstream lesion detector bundle (BUS-DM detection) on ``monai.apps.detection``.

Modules: :mod:`.networks` (2-D RetinaNet, MONAI ResNet + FPN), :mod:`.data` (datalist -> detector items),
:mod:`.transforms` (normalised <-> pixel boxes), :mod:`.engine` (MONAI/ignite iteration functions, AP metric,
collector), :mod:`.metrics` (AP, AP_small, FROC, patient bootstrap), :mod:`.report` (report and plots),
:mod:`.workflow` (run the bundle from Python), :mod:`.phantom` (lesion-free phantom test set).
Importing the package imports nothing heavy.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
