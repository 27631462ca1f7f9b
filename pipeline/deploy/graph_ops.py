"""Static-shape post-processing ops for export: ONNX ``NonMaxSuppression`` and padded top-k.

Both run eagerly in PyTorch (so an export wrapper can be checked against ``model.predict``)
and trace to plain ONNX ops (opset >= 11) that ONNX Runtime and TensorRT's native NMS layer
understand. Box format: x1,y1,x2,y2 in network-input pixels.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (``center_point_box=0``): per image and class, greedy NMS
    over the boxes whose score exceeds ``score_thr``, at most ``max_per_class`` kept.

    Inputs ``boxes [N, M, 4]`` float32, ``scores [N, C, M]`` float32; output
    ``[S, 3]`` int64 rows ``(image, class, box)``.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_thr: float,  # type: ignore[override]
                score_thr: float) -> Tensor:
        rows = []
        for n in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                cand = torch.where(scores[n, c] > score_thr)[0]
                keep = cand[nms(boxes[n, cand], scores[n, c, cand], iou_thr)][:max_per_class]
                rows.append(torch.stack([torch.full_like(keep, n), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows).to(torch.int64) if rows else boxes.new_zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_thr: float, score_thr: float):  # pragma: no cover
        return g.op(
            "NonMaxSuppression", boxes, scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
            center_point_box_i=0,
        )


def class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thr: float, score_thr: float,
                    max_keep: int, class_offset: float) -> Tensor:
    """Class-aware NMS as torchvision's ``batched_nms``: boxes of different classes never
    suppress each other because each class is shifted by ``label * class_offset`` pixels
    (``class_offset`` > the largest coordinate), then one single-class ONNX NMS runs.

    Args:
        boxes: ``[N, M, 4]`` candidates; scores: ``[N, M]`` (``<= score_thr`` = not a
            candidate); labels: ``[N, M]`` int64 class of each candidate.
        max_keep: at most this many boxes kept per image (the detector's ``max_per_img``).

    Returns:
        ``[S, 3]`` int64 rows ``(image, 0, candidate index)``.
    """
    shifted = boxes + (labels.to(boxes.dtype) * class_offset).unsqueeze(-1)
    return _NonMaxSuppression.apply(shifted, scores.unsqueeze(1), max_keep, iou_thr, score_thr)


def padded_top_k(selected: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor,
                 k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Turn NMS survivors into the fixed-size outputs of the exported model.

    Args:
        selected: ``[S, 3]`` rows ``(image, class, candidate)`` from NMS.
        boxes: ``[N, M, 4]``; scores: ``[N, M]`` (finite, > -1e4); labels: ``[N, M]`` int64.
        k: output slots per image (``<= M``).

    Returns:
        ``num_dets [N, 1]`` int32, ``boxes [N, k, 4]`` float32, ``scores [N, k]`` float32
        (descending), ``labels [N, k]`` int32; slots past ``num_dets`` hold zeros and
        label ``-1``.
    """
    keep = torch.zeros_like(scores)
    keep[selected[:, 0], selected[:, 2]] = 1.0
    ranked = torch.where(keep > 0, scores, torch.full_like(scores, -1e4))
    top_scores, idx = ranked.topk(k, dim=1)
    valid = keep.gather(1, idx) > 0
    out_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1).to(boxes.dtype)
    out_scores = torch.where(valid, top_scores, torch.zeros_like(top_scores))
    out_labels = torch.where(valid, labels.gather(1, idx), torch.full_like(idx, -1)).to(torch.int32)
    num_dets = valid.to(torch.int32).sum(dim=1, keepdim=True).to(torch.int32)
    return num_dets, out_boxes, out_scores, out_labels
