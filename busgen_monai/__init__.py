"""busgen-monai: BUSGen (a foundation generative model for breast ultrasound) as a plugin-based MONAI toolkit."""

__version__ = "0.1.0"
