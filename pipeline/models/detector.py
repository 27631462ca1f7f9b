"""The detector interface every stage uses: features, losses and predict as separate calls.

Knowledge distillation needs exactly this split: imitation losses read the FPN features,
GKD needs d(loss)/d(features), and export wraps features + predict.

    feats = det.features(images)          # list of [N, 256, H/s, W/s], finest level first
    losses = det.losses(feats, batch)     # dict of scalar loss terms
    dets = det.predict(feats, batch)      # list[Detections], boxes in input pixels
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from pipeline.models.backbone import ResNetBackbone
from pipeline.models.fpn import FPN
from pipeline.structures import Batch, Detections


class Head(Protocol):
    def loss(self, feats: list[Tensor], batch: Batch) -> dict[str, Tensor]: ...

    def predict(self, feats: list[Tensor], batch: Batch) -> list[Detections]: ...


class Detector(nn.Module):
    """Backbone (ResNet) -> neck (FPN) -> head (GFL or Faster R-CNN RPN + RoI head).

    Attributes:
        name: ``"gfl"`` or ``"faster_rcnn"``.
        backbone_name: ``"resnet18"`` ...
        num_classes: foreground classes.
        strides: stride of each FPN level returned by :meth:`features`.
    """

    def __init__(self, name: str, backbone_name: str, backbone: ResNetBackbone, neck: FPN, head: nn.Module,
                 num_classes: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.name = name
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.strides = strides
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def features(self, images: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` normalised images -> FPN levels ``[N, C, H/s, W/s]``."""
        return list(self.neck(self.backbone(images)))

    def losses(self, feats: list[Tensor], batch: Batch) -> dict[str, Tensor]:
        """Detection loss terms (already weighted) on the batch's ground truth."""
        return self.head.loss(feats, batch)

    def predict(self, feats: list[Tensor], batch: Batch) -> list[Detections]:
        """Post-processed detections per image, boxes x1,y1,x2,y2 in input pixels."""
        return self.head.predict(feats, batch)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Same as :meth:`features`, so wrappers such as DistributedDataParallel work."""
        return self.features(images)
