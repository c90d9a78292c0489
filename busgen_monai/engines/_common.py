"""Small helpers the engine handler modules share (private)."""

from __future__ import annotations

from ignite.engine import Events
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["unwrap_network", "_event"]


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` / ``AveragedModel`` wrappers."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel, AveragedModel)):
        network = network.module
    return network


def _event(epoch_level: bool, interval: int):
    return (Events.EPOCH_COMPLETED if epoch_level else Events.ITERATION_COMPLETED)(every=max(int(interval), 1))


# ---------------------------------------------------------------------------------------------- gradient clipping
