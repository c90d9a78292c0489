"""Entry-point object of the busgen-clean plugin (kept free of heavy imports: no torch, no monai)."""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="clean",
    version=__version__,
    description="cleaning filter: remove generated images whose content disagrees with their label (BUSGen)",
    components={
        "filter": "busgen_clean.filter.CleaningFilter",
        "judge": "busgen_clean.judge.Judge",
        "train_judge": "busgen_clean.judge.train_judge",
        "choose_threshold": "busgen_clean.threshold.choose_threshold",
        "clean_datalist": "busgen_clean.report.clean_datalist",
    },
    bundles={"clean": "bundles/clean"},
    commands={
        "clean": "busgen_clean.cli.main",
        "clean-train-judge": "busgen_clean.cli.train_judge_main",
    },
)
