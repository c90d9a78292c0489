"""busgen-readerstudy: a reader study (visual Turing test and label agreement) for generated images.

Modules (imported on demand; this ``__init__`` stays light):

* :mod:`.build` - de-identified, balanced, seeded study folder from a real and a generated datalist.
* :mod:`.store` - the SQLite answers database (WAL, one transaction per answer, one answer per reader and image).
* :mod:`.app` - the Flask web app (reader page, coordinator page, JSON API), served by waitress.
* :mod:`.stats` - Clopper-Pearson interval, exact binomial test, Cohen's and Fleiss' kappa.
* :mod:`.analyse` - per-reader and pooled statistics, plots and the HTML report.
* :mod:`.command` - ``busgen reader-study build|serve|analyse``.
"""

__version__ = "0.1.0"
