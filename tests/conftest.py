"""Fixtures shared by the library's tests (the repository-root conftest.py holds the real-data fixtures)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_adapted(tmp_path_factory):
    """A tiny base generator (``base.pt``), LoRA-adapted with a new pathology ``dcis``: the adapt bundle's files in
    ``models/`` (adapter, peft adapter, merged model) and a box prior. Returns ``(folder, saved paths)``; tests
    package into their own sub-folders and leave these files as they are."""
    import torch

    from busgen_monai.adaptation.adapt import AdapterSaver, prepare_adaptation
    from busgen_monai.inferers import BoxPrior
    from busgen_monai.networks import ConditionCodec
    from busgen_monai.presets import build_network

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("adapted")
    torch.manual_seed(0)
    codec = ConditionCodec()
    torch.save({"network": build_network("tiny", codec).state_dict(), "codec": codec.state_dict()}, tmp / "base.pt")
    net, codec = prepare_adaptation(tmp / "base.pt", "tiny", new_pathologies=["dcis"], rank=2)
    saved = AdapterSaver(net, codec, tmp / "models").save()
    BoxPrior().fit([{"pathology": "dcis", "boxes": [[.2, .2, .5, .5]]}, {"pathology": "dcis", "boxes": [[.3, .3, .6, .7]]},
                    {"pathology": "dcis", "boxes": [[.25, .3, .55, .6]]}]).save(tmp / "models" / "box_prior.json")
    return tmp, saved
