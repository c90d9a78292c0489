"""Datalist -> MONAI dataset, and a class-balanced (optionally distributed) sampler.

- :func:`datalist_items`: the items of one split with absolute ``image``/``mask`` paths (datalist paths are
  relative to the datalist's folder).
- :func:`build_dataset`: a :class:`monai.data.Dataset` (or ``CacheDataset``) over those items.
- :class:`ClassBalancedSampler`: draws items with probability inversely proportional to the size of their class
  (pathology by default), re-drawn every epoch (BUSGen re-balances benign/malignant each epoch), and splits the draw
  over DDP ranks. It is a :class:`torch.utils.data.DistributedSampler` so MONAI's workflows call ``set_epoch``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DistributedSampler, Sampler

from .schema import SPLITS, load_datalist

__all__ = ["datalist_items", "build_dataset", "class_weights", "ClassBalancedSampler"]


def datalist_items(
    datalist: Mapping | str | os.PathLike,
    split: str | Sequence[str] = "training",
    *,
    check_files: bool = True,
    path_keys: Sequence[str] = ("image", "mask"),
) -> list[dict]:
    """Items of ``split`` (one name or several) with absolute paths under ``path_keys``.

    Args:
        datalist: a datalist dict (as returned by :func:`busgen_monai.data.schema.load_datalist`, with ``base_dir``)
            or the path of a datalist JSON file (validated on load).
        split: ``training``, ``validation``, ``test`` or a list of them.
        check_files: validate file existence when loading from a path.
    """
    if not isinstance(datalist, Mapping):
        datalist = load_datalist(datalist, check_files=check_files)
    splits = [split] if isinstance(split, str) else list(split)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; splits are {list(SPLITS)}")
    base = Path(datalist.get("base_dir") or ".")
    items = []
    for s in splits:
        for item in datalist.get(s) or []:
            it = dict(item)
            for key in path_keys:
                if it.get(key) and not os.path.isabs(it[key]):
                    it[key] = str(base / it[key])
            items.append(it)
    return items


def build_dataset(
    items: Sequence[Mapping],
    transform: Callable | None = None,
    cache_rate: float = 0.0,
    num_workers: int | None = 0,
):
    """:class:`monai.data.Dataset` over ``items`` (``CacheDataset`` when ``cache_rate > 0``: the deterministic
    transforms before the first random one are cached)."""
    from monai.data import CacheDataset, Dataset

    if not items:
        raise ValueError("build_dataset: no items (is the split empty in the datalist?)")
    if cache_rate > 0:
        return CacheDataset(list(items), transform, cache_rate=cache_rate, num_workers=num_workers, progress=False)
    return Dataset(list(items), transform)


def class_weights(labels: Sequence[Any]) -> torch.Tensor:
    """Per-item sampling weights ``1 / count(label)``: every class gets the same total weight."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[lab] for lab in labels], dtype=torch.float64)


class ClassBalancedSampler(DistributedSampler):
    """Sample items so that every class is drawn equally often in expectation, re-drawn every epoch.

    Each epoch draws ``num_samples * num_replicas`` indices (with replacement by default) from the weights of
    :func:`class_weights` with a generator seeded by ``seed + epoch``; rank ``r`` takes every ``num_replicas``-th
    index starting at ``r``, so the ranks see disjoint parts of one common draw.

    Args:
        labels: one class label per dataset item (e.g. the items' ``pathology``), or the items themselves with
            ``label_key``.
        label_key: key of the label when ``labels`` are items (dicts).
        num_samples: items per rank and epoch (default: ``ceil(len(labels) / num_replicas)``).
        replacement: draw with replacement (needed to over-sample small classes).
        balance: ``False`` turns the sampler into a plain (distributed) shuffle: uniform weights, no replacement
            (the draw is padded by repeating it when ``num_samples * num_replicas`` exceeds the dataset).
        seed: base seed (identical on all ranks).
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed`` when initialised, else 1/0).
    """

    def __init__(  # noqa: D107 - DistributedSampler's __init__ needs a process group; this one does not
        self,
        labels: Sequence[Any],
        label_key: str = "pathology",
        num_samples: int | None = None,
        replacement: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        balance: bool = True,
    ) -> None:
        Sampler.__init__(self)
        labels = [lab[label_key] if isinstance(lab, Mapping) else lab for lab in labels]
        if not labels:
            raise ValueError("ClassBalancedSampler: no labels (empty dataset)")
        dist_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if dist_ready else 1
        if rank is None:
            rank = torch.distributed.get_rank() if dist_ready else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.labels = list(labels)
        self.balance = bool(balance)
        self.weights = class_weights(self.labels) if self.balance else torch.ones(len(self.labels), dtype=torch.float64)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.replacement = bool(replacement) and self.balance
        self.seed = int(seed)
        self.epoch = 0
        self.shuffle = True
        self.drop_last = False
        self.dataset = self.labels
        self.num_samples = int(num_samples) if num_samples else int(math.ceil(len(self.labels) / self.num_replicas))
        self.total_size = self.num_samples * self.num_replicas

    @property
    def class_counts(self) -> dict[Any, int]:
        return dict(Counter(self.labels))

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.replacement:
            draw = torch.multinomial(self.weights, self.total_size, True, generator=gen)
        else:
            order = torch.multinomial(self.weights, len(self.labels), False, generator=gen)
            draw = order.repeat(int(math.ceil(self.total_size / len(order))))[: self.total_size]
        return iter(draw[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
