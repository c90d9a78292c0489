"""Build hook: the core bundles (the repository's top-level ``bundles/`` folder, where the owner asked for them)
are shipped inside the wheel as package data at ``busgen_monai/_bundles/``, so a non-editable install has them.

Everything else about the package is declared in setup.cfg. An editable install (``pip install -e .``) reads the
bundles from the source tree instead (:func:`busgen_monai.plugins.builtin_bundles` looks in both places).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# what a bundle folder ships: configs, docs, licence, the model files and their priors; never run outputs
SHIPPED = ("configs", "docs", "models", "LICENSE")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "eval*", "runs")


class BuildPyWithBundles(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "busgen_monai" / "_bundles"
        shutil.rmtree(target, ignore_errors=True)
        for bundle in sorted((HERE / "bundles").iterdir()):
            if not (bundle / "configs").is_dir():
                continue
            for part in SHIPPED:
                src = bundle / part
                if src.is_dir():
                    shutil.copytree(src, target / bundle.name / part, ignore=SKIP)
                elif src.is_file():
                    (target / bundle.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / bundle.name / part)


setup(cmdclass={"build_py": BuildPyWithBundles})
