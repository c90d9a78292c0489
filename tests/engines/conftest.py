"""Engine tests train small networks on CPU: one intra-op thread is much faster than two when the cores are
shared with other jobs (OpenMP threads spin while waiting for each other)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_torch_thread(request):
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
