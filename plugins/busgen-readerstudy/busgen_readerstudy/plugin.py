"""The plugin object registered under the ``busgen_monai.plugins`` entry-point group (no heavy imports here)."""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="readerstudy",
    version=__version__,
    description="Reader study web app: visual Turing test (real vs generated) and label agreement, with analysis",
    components={
        "build_study": "busgen_readerstudy.build.build_study",
        "create_app": "busgen_readerstudy.app.create_app",
        "serve": "busgen_readerstudy.app.serve",
        "analyse_study": "busgen_readerstudy.analyse.analyse_study",
    },
    commands={"reader-study": "busgen_readerstudy.command.main"},
)
