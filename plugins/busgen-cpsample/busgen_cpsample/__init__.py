"""busgen-cpsample: privacy for BUSGen-style generation (CPSampling guard, privacy audit, membership inference).

CPSample (Kazdan et al., ICLR 2025) gives every training image a fixed random binary label, trains a small
time-conditioned classifier on noised images until it memorises those labels, and at sampling time pushes the
trajectory away from points where the classifier is confident (i.e. near memorised training images). The diffusion
model itself is not retrained.

Modules (imported on demand; importing this package imports nothing heavy):

- :mod:`.protector`   the protecting classifier (MONAI ``DiffusionModelEncoder``), random labels, prepare-batch,
  memorisation check/early stop, training, save/load of the protector file
- :mod:`.guard`       :class:`~.guard.CPSamplingGuard`, a :class:`busgen_monai.plugins.SamplingGuard`
- :mod:`.features`    fixed random-convolution + raw-pixel features for the audit
- :mod:`.neighbours`  chunked exact top-k cosine search
- :mod:`.audit`       ``busgen audit-privacy``: nearest training image by cosine and MS-SSIM, plots, summary
- :mod:`.membership`  loss-threshold and generated-data proximity membership-inference attacks
- :mod:`.quality`     cheap quality proxies (intensity, high-frequency energy, distance to held-out real images)
- :mod:`.memorise`    a deliberately over-trained tiny generator (the privacy stress test used by tests/benchmarks)
- :mod:`.train`       ``busgen train-protector``
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
