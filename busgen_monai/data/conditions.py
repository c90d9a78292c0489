"""Condition encoding shared by data, network, training and sampling: names <-> ids and the packed condition tensor.

BUSGen conditions its generator on pathology, device type and lesion boxes (BI-RADS is an optional extra here).
Every condition has its own *null* value so classifier-free guidance can drop them together or one by one:

============  ===================================================  ============================
condition     id / value                                           null
============  ===================================================  ============================
pathology     ``1 + index`` in the model's pathology list          ``0`` (any value ``<= 0``)
device        :meth:`DeviceVocabulary.id_of` (``unknown`` -> 0)    ``0`` (any value ``<= 0``)
birads        ``1 + index`` in :data:`BIRADS_VALUES`               ``0`` (any value ``<= 0``)
boxes         normalised ``x1, y1, x2, y2`` in ``[0, 1]``          no box (slots filled with ``-1``)
============  ===================================================  ============================

**Packed condition tensor.** The network, the prepare-batch and the inferers exchange conditions as one float
tensor of shape ``(B, 1, K)`` (``(B, K)`` is accepted too) with ``K = 3 + 4 * max_boxes``::

    [pathology_id, device_id, birads_id, x1_0, y1_0, x2_0, y2_0, x1_1, ..., y2_{max_boxes-1}]

A box slot is *valid* when all four numbers lie in ``[0, 1]`` and ``x1 < x2``, ``y1 < y2``; empty slots hold ``-1``.
Because every null value is ``<= 0`` and an all ``-1`` slot is "no box", ``torch.full_like(cond, -1)`` is the fully
unconditional condition. That is exactly what :meth:`monai.inferers.DiffusionInferer.sample` builds for the
unconditional half when called with ``cfg=...`` and ``cfg_fill_value=-1``, so MONAI's stock CFG sampling works with
:class:`~busgen_monai.networks.ConditionalDiffusionUNet` unchanged (MONAI's ``cfg`` is ``1 + w`` in BUSGen's
``(1 + w) * eps(x, c) - w * eps(x)``).

:class:`ConditionCodec` holds the vocabularies (pathology list, :class:`~busgen_monai.data.devices.DeviceVocabulary`,
BI-RADS values) and is saved with every checkpoint so later stages map names to ids identically.

This is the data contract between the datalist and the network, so it lives in :mod:`busgen_monai.data`
(the network imports it; nothing here imports the network). :mod:`busgen_monai.networks.conditions` re-exports
it for one release.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .devices import NULL_DEVICE, UNKNOWN_DEVICE, DeviceVocabulary, default_vocabulary
from .schema import BIRADS_VALUES, atomic_write_text, load_datalist

__all__ = [
    "CONDITION_KEYS",
    "NUM_SCALAR_CONDITIONS",
    "NULL_BOX_VALUE",
    "Conditions",
    "ConditionCodec",
    "condition_width",
    "max_boxes_of",
    "pack_conditions",
    "unpack_conditions",
    "resolve_conditions",
    "null_conditions",
    "drop_conditions",
    "render_box_mask",
    "valid_boxes",
    "box_pixel_ranges",
]

logger = logging.getLogger(__name__)

#: Names of the conditions, in the order used for dropout masks and reports.
CONDITION_KEYS: tuple[str, ...] = ("pathology", "device", "birads", "boxes")
#: Columns before the boxes in the packed tensor: pathology, device, birads.
NUM_SCALAR_CONDITIONS = 3
#: Value of an empty box slot.
NULL_BOX_VALUE = -1.0
_COLUMN = {"pathology": 0, "device": 1, "birads": 2}
_EPS = 1e-4


def condition_width(max_boxes: int) -> int:
    """``K``: length of a packed condition vector with ``max_boxes`` box slots."""
    return NUM_SCALAR_CONDITIONS + 4 * int(max_boxes)


def max_boxes_of(packed: torch.Tensor) -> int:
    """Number of box slots in a packed condition tensor."""
    k = packed.shape[-1] - NUM_SCALAR_CONDITIONS
    if k < 0 or k % 4:
        raise ValueError(
            f"packed condition has {packed.shape[-1]} columns; expected 3 + 4 * max_boxes "
            "(pathology, device, birads, then x1, y1, x2, y2 per box)"
        )
    return k // 4


@dataclass
class Conditions:
    """Unpacked conditions of a batch.

    Attributes:
        pathology: ``(B,)`` long, 0 = null.
        device: ``(B,)`` long, 0 = null.
        birads: ``(B,)`` long, 0 = null.
        boxes: ``(B, M, 4)`` float, normalised ``x1, y1, x2, y2`` (invalid slots hold anything).
        box_valid: ``(B, M)`` bool, which slots hold a box.
    """

    pathology: torch.Tensor
    device: torch.Tensor
    birads: torch.Tensor
    boxes: torch.Tensor
    box_valid: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.pathology.shape[0])


def _as_2d(packed: torch.Tensor) -> torch.Tensor:
    if packed.dim() == 3 and packed.shape[1] == 1:
        return packed[:, 0]
    if packed.dim() == 2:
        return packed
    raise ValueError(f"packed condition must have shape (B, 1, K) or (B, K), got {tuple(packed.shape)}")


def unpack_conditions(packed: torch.Tensor) -> Conditions:
    """Split a packed ``(B, 1, K)`` / ``(B, K)`` condition tensor into its parts (see the module docstring)."""
    flat = _as_2d(packed).float()
    m = max_boxes_of(flat)
    ids = flat[:, :NUM_SCALAR_CONDITIONS].round().clamp(min=0).long()
    boxes = flat[:, NUM_SCALAR_CONDITIONS:].reshape(flat.shape[0], m, 4)
    return Conditions(ids[:, 0], ids[:, 1], ids[:, 2], boxes, valid_boxes(boxes))


def valid_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` boxes -> ``(...)`` bool: inside ``[0, 1]`` with ``x1 < x2`` and ``y1 < y2``."""
    return (
        (boxes >= 0).all(-1) & (boxes <= 1).all(-1) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    )


