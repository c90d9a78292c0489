"""The plugin object registered under the ``busgen_monai.plugins`` entry-point group.

Kept free of heavy imports: loading the plugin imports only this module (no torch, no MONAI).
"""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="nyu",
    version=__version__,
    description="NYU-style breast-level weakly supervised classifier (saliency maps, top-t % pooling, gated "
                "attention), localisation scores and the hybrid reader model",
    components={
        "build_nyu_net": "busgen_nyu.networks.build_nyu_net",
        "top_t_pooling": "busgen_nyu.networks.TopTPooling",
        "gated_attention": "busgen_nyu.networks.GatedAttention",
        "load_breasts": "busgen_nyu.data.load_breasts",
        "load_breast": "busgen_nyu.data.LoadBreastd",
        "collate_breasts": "busgen_nyu.data.collate_breasts",
        "loss": "busgen_nyu.engine.NYULoss",
        "collector": "busgen_nyu.engine.BreastCollector",
        "ensemble": "busgen_nyu.engine.load_ensemble",
        "report": "busgen_nyu.evaluate.write_nyu_report",
        "outputs": "busgen_nyu.evaluate.write_outputs",
        "train": "busgen_nyu.workflow.train",
        "evaluate": "busgen_nyu.workflow.evaluate",
        "infer": "busgen_nyu.workflow.infer",
        "random_search": "busgen_nyu.search.random_search",
    },
    bundles={"nyu_breast": "bundles/nyu_breast"},
)
