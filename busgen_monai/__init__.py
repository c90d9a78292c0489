"""busgen-monai: BUSGen (a foundation generative model for breast ultrasound) as a plugin-based MONAI toolkit."""

__version__ = "0.1.0"


def _raise_stack_soft_limit(wanted: int = 32 * 1024 * 1024) -> None:
    """When the MONAI Deploy App SDK is installed next to MONAI, ``import monai`` also imports it (MONAI loads every
    sub-module of its namespace, ``monai.deploy`` included), and its Holoscan core prints a warning on every import
    when the stack's soft limit is below 32 MiB. Raising the soft limit (never above the hard limit) is what that
    warning asks for and silences it for every ``busgen`` command; nothing else depends on it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_STACK, (new, hard))
    except (ImportError, ValueError, OSError):  # no resource module (Windows) or not allowed: keep the default
        pass


_raise_stack_soft_limit()
