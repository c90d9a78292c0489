"""2-D RetinaNet lesion detector on ``monai.apps.detection``.

What comes from MONAI unchanged: :class:`monai.networks.nets.resnet.ResNet` (2-D backbone),
:class:`monai.networks.blocks.feature_pyramid_network.FeaturePyramidNetwork` (+ ``LastLevelMaxPool``),
:class:`monai.apps.detection.networks.retinanet_network.RetinaNet` (classification + regression heads),
:class:`monai.apps.detection.networks.retinanet_detector.RetinaNetDetector` (anchor matching, loss, box
decoding, score threshold, NMS), :class:`monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape`,
:class:`monai.apps.detection.utils.box_coder.BoxCoder`, :class:`monai.apps.detection.utils.ATSS_matcher.ATSSMatcher`,
:class:`monai.apps.detection.utils.hard_negative_sampler.HardNegativeSampler` and
:mod:`monai.data.box_utils`.

What is written here, because MONAI 1.6's detection stack imports torchvision for it and torchvision does
not import next to this project's torch:

* :class:`ResNetFPNFeatureExtractor` replaces ``resnet_fpn_feature_extractor`` / ``BackboneWithFPN``, which call
  ``torchvision.models.detection.backbone_utils._validate_trainable_layers`` and
  ``torchvision.models._utils.IntermediateLayerGetter``. It runs the MONAI ResNet's stem and layers and feeds
  the chosen layers to MONAI's ``FeaturePyramidNetwork``; unlike ``BackboneWithFPN`` its FPN width is a
  parameter (MONAI fixes 256 channels, far too wide for CPU training).
* :class:`BUSRetinaNetDetector` subclasses ``RetinaNetDetector`` and overrides two methods whose
  ``isinstance`` checks touch torchvision's ``Matcher`` / ``BalancedPositiveNegativeSampler`` even when MONAI's
  own ``ATSSMatcher`` / ``HardNegativeSampler`` are used; the overrides keep MONAI's logic for those two.

Boxes are in pixels of the network input in MONAI's ``StandardMode`` order: coordinates follow the tensor's
spatial axes, so for ``(C, H, W)`` images a box is ``[row1, col1, row2, col2]`` (see
:mod:`busgen_detect.transforms`, which converts from and to the datalist's ``[x1, y1, x2, y2]``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.apps.detection.utils.hard_negative_sampler import HardNegativeSampler
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from torch import Tensor, nn

__all__ = ["BACKBONES", "ResNetFPNFeatureExtractor", "BUSRetinaNetDetector", "build_detector", "count_parameters"]

#: backbone name -> (block, layers, block_inplanes)
BACKBONES: dict[str, tuple[str, list[int], list[int]]] = {
    "resnet_tiny": ("basic", [1, 1, 1, 1], [8, 16, 32, 64]),
    "resnet_small": ("basic", [1, 1, 1, 1], [16, 32, 64, 128]),
    "resnet10": ("basic", [1, 1, 1, 1], [64, 128, 256, 512]),
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet34": ("basic", [3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512]),
}


class ResNetFPNFeatureExtractor(nn.Module):
    """MONAI ResNet + MONAI FeaturePyramidNetwork, torchvision-free (see the module docstring).

    Args:
        backbone: a :class:`monai.networks.nets.resnet.ResNet` (any spatial_dims).
        spatial_dims: 2 or 3.
        returned_layers: ResNet layers (1..4) fed to the FPN; ``len(returned_layers) + 1`` maps come out
            (the last from ``LastLevelMaxPool``), highest resolution first.
        out_channels: FPN width.

    Input ``(B, C, H, W)``; output ``OrderedDict`` of ``(B, out_channels, H / s, W / s)`` maps.
    """

    def __init__(self, backbone: resnet.ResNet, spatial_dims: int = 2, returned_layers: Sequence[int] = (1, 2, 3),
                 out_channels: int = 64) -> None:
        super().__init__()
        returned = [int(k) for k in returned_layers]
        if not returned or min(returned) < 1 or max(returned) > 4 or sorted(set(returned)) != returned:
            raise ValueError(f"returned_layers must be increasing ResNet layer numbers in 1..4, got {list(returned_layers)}")
        self.backbone = backbone
        self.returned_layers = returned
        # channels of each returned layer (block_inplanes x expansion), read from the layer's last conv
        widths = [self._layer_channels(getattr(backbone, f"layer{k}")) for k in returned]
        self.fpn = FeaturePyramidNetwork(spatial_dims=spatial_dims, in_channels_list=widths,
                                         out_channels=int(out_channels), extra_blocks=LastLevelMaxPool(spatial_dims))
        self.out_channels = int(out_channels)

    @staticmethod
    def _layer_channels(layer: nn.Module) -> int:
        convs = [m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        return int(convs[-1].out_channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        b = self.backbone
        x = b.act(b.bn1(b.conv1(x)))
        if not b.no_max_pool:
            x = b.maxpool(x)
        feats: OrderedDict[str, Tensor] = OrderedDict()
        for k in range(1, max(self.returned_layers) + 1):
            x = getattr(b, f"layer{k}")(x)
            if k in self.returned_layers:
                feats[str(self.returned_layers.index(k))] = x
        return self.fpn(feats)


class BUSRetinaNetDetector(RetinaNetDetector):
    """``RetinaNetDetector`` with MONAI's ATSS matcher and hard-negative sampler only (no torchvision needed).

    Same constructor, ``forward`` (training: ``{"classification": loss, "box_regression": loss}``;
    inference: list of ``{"boxes": (N, 4), "labels": (N,), "labels_scores": (N,)}``) and setters as MONAI's.
    """

    def compute_anchor_matched_idxs(self, anchors: list[Tensor], targets: list[dict[str, Tensor]],
                                    num_anchor_locs_per_level: Sequence[int]) -> list[Tensor]:
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            raise NotImplementedError("BUSRetinaNetDetector supports MONAI's ATSSMatcher only; call set_atss_matcher()")
        matched_idxs = []
        for anchors_per_image, targets_per_image in zip(anchors, targets):
            gt = targets_per_image[self.target_box_key]
            if gt.numel() == 0:  # lesion-free image: every anchor is background
                matched_idxs.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                               device=anchors_per_image.device))
                continue
            _, matched = self.proposal_matcher(gt.to(anchors_per_image.device), anchors_per_image,
                                               num_anchor_locs_per_level, self.num_anchors_per_loc)
            matched_idxs.append(matched)
        return matched_idxs

    def get_cls_train_sample_per_image(self, cls_logits_per_image: Tensor, targets_per_image: dict[str, Tensor],
                                       matched_idxs_per_image: Tensor) -> tuple[Tensor, Tensor]:
        if not torch.isfinite(cls_logits_per_image).all():
            if torch.is_grad_enabled():
                raise ValueError("NaN or Inf in predicted classification logits (lower the learning rate).")
        fg = matched_idxs_per_image >= 0
        target = torch.zeros_like(cls_logits_per_image)
        target[fg, targets_per_image[self.target_label_key][matched_idxs_per_image[fg]]] = 1.0
        if self.fg_bg_sampler is None:
            valid = matched_idxs_per_image != self.proposal_matcher.BETWEEN_THRESHOLDS
            return cls_logits_per_image[valid, :], target[valid, :]
        if not isinstance(self.fg_bg_sampler, HardNegativeSampler):
            raise NotImplementedError("BUSRetinaNetDetector supports MONAI's HardNegativeSampler only")
        max_logits = torch.max(cls_logits_per_image.to(torch.float32), dim=1)[0]
        pos, neg = self.fg_bg_sampler([matched_idxs_per_image + 1], max_logits)
        pos_idx = torch.where(torch.cat(pos, dim=0))[0]
        neg_idx = torch.where(torch.cat(neg, dim=0))[0]
        valid_idx = torch.cat([pos_idx, neg_idx], dim=0)
        return cls_logits_per_image[valid_idx, :], target[valid_idx, :]


def build_detector(
    backbone: str = "resnet_tiny",
    in_channels: int = 1,
    num_classes: int = 1,
    returned_layers: Sequence[int] = (1, 2),
    fpn_channels: int = 32,
    base_anchor_shapes: Sequence[Sequence[float]] = ((8, 8), (12, 8), (8, 12)),
    feature_map_scales: Sequence[int] | None = None,
    size_divisible: int = 16,
    conv1_stride: int = 2,
    no_max_pool: bool = True,
    atss_candidates: int = 4,
    hard_negative_batch: int = 64,
    positive_fraction: float = 0.3,
    hard_negative_pool: float = 20,
    min_neg: int = 16,
    score_thresh: float = 0.02,
    topk_candidates_per_level: int = 200,
    nms_thresh: float = 0.3,
    detections_per_img: int = 20,
    box_key: str = "boxes",
    label_key: str = "labels",
) -> BUSRetinaNetDetector:
    """A ready-to-train 2-D RetinaNet detector (MONAI components; see the module docstring).

    Args:
        backbone: a key of :data:`BACKBONES` (MONAI ``ResNet`` with that block / layers / widths).
        in_channels: image channels (1 for grey B-mode).
        num_classes: object classes (1: lesion).
        returned_layers: ResNet layers feeding the FPN.
        fpn_channels: FPN width.
        base_anchor_shapes: anchor (w, h) in pixels at the finest FPN level; coarser levels scale them.
        feature_map_scales: anchor scale per FPN level (default ``2 ** level`` for ``len(returned_layers) + 1``
            levels).
        size_divisible: images are padded to a multiple of this.
        conv1_stride, no_max_pool: stem of the ResNet (stride 2 and no max-pool keeps small lesions visible).
        atss_candidates: ATSS candidate anchors per level and box.
        hard_negative_batch, positive_fraction, hard_negative_pool, min_neg: ``HardNegativeSampler`` settings.
        score_thresh, topk_candidates_per_level, nms_thresh, detections_per_img: inference box selection.

    Returns:
        :class:`BUSRetinaNetDetector` (an ``nn.Module``; ``.network`` is the ``RetinaNet``).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} (config key 'backbone'); use one of {sorted(BACKBONES)}")
    block, layers, inplanes = BACKBONES[backbone]
    net2d = resnet.ResNet(block=block, layers=layers, block_inplanes=inplanes, spatial_dims=2,
                          n_input_channels=int(in_channels), conv1_t_size=7, conv1_t_stride=int(conv1_stride),
                          no_max_pool=bool(no_max_pool), num_classes=1, feed_forward=False)
    extractor = ResNetFPNFeatureExtractor(net2d, 2, returned_layers, fpn_channels)
    n_levels = len(list(returned_layers)) + 1
    scales = list(feature_map_scales) if feature_map_scales else [2**i for i in range(n_levels)]
    if len(scales) != n_levels:
        raise ValueError(f"feature_map_scales needs {n_levels} entries (returned_layers + 1), got {scales}")
    shapes = tuple(tuple(float(v) for v in s) for s in base_anchor_shapes)
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=scales, base_anchor_shapes=shapes)
    network = RetinaNet(spatial_dims=2, num_classes=int(num_classes), num_anchors=len(shapes),
                        feature_extractor=extractor, size_divisible=int(size_divisible))
    det = BUSRetinaNetDetector(network, anchors, spatial_dims=2, num_classes=int(num_classes),
                               size_divisible=int(size_divisible))
    det.set_atss_matcher(num_candidates=int(atss_candidates), center_in_gt=False)
    det.set_hard_negative_sampler(batch_size_per_image=int(hard_negative_batch), positive_fraction=float(positive_fraction),
                                  pool_size=float(hard_negative_pool), min_neg=int(min_neg))
    det.set_target_keys(box_key=box_key, label_key=label_key)
    det.set_box_selector_parameters(score_thresh=float(score_thresh), topk_candidates_per_level=int(topk_candidates_per_level),
                                    nms_thresh=float(nms_thresh), detections_per_img=int(detections_per_img))
    return det


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
