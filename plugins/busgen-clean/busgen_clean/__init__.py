"""busgen-clean: BUSGen's data cleaning for generated breast-ultrasound data sets.

A *judge* (a small ensemble of MONAI ResNets trained on real labelled data) predicts the label of every
generated image; images whose content disagrees with their conditioning label are removed. Optional
checks: out-of-distribution distance in the judge's feature space, lesion visibility inside the
conditioning box, blank/saturated images.

Modules (imported on demand; importing this package imports nothing heavy):

- :mod:`.judge`      :class:`~.judge.Judge`, :func:`~.judge.train_judge` (train / save / load / predict)
- :mod:`.checks`     image checks (blank/saturated, box visibility) and the Mahalanobis OOD score
- :mod:`.threshold`  threshold for a target precision of kept labels, estimated on real validation data
- :mod:`.filter`     :class:`~.filter.CleaningFilter` (a ``busgen_monai.plugins.DatalistFilter``)
- :mod:`.report`     :func:`~.report.clean_datalist` (kept datalist, rejects JSON/CSV, summary, grid)
- :mod:`.cli`        ``busgen clean`` and ``busgen clean-train-judge``
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
