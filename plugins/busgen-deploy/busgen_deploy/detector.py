"""The lesion detector (``bus_detector`` bundle of busgen-detect) as the app uses it: boxes on in-memory frames.

Optional stage, chosen by the app's config (``--detector-model``): when given, the key frame of every
instance (its highest-scoring frame by the classifier) goes through the detector; boxes at or above
``score_threshold`` (at most ``max_boxes``) are mapped back to source pixels (crop offset added) and
written into the SR as TID 1500 planar ROI groups whose spatial coordinates reference the source frame.

The network is the bundle's ``network_def`` (a MONAI ``RetinaNetDetector``) with the checkpoint's weights
(weights-only loading); the input is prepared as the bundle's validation preprocessing does it (resize with
area interpolation to ``image_size``, intensities 0..255 -> 0..1); the detector returns boxes in the resized
image's pixels, rescaled here to the crop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from busgen_monai.bundle_run import resolve_bundle, resolve_configs
from busgen_monai.utils.io import file_sha256

from .model import load_bundle_network

__all__ = ["DetectorConfig", "BundleDetector"]


@dataclass
class DetectorConfig:
    """Which detector and which boxes to report.

    Attributes:
        bundle: bundle name (``bus_detector``) or folder.
        configs: bundle configs the checkpoint was trained with (``train,preset_cpu_tiny``).
        model_path: the checkpoint (``model.pt`` of the detector's training run).
        overrides: config overrides.
        score_threshold: report boxes with a score at or above this.
        max_boxes: at most this many boxes per frame (highest scores first).
    """

    model_path: str
    bundle: str = "bus_detector"
    configs: str = "train"
    overrides: dict[str, Any] = field(default_factory=dict)
    score_threshold: float = 0.3
    max_boxes: int = 5

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "DetectorConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown detector config key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**dict(d))


class BundleDetector:
    """A trained detector bundle ready for in-memory frames (see the module docstring)."""

    def __init__(self, config: DetectorConfig):
        from monai.bundle import ConfigParser

        self.config = config
        self.bundle_dir = resolve_bundle(config.bundle)
        parser = ConfigParser()
        meta_file = self.bundle_dir / "configs" / "metadata.json"
        parser.read_meta(str(meta_file))
        parser.read_config([str(f) for f in resolve_configs(self.bundle_dir, config.configs)])
        parser.update({**dict(config.overrides), "device": "$torch.device('cpu')"})
        self.metadata = json.loads(meta_file.read_text())
        self.model_path = Path(config.model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"detector weights {self.model_path} not found: give the bus_detector training "
                                    "run's models/model.pt")
        self.model_sha256 = file_sha256(self.model_path)
        self.image_size, self.channels, net = load_bundle_network(parser, self.model_path, "detector",
                                                                  f"configs {config.configs!r}")
        self.network = net.eval()
        self.score_key = getattr(net, "pred_score_key", "labels_scores")
        self.box_key = getattr(net, "target_box_key", "boxes")

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.bundle_dir.name))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "bundle": self.bundle_dir.name, "version": self.version,
                "configs": self.config.configs, "sha256": self.model_sha256,
                "score_threshold": float(self.config.score_threshold), "max_boxes": int(self.config.max_boxes)}

    @torch.no_grad()
    def detect(self, frame: np.ndarray) -> list[tuple[list[float], float]]:
        """Boxes ``([x0, y0, x1, y1] in the frame's pixels, score)`` on one cropped ``(H, W)`` uint8 frame,
        highest score first, filtered by the config."""
        from monai.transforms import Resize

        g = frame if frame.ndim == 2 else (frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        x = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))[None]
        x = Resize(self.image_size, mode="area")(x)
        x = torch.as_tensor(x).float().clamp(0, 255) / 255.0
        if self.channels == 3:
            x = x.repeat(3, 1, 1)
        out = self.network(x[None])[0]
        boxes = out[self.box_key].detach().float().cpu().numpy().reshape(-1, 4)
        scores = out[self.score_key].detach().float().cpu().numpy().reshape(-1)
        sy = frame.shape[0] / float(self.image_size[0])
        sx = frame.shape[1] / float(self.image_size[1])
        found = []
        for b, s in sorted(zip(boxes, scores), key=lambda t: -float(t[1])):
            if float(s) < self.config.score_threshold or len(found) >= self.config.max_boxes:
                continue
            x0, y0, x1, y1 = float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy
            x0, x1 = np.clip([x0, x1], 0, frame.shape[1])
            y0, y1 = np.clip([y0, y1], 0, frame.shape[0])
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                found.append(([float(x0), float(y0), float(x1), float(y1)], float(s)))
        return found


def source_boxes(boxes: Sequence[tuple[list[float], float]], crop_box: Sequence[int]) -> list[tuple[list[float], float]]:
    """Boxes of a cropped frame -> boxes in the source frame's pixels (crop offset added)."""
    ox, oy = float(crop_box[0]), float(crop_box[1])
    return [([b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy], s) for b, s in boxes]
