"""One factory for every (detector, backbone, number of classes), as MMDetection's configs.

- ``gfl``: FPN over C3-C5 with two extra stride-2 convs on the P5 output -> P3-P7
  (strides 8-128), GFL head (``gfl_r50_fpn_1x_coco``).
- ``faster_rcnn``: FPN over C2-C5 with P6 by max pooling -> P2-P6 (strides 4-64),
  RPN + two-FC RoI head (``faster-rcnn_r50_fpn_1x_coco``).
"""
from __future__ import annotations

import os

import torch

from pipeline.errors import UserError
from pipeline.models.backbone import ResNetBackbone
from pipeline.models.complexity import count_gflops
from pipeline.models.detector import Detector
from pipeline.models.faster_rcnn import FasterRCNNHeads
from pipeline.models.fpn import FPN
from pipeline.models.gfl_head import GFLHead

BACKBONES: dict[str, int] = {"resnet18": 18, "resnet50": 50, "resnet101": 101}
DETECTORS = ("gfl", "faster_rcnn")


def build_detector(detector: str, backbone: str, num_classes: int, weights: str | os.PathLike = "none",
                   fpn_channels: int = 256, norm_eval: bool | None = None,
                   frozen_stages: int | None = None) -> Detector:
    """Build a detector; unknown names end with one clear line.

    ``norm_eval`` / ``frozen_stages``: the backbone's MMDetection switches (``None``: derived
    from ``weights``, see :class:`~pipeline.models.backbone.ResNetBackbone`).
    """
    if detector not in DETECTORS:
        raise UserError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    try:
        body = ResNetBackbone(BACKBONES[backbone], out_indices=(0, 1, 2, 3), weights=weights,
                              frozen_stages=frozen_stages, norm_eval=norm_eval)
    except (ValueError, RuntimeError) as err:
        raise UserError(str(err)) from None
    channels = list(body.out_channels)
    if detector == "gfl":
        neck = FPN(channels, fpn_channels, num_outs=5, start_level=1, add_extra_convs="on_output")
        head = GFLHead(num_classes, in_channels=fpn_channels, feat_channels=256)
        strides = (8, 16, 32, 64, 128)
    else:
        neck = FPN(channels, fpn_channels, num_outs=5, start_level=0, add_extra_convs=False)
        head = FasterRCNNHeads(num_classes, in_channels=fpn_channels)
        strides = (4, 8, 16, 32, 64)
    return Detector(detector, backbone, body, neck, head, num_classes, strides)


def detector_gflops(model: Detector, input_shape: tuple[int, int, int, int] = (1, 3, 224, 224),
                    num_proposals: int = 1000) -> float:
    """GFLOPs of one inference pass (one multiply-add = one FLOP, as the paper's Table 4).

    GFL: backbone + FPN + head outputs (post-processing excluded). Faster R-CNN: backbone +
    FPN + RPN head + the RoI head on ``num_proposals`` boxes (the test-time proposal count),
    since its cost depends on the number of proposals rather than on the image alone.
    """
    if model.name == "gfl":
        return count_gflops(lambda x: model.head(model.features(x)), input_shape)
    heads = model.head
    height, width = input_shape[-2:]
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(num_proposals, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    wh = torch.rand(num_proposals, 2, generator=generator) * torch.tensor([width * 0.5, height * 0.5]) + 4
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([width, height]))], dim=1)

    def forward(x: torch.Tensor) -> None:
        feats = model.features(x)
        heads.rpn.head(feats)
        roi = heads.roi_head
        roi.box_predictor(roi.box_head(roi.box_roi_pool(feats, [boxes.to(x.device)] * x.shape[0])))

    return count_gflops(forward, input_shape)
