"""Faster R-CNN as one static graph: backbone + FPN + RPN -> fixed proposals -> static
multi-level RoIAlign -> box head -> decode -> NMS.

Reproduces :meth:`pipeline.models.faster_rcnn.FasterRCNNHeads.predict` (test config:
RPN ``nms_pre`` 1000 per level, NMS 0.7 across levels kept apart, 1000 proposals; RoI head
``score > 0.05``, class-wise NMS 0.5, 100 detections) with fixed shapes:

* RPN: per level the ``nms_pre`` best anchors by objectness logit (``TopK``), delta decoding
  (mmdet's ``DeltaXYWHBBoxCoder``, stds 1), sigmoid, clip to the image's valid size, drop
  boxes under ``min_size`` px, NMS with the level as class, the best ``P`` proposals padded
  to a fixed count with a validity mask (invalid slots never produce detections);
* RoIAlign (``aligned=True``, as mmcv): every proposal is pooled on every level used by the
  RoI head, then each keeps the level ``clamp(floor(log2(sqrt(wh) / 56 + 1e-6)), 0, 3)``;
* box head: softmax (background last, dropped), class-specific delta decoding (stds 0.1,
  0.1, 0.2, 0.2; ``dw, dh`` clamped to ``+-log(1000/16)``), clip, class-aware NMS, top-k.

Inputs / outputs as :mod:`pipeline.deploy.gfl_export` (``images [N, 3, H, W]`` normalised,
``image_sizes [N, 2]`` float32 ``(h, w)``; ``num_dets``, ``boxes`` x1,y1,x2,y2 input pixels,
``scores``, ``labels``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import roi_align

from pipeline.deploy.graph_ops import class_aware_nms, padded_top_k
from pipeline.models.detector import Detector
from pipeline.models.faster_rcnn import FasterRCNNHeads

INVALID = -1.0  # score of a slot that is not a candidate (all real scores are >= 0)


def _clip(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clamp ``[N, M, 4]`` (or ``[N, M, C, 4]``) boxes to ``[0, w] x [0, h]`` per image,
    ``image_sizes [N, 2]`` ``(h, w)``."""
    shape = (-1,) + (1,) * (boxes.dim() - 2)
    h = image_sizes[:, 0].reshape(shape)
    w = image_sizes[:, 1].reshape(shape)
    zero = torch.zeros_like(boxes[..., 0])
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