def pack_conditions(
    pathology: torch.Tensor | Sequence[int] | None = None,
    device: torch.Tensor | Sequence[int] | None = None,
    birads: torch.Tensor | Sequence[int] | None = None,
    boxes: torch.Tensor | Sequence[Sequence[Sequence[float]]] | None = None,
    *,
    max_boxes: int = 8,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Pack integer ids and per-item box lists into a ``(B, 1, K)`` float tensor; missing parts are null.

    Args:
        pathology, device, birads: ``(B,)`` ids (0 = null) or ``None`` for all-null.
        boxes: a ``(B, M, 4)`` tensor (invalid rows are dropped) or, per item, a list of ``[x1, y1, x2, y2]``.
            Items with more than ``max_boxes`` boxes keep the ``max_boxes`` largest (a warning is logged).
        max_boxes: number of box slots.
        batch_size: needed only when every part is ``None``.
    """
    sizes = {len(v) for v in (pathology, device, birads, boxes) if v is not None}
    if batch_size is not None:
        sizes.add(int(batch_size))
    if len(sizes) != 1:
        raise ValueError(f"pack_conditions: parts disagree on the batch size or none given: sizes {sorted(sizes)}")
    b = sizes.pop()
    out = torch.full((b, condition_width(max_boxes)), NULL_BOX_VALUE, dtype=torch.float32)
    out[:, :NUM_SCALAR_CONDITIONS] = 0
    for key, val in (("pathology", pathology), ("device", device), ("birads", birads)):
        if val is not None:
            out[:, _COLUMN[key]] = torch.as_tensor(val).reshape(b).float().cpu()
    if boxes is not None:
        for i in range(b):
            item_boxes = boxes[i]
            if isinstance(item_boxes, torch.Tensor):
                item_boxes = item_boxes.detach().float().cpu().reshape(-1, 4)
                item_boxes = item_boxes[valid_boxes(item_boxes)].numpy()
            out[i, NUM_SCALAR_CONDITIONS:] = torch.from_numpy(_box_slots(item_boxes, max_boxes))
    return out[:, None, :]



def resolve_conditions(context: torch.Tensor | Mapping | None, class_labels: torch.Tensor | Mapping | None,
                       batch: int, device: torch.device | str) -> Conditions:
    """The conditions a generator's ``forward`` was given, as :class:`Conditions` for a batch of ``batch``.

    Accepts either ``context`` or ``class_labels`` (not both): a packed ``(B, 1, K)`` tensor, a ``(B,)`` pathology-id
    tensor, a mapping with ``pathology``/``device``/``birads``/``boxes`` (boxes as a ``(B, M, 4)`` tensor or per-item
    lists), or ``None`` (all null). A batch of 1 is broadcast to ``batch``. Shared by every generator network (the
    pixel U-Net and the latent DiT) so they read conditions identically.
    """
    if context is not None and class_labels is not None:
        raise ValueError("pass the conditions either as `context` or as `class_labels`, not both")
    cond = context if context is not None else class_labels
    if cond is None:
        return unpack_conditions(pack_conditions(batch_size=batch, max_boxes=1).to(device))
    if isinstance(cond, Mapping):
        unknown = set(cond) - {"pathology", "device", "birads", "boxes"}
        if unknown:
            raise KeyError(f"unknown condition keys {sorted(unknown)}; use pathology, device, birads, boxes")
        boxes = cond.get("boxes")
        if boxes is None:
            max_boxes = 1
        elif isinstance(boxes, torch.Tensor):
            max_boxes = max(1, boxes.shape[1])
        else:
            max_boxes = max([len(b) for b in boxes] + [1])
        cond = pack_conditions(
            cond.get("pathology"), cond.get("device"), cond.get("birads"), boxes, max_boxes=max_boxes
        ).to(device)
    elif cond.dim() == 1:
        cond = pack_conditions(pathology=cond, max_boxes=1).to(device)
    parts = unpack_conditions(cond)
    if parts.batch_size not in (batch, 1):
        raise ValueError(f"conditions have batch size {parts.batch_size} but x has {batch}")
    if parts.batch_size == 1 and batch > 1:
        fields = (parts.pathology, parts.device, parts.birads, parts.boxes, parts.box_valid)
        parts = Conditions(*(t.expand(batch, *t.shape[1:]) for t in fields))
    return parts

def _box_slots(boxes: Any, max_boxes: int) -> np.ndarray:
    arr = np.asarray(boxes if boxes is not None else [], dtype=np.float32).reshape(-1, 4)
    if len(arr) > max_boxes:
        area = (arr[:, 2] - arr[:, 0]) * (arr[:, 3] - arr[:, 1])
        keep = np.sort(np.argsort(-area, kind="stable")[:max_boxes])
        logger.warning("an item has %d lesion boxes; the condition keeps the %d largest", len(arr), max_boxes)
        arr = arr[keep]
    slots = np.full((max_boxes, 4), NULL_BOX_VALUE, dtype=np.float32)
    slots[: len(arr)] = np.clip(arr, 0.0, 1.0)
    return slots.reshape(-1)


def null_conditions(batch_size: int, max_boxes: int = 8, device: torch.device | str | None = None) -> torch.Tensor:
    """Fully unconditional packed conditions ``(B, 1, K)`` (all ``-1``)."""
    return torch.full((batch_size, 1, condition_width(max_boxes)), NULL_BOX_VALUE, device=device)


def drop_conditions(packed: torch.Tensor, drop: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Return a copy of ``packed`` where, for each condition name in ``drop``, the items whose ``(B,)`` bool mask is
    true get that condition's null value (ids -> 0, boxes -> -1)."""
    out = packed.clone()
    flat = out.view(out.shape[0], -1)
    for key, mask in drop.items():
        mask = mask.to(device=flat.device, dtype=torch.bool).reshape(-1)
        if key == "boxes":
            flat[mask, NUM_SCALAR_CONDITIONS:] = NULL_BOX_VALUE
        elif key in _COLUMN:
            flat[mask, _COLUMN[key]] = 0
        else:
            raise KeyError(f"unknown condition {key!r}; conditions are {list(CONDITION_KEYS)}")
    return out


def box_pixel_ranges(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel index ranges ``[c0, r0, c1, r1)`` covered by normalised boxes ``(..., 4)``: every pixel the box touches.

    ``c0 = floor(x1 * W)``, ``c1 = ceil(x2 * W)`` (same for rows), so a horizontal flip of the box
    (``x1' = 1 - x2``) covers exactly the flipped pixels.
    """
    scale = torch.tensor([width, height, width, height], dtype=torch.float64, device=boxes.device)
    px = boxes.double() * scale
    lo = torch.floor(px[..., :2] + _EPS)
    hi = torch.ceil(px[..., 2:] - _EPS)
    return torch.cat([lo, hi], -1).long()


def render_box_mask(
    boxes: torch.Tensor, box_valid: torch.Tensor | None, spatial_size: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Binary box mask ``(B, 1, H, W)``: 1 inside any valid box (BUSGen's extra input channel).

    Args:
        boxes: ``(B, M, 4)`` normalised ``x1, y1, x2, y2``.
        box_valid: ``(B, M)`` bool, or ``None`` for all valid.
        spatial_size: ``(H, W)``.
    """
    h, w = int(spatial_size[0]), int(spatial_size[1])
    b, m = boxes.shape[:2]
    if m == 0:
        return torch.zeros(b, 1, h, w, dtype=dtype, device=boxes.device)
    rng = box_pixel_ranges(boxes, h, w)  # (B, M, 4)
    cols = torch.arange(w, device=boxes.device)
    rows = torch.arange(h, device=boxes.device)
    in_x = (cols[None, None] >= rng[..., 0:1]) & (cols[None, None] < rng[..., 2:3])  # (B, M, W)
    in_y = (rows[None, None] >= rng[..., 1:2]) & (rows[None, None] < rng[..., 3:4])  # (B, M, H)
    inside = in_y[..., :, None] & in_x[..., None, :]  # (B, M, H, W)
    if box_valid is not None:
        inside = inside & box_valid.to(torch.bool)[..., None, None]
    return inside.any(1, keepdim=True).to(dtype)


class ConditionCodec:
    """Vocabularies and packing for BUSGen's conditions: item names <-> ids <-> packed tensor.

    Args:
        pathologies: the model's pathology list; id = 1 + index (BUSGen: ``benign`` = 1, ``malignant`` = 2).
        vocabulary: device vocabulary (default: built-in); a device ``unknown``/``null`` maps to the null id 0.
        birads_values: BI-RADS categories; id = 1 + index.
        max_boxes: box slots in the packed tensor.
        min_pathology_embeds, min_device_embeds: lower bounds of the embedding table sizes, leaving room to add
            pathologies/devices later (adaptation) without resizing the network.

    Example::

        codec = ConditionCodec(["benign", "malignant"])
        cond = codec.encode_item({"pathology": "malignant", "device": "GE-LOGIQ-E9", "boxes": [[.2, .3, .5, .6]]})
        batch = codec.pack_names(["benign"], ["GE-LOGIQ-E9"], boxes=[[[.3, .3, .6, .6]]])  # (1, 1, K)
    """

    def __init__(
        self,
        pathologies: Sequence[str] = ("benign", "malignant"),
        vocabulary: DeviceVocabulary | None = None,
        birads_values: Sequence[str] = BIRADS_VALUES,
        max_boxes: int = 8,
        min_pathology_embeds: int = 0,
        min_device_embeds: int = 0,
    ) -> None:
        if len(set(pathologies)) != len(pathologies):
            raise ValueError(f"pathology list has duplicates: {list(pathologies)}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        self.pathologies = [str(p) for p in pathologies]
        self.vocabulary = vocabulary if vocabulary is not None else default_vocabulary()
        self.birads_values = [str(v).lower() for v in birads_values]
        self.max_boxes = int(max_boxes)
        self.min_pathology_embeds = int(min_pathology_embeds)
        self.min_device_embeds = int(min_device_embeds)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_datalist(
        cls,
        datalist: Mapping | str | os.PathLike,
        *,
        pathologies: Sequence[str] | None = None,
        vocabulary: DeviceVocabulary | None = None,
        vocabulary_file: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> ConditionCodec:
        """Codec for a datalist: its ``pathologies`` list (unless given) and the device vocabulary extended with any
        device the datalist declares that the vocabulary does not know (added after the built-in ones)."""
        if not isinstance(datalist, Mapping):
            datalist = load_datalist(datalist, check_files=False)
        if vocabulary is None:
            vocabulary = DeviceVocabulary.from_file(vocabulary_file) if vocabulary_file else default_vocabulary()
        vocab = vocabulary.copy()
        for name in datalist.get("devices") or []:
            if name not in (UNKNOWN_DEVICE, NULL_DEVICE) and vocab.find(name) is None:
                vocab.add(name)
        if pathologies is None:
            pathologies = datalist.get("pathologies") or sorted(
                {it["pathology"] for split in ("training", "validation", "test") for it in datalist.get(split) or []}
            )
        return cls(pathologies=pathologies, vocabulary=vocab, **kwargs)

    # ------------------------------------------------------------------ sizes
    @property
    def num_pathology_embeds(self) -> int:
        """Rows of the pathology embedding table (null included)."""
        return max(len(self.pathologies) + 1, self.min_pathology_embeds)

    @property
    def num_device_embeds(self) -> int:
        """Rows of the device embedding table (null included)."""
        return max(self.vocabulary.num_embeddings, self.min_device_embeds)

    @property
    def num_birads_embeds(self) -> int:
        return len(self.birads_values) + 1

    @property
    def width(self) -> int:
        """``K``, the packed condition length."""
        return condition_width(self.max_boxes)

    # ------------------------------------------------------------------ names -> ids
    def pathology_id(self, name: str | None) -> int:
        if name is None or name in ("", "null"):
            return 0
        try:
            return self.pathologies.index(str(name)) + 1
        except ValueError:
            raise KeyError(
                f"pathology {name!r} is not in the model's pathology list {self.pathologies}; "
                "train/adapt with a codec that lists it (ConditionCodec(pathologies=[...]))"
            ) from None

    def device_id(self, name: str | None) -> int:
        if name is None or name in ("", UNKNOWN_DEVICE, NULL_DEVICE):
            return 0
        return self.vocabulary.id_of(self.vocabulary.lookup(str(name)))

    def birads_id(self, value: Any) -> int:
        if value is None or str(value).strip() == "":
            return 0
        key = str(value).strip().lower()
        if key not in self.birads_values:
            raise KeyError(f"BI-RADS {value!r} is not one of {self.birads_values}")
        return self.birads_values.index(key) + 1

    def pathology_name(self, pid: int) -> str:
        return "null" if int(pid) <= 0 else self.pathologies[int(pid) - 1]

    def device_name(self, did: int) -> str:
        return self.vocabulary.name_of(max(int(did), 0))

    # ------------------------------------------------------------------ packing
    def encode_item(self, item: Mapping, use_birads: bool = True) -> np.ndarray:
        """Packed condition ``(K,)`` float32 of one datalist item (``pathology``, ``device``, ``birads``, ``boxes``)."""
        out = np.empty(self.width, dtype=np.float32)
        out[0] = self.pathology_id(item.get("pathology"))
        out[1] = self.device_id(item.get("device"))
        out[2] = self.birads_id(item.get("birads")) if use_birads else 0
        out[NUM_SCALAR_CONDITIONS:] = _box_slots(item.get("boxes"), self.max_boxes)
        return out

    def pack_names(
        self,
        pathologies: Sequence[str | None] | None = None,
        devices: Sequence[str | None] | None = None,
        birads: Sequence[Any] | None = None,
        boxes: Sequence[Sequence[Sequence[float]]] | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Packed conditions ``(B, 1, K)`` from names (``None`` entries / lists mean null)."""
        return pack_conditions(
            None if pathologies is None else [self.pathology_id(p) for p in pathologies],
            None if devices is None else [self.device_id(d) for d in devices],
            None if birads is None else [self.birads_id(v) for v in birads],
            boxes,
            max_boxes=self.max_boxes,
            batch_size=batch_size,
        )

    def null(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        return null_conditions(batch_size, self.max_boxes, device)

    def network_kwargs(self) -> dict[str, int]:
        """Embedding-table sizes for :class:`~busgen_monai.networks.ConditionalDiffusionUNet`."""
        return {
            "num_pathology_embeds": self.num_pathology_embeds,
            "num_device_embeds": self.num_device_embeds,
            "num_birads_embeds": self.num_birads_embeds,
        }

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": "pathology,device,birads,boxes(x1,y1,x2,y2)*max_boxes",
            "pathologies": list(self.pathologies),
            "pathology_ids": {p: i + 1 for i, p in enumerate(self.pathologies)},
            "birads_values": list(self.birads_values),
            "max_boxes": self.max_boxes,
            "min_pathology_embeds": self.min_pathology_embeds,
            "min_device_embeds": self.min_device_embeds,
            "device_vocabulary": self.vocabulary.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ConditionCodec:
        return cls(
            pathologies=data["pathologies"],
            vocabulary=DeviceVocabulary.from_dict(data["device_vocabulary"]),
            birads_values=data.get("birads_values", BIRADS_VALUES),
            max_boxes=int(data.get("max_boxes", 8)),
            min_pathology_embeds=int(data.get("min_pathology_embeds", 0)),
            min_device_embeds=int(data.get("min_device_embeds", 0)),
        )

    # ignite/MONAI checkpoint handlers save anything with state_dict/load_state_dict
    def state_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def load_state_dict(self, state: Mapping, strict: bool = True) -> None:
        """Take the checkpoint's vocabularies (the ids a network was trained with win over the datalist's)."""
        other = ConditionCodec.from_dict(state)
        if other.to_dict() != self.to_dict():
            logger.warning("condition codec from the checkpoint (%r) replaces %r", other, self)
        self.__dict__.update(other.__dict__)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the codec as JSON (atomic)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConditionCodec:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        return (
            f"ConditionCodec(pathologies={self.pathologies}, devices={len(self.vocabulary)}, "
            f"max_boxes={self.max_boxes})"
        )
