"""Entry-point object of the busgen-cpsample plugin (kept free of heavy imports: no torch, no monai)."""

from busgen_monai.plugins import Plugin

from . import __version__

__all__ = ["PLUGIN"]

PLUGIN = Plugin(
    name="cpsample",
    version=__version__,
    description="CPSampling privacy guard for generation, protecting classifier, privacy audit, membership inference",
    components={
        "guard": "busgen_cpsample.guard.CPSamplingGuard",
        "classifier": "busgen_cpsample.protector.build_protector_network",
        "protector": "busgen_cpsample.protector.Protector",
        "audit": "busgen_cpsample.audit.run_audit",
        "features": "busgen_cpsample.features.RandomConvPixelFeatures",
        "membership": "busgen_cpsample.membership.loss_attack",
        "quality": "busgen_cpsample.quality.quality_proxies",
    },
    bundles={"cpsample": "bundles/cpsample"},
    commands={
        "audit-privacy": "busgen_cpsample.audit.main",
        "train-protector": "busgen_cpsample.train.main",
        "membership-inference": "busgen_cpsample.membership.main",
    },
)
