"""Datalist -> dataset, and the class-balanced (distributed) sampler."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

from busgen_monai.data.dataset import ClassBalancedSampler, build_dataset, class_weights, datalist_items
from busgen_monai.data.transforms import bus_train_transforms
from busgen_monai.networks import ConditionCodec


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory):
    from busgen_monai.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantom"), n=30, seed=1, size=(48, 48))


def test_items_have_absolute_existing_paths(phantom_path):
    items = datalist_items(phantom_path, "training")
    assert items and all(os.path.isabs(it["image"]) and os.path.isfile(it["image"]) for it in items)
    assert all(os.path.isfile(it["mask"]) for it in items if it.get("mask"))
    both = datalist_items(phantom_path, ["training", "validation"])
    assert len(both) > len(items)
    with pytest.raises(ValueError, match="unknown split"):
        datalist_items(phantom_path, "train")


def test_build_dataset_runs_the_transforms(phantom_path):
    codec = ConditionCodec.from_datalist(phantom_path)
    items = datalist_items(phantom_path, "training")
    ds = build_dataset(items, bus_train_transforms(codec, 32))
    assert len(ds) == len(items) and ds[0]["image"].shape == (1, 32, 32)  # grey
    cached = build_dataset(items, bus_train_transforms(codec, 32), cache_rate=1.0)
    assert cached[1]["cond"].shape == (1, codec.width)
    with pytest.raises(ValueError, match="no items"):
        build_dataset([], None)


def test_sampler_balances_classes_each_epoch():
    labels = ["benign"] * 90 + ["malignant"] * 10
    assert torch.isclose(class_weights(labels)[:90].sum(), class_weights(labels)[90:].sum())
    sampler = ClassBalancedSampler(labels, seed=0)
    assert len(sampler) == 100 and sampler.class_counts == {"benign": 90, "malignant": 10}
    counts = Counter()
    draws = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        idx = list(sampler)
        draws.append(idx)
        counts.update(labels[i] for i in idx)
    assert abs(counts["malignant"] / sum(counts.values()) - 0.5) < 0.05
    assert draws[0] != draws[1]  # re-drawn every epoch
    sampler.set_epoch(0)
    assert list(sampler) == draws[0]  # reproducible from seed + epoch
    items = [{"pathology": lab} for lab in labels]
    assert list(ClassBalancedSampler(items, seed=0)) == draws[0]  # items with label_key


def test_sampler_splits_one_draw_over_ranks():
    labels = [0] * 7 + [1] * 3
    full = ClassBalancedSampler(labels, num_samples=6, num_replicas=1, rank=0, seed=2)
    ranks = [ClassBalancedSampler(labels, num_samples=3, num_replicas=2, rank=r, seed=2) for r in (0, 1)]
    for s in (full, *ranks):
        s.set_epoch(4)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 3
    interleaved = [x for pair in zip(a, b) for x in pair]
    assert interleaved == list(full)
    assert isinstance(ranks[0], torch.utils.data.DistributedSampler)  # MONAI workflows call set_epoch
    with pytest.raises(ValueError, match="rank 2"):
        ClassBalancedSampler(labels, num_replicas=2, rank=2)


def test_unbalanced_mode_is_a_distributed_shuffle():
    labels = list(range(10))
    s0 = ClassBalancedSampler(labels, balance=False, num_replicas=3, rank=0, seed=1)
    s1 = ClassBalancedSampler(labels, balance=False, num_replicas=3, rank=1, seed=1)
    s2 = ClassBalancedSampler(labels, balance=False, num_replicas=3, rank=2, seed=1)
    seen = list(s0) + list(s1) + list(s2)
    assert len(seen) == 12 and set(seen) == set(labels)  # every item once, padded by repetition
