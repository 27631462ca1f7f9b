"""The GFL detector as one static graph: backbone + FPN + head -> decode -> top-k -> NMS.

Reproduces :meth:`pipeline.models.gfl_head.GFLHead.predict` (MMDetection's GFL test
config) with fixed shapes, so it exports to ONNX and TensorRT:

1. per FPN level ``l`` (``H_l x W_l`` locations, ``C`` classes): scores ``sigmoid`` of the
   class logits (GFL Eq. 1's joint quality score), distances = the distribution integral
   ``sum_i softmax(logits)_i * i`` (GFL Eq. 5) times the level's stride;
2. the ``nms_pre`` best (location, class) pairs with score > ``score_thr`` per level (a
   fixed ``TopK``; pairs not above the threshold keep slot but get score 0);
3. boxes = anchor centre -/+ distances, clipped to each image's valid size
   ``image_sizes[n] = (h, w)`` (the resized image before padding, as ``predict`` clips);
   zero-width or zero-height boxes are dropped (score 0);
4. class-aware NMS (IoU ``nms_iou``) and the ``max_per_img`` best detections, padded.

Inputs: ``images [N, 3, H, W]`` float32 normalised and padded exactly as
:class:`pipeline.data.dataset.CuratedDataset` does; ``image_sizes [N, 2]`` float32 ``(h, w)``.
Outputs: ``num_dets [N, 1]`` int32, ``boxes [N, K, 4]`` float32 x1,y1,x2,y2 in input pixels,
``scores [N, K]`` float32, ``labels [N, K]`` int32 (``-1`` in unused slots).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.deploy.graph_ops import class_aware_nms, padded_top_k
from pipeline.models.detector import Detector
from pipeline.models.gfl_head import GFLHead, GFLTestConfig


class GFLExport(nn.Module):
    """End-to-end GFL for a fixed input size ``(H, W)`` (batch may vary).

    Args:
        model: a ``gfl`` :class:`Detector` (weights are shared, not copied).
        input_hw: padded network input ``(H, W)``.
        cfg: test settings (default: the head's ``test_cfg``).
    """

    def __init__(self, model: Detector, input_hw: tuple[int, int], cfg: GFLTestConfig | None = None) -> None:
        super().__init__()
        if model.name != "gfl":
            raise ValueError(f"GFLExport needs a gfl detector, got {model.name!r}")
        self.backbone = model.backbone
        self.neck = model.neck
        self.head: GFLHead = model.head
        self.cfg = cfg or model.head.test_cfg
        self.num_classes = model.num_classes
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        with torch.no_grad():
            feats = self.neck(self.backbone(torch.zeros(1, 3, *self.input_hw)))
        sizes = [tuple(int(v) for v in f.shape[-2:]) for f in feats]
        for level, anchors in enumerate(self.head.get_anchors(sizes, "cpu")):
            self.register_buffer(f"centers_{level}", GFLHead.anchor_centers(anchors), persistent=False)
        self.level_sizes = sizes
        # per level: candidates kept before NMS
        self.level_k = [min(self.cfg.nms_pre, h * w * self.num_classes) for h, w in sizes]
        self.max_det = min(self.cfg.max_per_img, sum(self.level_k))
        self.class_offset = float(max(self.input_hw) + 1)

    def _level_candidates(self, cls: Tensor, reg: Tensor, centers: Tensor, stride: int, k: int,
                          image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One level: ``cls [N, C, h, w]``, ``reg [N, 4(n+1), h, w]``, ``centers [h*w, 2]``
        -> boxes ``[N, k, 4]``, scores ``[N, k]`` (0 = not a candidate), labels ``[N, k]``."""
        n, c = cls.shape[0], self.num_classes
        scores = cls.permute(0, 2, 3, 1).reshape(n, -1).sigmoid()            # [N, hw*C], location-major
        bins = self.head.reg_max + 1
        dist = self.head.integral(reg.permute(0, 2, 3, 1).reshape(n, -1, 4 * bins)) * stride  # [N, hw, 4]
        scores = torch.where(scores > self.cfg.score_thr, scores, torch.zeros_like(scores))
        top, idx = scores.topk(k, dim=1)                                      # [N, k]
        loc = torch.div(idx, c, rounding_mode="floor")
        labels = idx - loc * c
        d = dist.gather(1, loc.unsqueeze(-1).expand(-1, -1, 4))               # [N, k, 4]
        ctr = centers[loc]                                                    # [N, k, 2]
        h = image_sizes[:, 0:1]
        w = image_sizes[:, 1:2]
        zero = torch.zeros_like(top)
        x1 = torch.minimum(torch.maximum(ctr[..., 0] - d[..., 0], zero), w)
        y1 = torch.minimum(torch.maximum(ctr[..., 1] - d[..., 1], zero), h)
        x2 = torch.minimum(torch.maximum(ctr[..., 0] + d[..., 2], zero), w)
        y2 = torch.minimum(torch.maximum(ctr[..., 1] + d[..., 3], zero), h)
        boxes = torch.stack((x1, y1, x2, y2), dim=-1)
        ok = (x2 - x1 > 0) & (y2 - y1 > 0)
        return boxes, torch.where(ok, top, zero), labels

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See the module docstring for inputs and outputs."""
        feats = list(self.neck(self.backbone(images)))
        cls_scores, bbox_preds = self.head(feats)
        boxes_l, scores_l, labels_l = [], [], []
        for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            centers = getattr(self, f"centers_{level}")
            b, s, lab = self._level_candidates(cls.float(), reg.float(), centers, self.head.strides[level],
                                               self.level_k[level], image_sizes.float())
            boxes_l.append(b)
            scores_l.append(s)
            labels_l.append(lab)
        boxes, scores, labels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(labels_l, 1)
        selected = class_aware_nms(boxes, scores, labels, self.cfg.nms_iou, self.cfg.score_thr, self.max_det,
                                   self.class_offset)
        return padded_top_k(selected, boxes, scores, labels, self.max_det)
