"""The lesion classifier as the app uses it: built from its MONAI bundle, scored frame by frame, explained by Grad-CAM.

:class:`BundleClassifier` reads the classifier bundle's own configs (``inference`` plus the preset it was
trained with) with :class:`monai.bundle.ConfigParser`, so the network, the preprocessing and the
postprocessing are the bundle's, defined once: the network is ``network_def``, the preprocessing is the
bundle's ``preprocessing`` with its file loader removed (MONAI Deploy's
``monai.deploy.operators.monai_bundle_inference_operator.filter_compose`` with ``DISALLOW_LOAD_SAVE``, the
same filter the SDK's ``MonaiBundleInferenceOperator`` applies) and the postprocessing is the bundle's
softmax. Frames reach it as in-memory arrays from the DICOM reader, whole imaging region
(``box = [0, 0, 1, 1]``: DICOM carries no lesion box).

Weights load with ``weights_only=True`` (:func:`busgen_monai.safe_load.load_weights`); the file's sha256
is reported in every result. Grad-CAM uses :class:`monai.visualize.GradCAM` on the eager network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from busgen_monai.bundle_run import resolve_bundle, resolve_configs
from busgen_monai.safe_load import load_weights
from busgen_monai.utils.io import file_sha256

__all__ = ["ModelConfig", "BundleClassifier", "Prediction"]


@dataclass
class ModelConfig:
    """Which classifier the app runs and how it decides.

    Attributes:
        bundle: bundle name (``bus_classifier``) or folder (configs/ + optionally models/model.pt).
        configs: comma list of the bundle configs the checkpoint was trained with (``inference,preset_cpu_tiny``).
        model_path: checkpoint (``model.pt`` of the bundle's training run); default ``<bundle>/models/model.pt``.
        overrides: config overrides (``{"backbone": "resnet18", "image_size": [128, 128]}``).
        threshold: operating point: malignancy probability at or above which the decision is "malignant".
        threshold_source: where the operating point comes from (written into the SR), e.g. ``"config"`` or
            ``"matched sensitivity 0.90 on the validation split"``.
        positive_class: class whose probability is the malignancy score (default: the bundle's last class).
        gradcam_layer: layer Grad-CAM looks at (default: the last ``layer4``, else the last convolution).
        device: ``cpu`` or ``cuda``.
    """

    bundle: str = "bus_classifier"
    configs: str = "inference"
    model_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5
    threshold_source: str = "app configuration"
    positive_class: str | None = None
    gradcam_layer: str | None = None
    device: str = "cpu"

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


@dataclass
class Prediction:
    """Scores of one study's frames. ``scores[i]`` is the malignancy probability of ``frames[i]``."""

    scores: np.ndarray
    logits: np.ndarray



def load_bundle_network(parser: Any, model_path: Path, what: str, configs_desc: str) -> tuple[list[int], int, Any]:
    """``(image_size, image_channels, network)`` of a parsed bundle config, with the weights of ``model_path`` loaded
    weights-only (a training checkpoint's ``model`` entry or a bare state dict); a checkpoint that does not fit the
    network is one error naming the configs to use."""
    image_size = [int(s) for s in parser.get_parsed_content("image_size")]
    channels = int(parser.get_parsed_content("image_channels"))
    net = parser.get_parsed_content("network_def")
    state = load_weights(model_path, f"{what} checkpoint")
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the checkpoint {model_path} does not fit the {what} network of {configs_desc}: give the "
                         f"configs/preset it was trained with ({str(err).splitlines()[0][:200]})") from None
    return image_size, channels, net

class BundleClassifier:
    """A trained classifier bundle ready for in-memory frames (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        from monai.bundle import ConfigParser
        from monai.deploy.operators.monai_bundle_inference_operator import DISALLOW_LOAD_SAVE, filter_compose

        self.config = config
        self.bundle_dir = resolve_bundle(config.bundle)
        files = resolve_configs(self.bundle_dir, config.configs)
        parser = ConfigParser()
        meta_file = self.bundle_dir / "configs" / "metadata.json"
        parser.read_meta(str(meta_file))
        parser.read_config([str(f) for f in files])
        parser.update({**dict(config.overrides), "device": f"$torch.device('{config.device}')"})
        self.parser = parser
        self.metadata = json.loads(meta_file.read_text())
        self.model_path = Path(config.model_path) if config.model_path else self.bundle_dir / "models" / "model.pt"
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"classifier weights {self.model_path} not found: train the bundle (python -m monai.bundle run "
                f"--config_file configs/train.json ...) and pass its models/model.pt as the model path")
        self.model_sha256 = file_sha256(self.model_path)
        self.classes = [str(c) for c in parser.get_parsed_content("classes")]
        positive = config.positive_class or self.classes[-1]
        if positive not in self.classes:
            raise ValueError(f"positive_class {positive!r} is not one of the bundle's classes {self.classes}")
        self.positive_index = self.classes.index(positive)
        self.image_size, self.channels, net = load_bundle_network(
            parser, self.model_path, "classifier", f"configs {config.configs!r} with overrides {config.overrides}")
        self.device = torch.device(config.device)
        self.network = net.to(self.device).eval()
        self.preprocessing = filter_compose(parser.get_parsed_content("preprocessing"), DISALLOW_LOAD_SAVE)
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.cam_layer = config.gradcam_layer or self._default_cam_layer()

    # ---------------------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.bundle_dir.name))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    def _default_cam_layer(self) -> str:
        names = [n for n, _ in self.network.named_modules()]
        stage = [n for n in names if n.split(".")[-1] == "layer4"]
        if stage:
            return stage[-1]
        convs = [n for n, m in self.network.named_modules() if isinstance(m, torch.nn.Conv2d)]
        if not convs:
            raise ValueError(f"{type(self.network).__name__} has no convolution for Grad-CAM; set gradcam_layer")
        return convs[-1]

    # ---------------------------------------------------------------------------- inference
    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """``(H, W)`` or ``(H, W, 3)`` uint8 frame -> the network's ``(C, h, w)`` input (the bundle's transforms)."""
        arr = frame.astype(np.float32)
        if arr.ndim == 2:
            arr = arr[None] if self.channels == 1 else np.repeat(arr[None], 3, axis=0)
        else:
            arr = arr.transpose(2, 0, 1)
            if self.channels == 1:
                arr = (arr * np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]).sum(0, keepdims=True)
        item = {"image": torch.from_numpy(np.ascontiguousarray(arr)), "box": [0.0, 0.0, 1.0, 1.0], "label": 0}
        out = self.preprocessing(item)
        return torch.as_tensor(out["image"]).float()

    @torch.no_grad()
    def predict(self, frames: Sequence[np.ndarray], batch_size: int = 32) -> Prediction:
        """Malignancy probability of each frame (the bundle's softmax postprocessing)."""
        scores, logits = [], []
        for start in range(0, len(frames), batch_size):
            batch = torch.stack([self.preprocess(f) for f in frames[start:start + batch_size]]).to(self.device)
            out = self.network(batch)
            for row in out:
                prob = self.postprocessing({"pred": row})["pred"]
                scores.append(float(torch.as_tensor(prob)[self.positive_index]))
                logits.append(row.detach().cpu().numpy())
        return Prediction(np.asarray(scores, np.float64), np.asarray(logits, np.float32))

    def gradcam(self, frame: np.ndarray) -> np.ndarray:
        """Grad-CAM map of the positive class for one frame, ``(H, W)`` in [0, 1] at the frame's size."""
        from monai.visualize import GradCAM

        x = self.preprocess(frame)[None].to(self.device)
        cam = GradCAM(nn_module=self.network, target_layers=self.cam_layer)
        with torch.enable_grad():
            maps = cam(x=x, class_idx=self.positive_index)
        m = maps[0, 0].detach().cpu().numpy()
        h, w = frame.shape[:2]
        t = torch.from_numpy(m)[None, None]
        m = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        return np.clip(np.nan_to_num(m), 0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        """Model identity written into every result (name, version, sha256 of the weights, operating point)."""
        return {
            "name": self.name,
            "bundle": self.bundle_dir.name,
            "version": self.version,
            "configs": self.config.configs,
            "weights": os.path.basename(self.model_path),
            "sha256": self.model_sha256,
            "classes": self.classes,
            "positive_class": self.classes[self.positive_index],
            "threshold": float(self.config.threshold),
            "threshold_source": self.config.threshold_source,
        }