class FasterRCNNExport(nn.Module):
    """End-to-end Faster R-CNN for a fixed input size ``(H, W)`` (batch may vary).

    Args:
        model: a ``faster_rcnn`` :class:`Detector` (weights shared).
        input_hw: padded network input ``(H, W)``.
    """

    def __init__(self, model: Detector, input_hw: tuple[int, int]) -> None:
        super().__init__()
        if model.name != "faster_rcnn":
            raise ValueError(f"FasterRCNNExport needs a faster_rcnn detector, got {model.name!r}")
        self.backbone = model.backbone
        self.neck = model.neck
        heads: FasterRCNNHeads = model.head
        self.rpn = heads.rpn
        self.roi = heads.roi_head
        self.num_classes = model.num_classes
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        with torch.no_grad():
            feats = list(self.neck(self.backbone(torch.zeros(1, 3, *self.input_hw))))
            level_anchors = self.rpn.anchor_generator(feats)
        self.register_buffer("anchors", torch.cat(level_anchors), persistent=False)    # [T, 4]
        self.level_counts = [int(a.shape[0]) for a in level_anchors]
        pre = self.rpn._pre_nms_top_n["testing"]
        self.level_k = [min(pre, n) for n in self.level_counts]
        self.num_proposals = min(self.rpn._post_nms_top_n["testing"], sum(self.level_k))
        self.max_det = min(self.roi.detections_per_img, self.num_proposals * self.num_classes)
        self.class_offset = float(max(self.input_hw) + 1)

    def proposals(self, feats: list[Tensor], image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """RPN: ``[N, P, 4]`` proposals (descending objectness) and ``[N, P]`` bool validity."""
        n = feats[0].shape[0]
        objectness, deltas = self.rpn.head(feats)
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        logits = objectness.float().reshape(n, -1)                        # [N, T]
        deltas = deltas.float().reshape(n, -1, 4)                         # [N, T, 4]
        boxes_l, scores_l, levels_l = [], [], []
        start = 0
        for level, (count, k) in enumerate(zip(self.level_counts, self.level_k)):
            top, idx = logits[:, start:start + count].topk(k, dim=1)
            d = deltas[:, start:start + count].gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
            a = self.anchors[start:start + count][idx]                        # [N, k, 4]
            boxes = self.rpn.box_coder.decode_single(d.reshape(-1, 4), a.reshape(-1, 4)).reshape(n, k, 4)
            boxes_l.append(boxes)
            scores_l.append(top.sigmoid())
            levels_l.append(torch.full_like(idx, level))
            start += count
        boxes = _clip(torch.cat(boxes_l, 1), image_sizes)
        scores, levels = torch.cat(scores_l, 1), torch.cat(levels_l, 1)
        wh = boxes[..., 2:] - boxes[..., :2]
        ok = (wh[..., 0] >= self.rpn.min_size) & (wh[..., 1] >= self.rpn.min_size) & (scores >= self.rpn.score_thresh)
        scores = torch.where(ok, scores, torch.full_like(scores, INVALID))
        selected = class_aware_nms(boxes, scores, levels, self.rpn.nms_thresh, INVALID / 2, self.num_proposals,
                                   self.class_offset)
        num, props, _, _ = padded_top_k(selected, boxes, scores, levels, self.num_proposals)
        valid = torch.arange(self.num_proposals, device=props.device).unsqueeze(0) < num
        return props, valid

    def pool(self, feats: list[Tensor], proposals: Tensor) -> Tensor:
        """Static multi-level RoIAlign: ``[N, P, 4]`` -> ``[N * P, C, S, S]``."""
        n, p = proposals.shape[:2]
        boxes = proposals.reshape(-1, 4)
        batch_idx = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(p).unsqueeze(1)
        rois = torch.cat([batch_idx, boxes], dim=1)                                # [N*P, 5]
        pool = self.roi.box_roi_pool
        levels = pool.map_roi_levels(boxes)                                        # [N*P]
        out = None
        for level, stride in enumerate(pool.strides):
            pooled = roi_align(feats[level].float(), rois, pool.output_size, 1.0 / stride, pool.sampling_ratio,
                               aligned=True)
            pooled = pooled * (levels == level).to(pooled.dtype).reshape(-1, 1, 1, 1)
            out = pooled if out is None else out + pooled
        return out

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See the module docstring for inputs and outputs."""
        image_sizes = image_sizes.float()
        feats = list(self.neck(self.backbone(images)))
        proposals, valid = self.proposals(feats, image_sizes)
        n, p = proposals.shape[:2]
        c = self.num_classes
        logits, deltas = self.roi.box_predictor(self.roi.box_head(self.pool(feats, proposals)))
        scores = torch.softmax(logits.float(), dim=-1)[:, :c].reshape(n, p * c)        # [N, P*C]
        boxes = self.roi.box_coder.decode_single(deltas.float(), proposals.reshape(-1, 4))   # [N*P, 4C]
        boxes = _clip(boxes.reshape(n, p * c, 4), image_sizes)
        labels = torch.arange(c, device=images.device).repeat(p).unsqueeze(0).expand(n, -1)
        keep = valid.unsqueeze(-1).expand(-1, -1, c).reshape(n, p * c) & (scores > self.roi.score_thresh)
        scores = torch.where(keep, scores, torch.full_like(scores, INVALID))
        if p * c > self.roi.max_candidates:     # as the PyTorch head: NMS sees the top max_candidates only
            scores, top = scores.topk(self.roi.max_candidates, dim=1)
            boxes = boxes.gather(1, top.unsqueeze(-1).expand(-1, -1, 4))
            labels = labels.gather(1, top)
        selected = class_aware_nms(boxes, scores, labels, self.roi.nms_thresh, self.roi.score_thresh, self.max_det,
                                   self.class_offset)
        return padded_top_k(selected, boxes, scores, labels, self.max_det)
