"""End of a torchrun (DDP) run, shared by every ``multi_gpu_*.json`` overlay's ``finalize``."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["end_process_group"]


def end_process_group() -> None:
    """Wait for every rank, destroy the default process group, and end the non-zero ranks at once.

    A no-op outside ``torch.distributed``. Overlays call it last in ``finalize`` as a component
    (``{"_target_": "busgen_monai.engines.end_process_group"}``), after rank 0 has written its summary.

    Why the non-zero ranks leave with ``os._exit(0)``: on CPU (gloo) a rank that finished its work correctly was seen
    to abort at interpreter teardown ("terminate called without an active exception", SIGABRT; once in about six
    two-rank runs here), even after a barrier and ``destroy_process_group``: the DDP wrapper the bundle config still
    holds keeps gloo's worker state alive until Python's teardown. torchrun then reports the whole job as failed.
    Those ranks hold no open output (logging, TensorBoard and checkpoints are rank-0 only in the overlays), so after
    flushing stdout, stderr and logging they exit directly; rank 0 returns normally.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    if rank > 0:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
