"""Adaptive Training Sample Selection (Zhang et al., "Bridging the Gap Between
Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection",
CVPR 2020, Algorithm 1), as MMDetection 3.3's ``ATSSAssigner`` (``alpha=None``) does it.

For every ground-truth box ``g``:

1. on each pyramid level pick the ``k`` anchors whose centres are closest (L2) to the
   centre of ``g`` (``min(k, anchors on the level)``), giving the candidates ``C_g``;
2. compute the IoUs ``D_g`` of the candidate anchor boxes with ``g``,
   ``t_g = mean(D_g) + std(D_g)`` (unbiased std, as ``torch.std``);
3. a candidate is positive for ``g`` if ``IoU >= t_g`` and its centre lies inside ``g``
   (the smallest centre-to-side distance is ``> 0.01`` pixel, MMDetection's margin);
4. an anchor positive for several boxes goes to the one with the highest IoU (ties: the
   lowest gt index).

Ignore regions are not used: MMDetection's GFL default (``ignore_iof_thr=-1``) never
looks at ``gt_bboxes_ignore``, so neither does this assigner.

Box format: ``x1, y1, x2, y2`` pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_NEG_INF = -100000000.0


@dataclass(frozen=True)
class AssignResult:
    """Per-anchor assignment.

    Attributes:
        gt_inds: ``[A]`` int64, index of the assigned gt box, ``-1`` for background.
        labels: ``[A]`` int64, class of the assigned gt box, ``-1`` for background.
        max_overlaps: ``[A]`` float, IoU with the assigned box (``-1e8`` for background).
    """

    gt_inds: Tensor
    labels: Tensor
    max_overlaps: Tensor

    @property
    def pos_mask(self) -> Tensor:
        """``[A]`` bool, anchors assigned to a gt box."""
        return self.gt_inds >= 0


def box_iou_eps(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Pairwise IoU ``[A, G]`` with the union bounded below by ``eps``, as MMDetection's
    ``bbox_overlaps`` (torchvision's ``box_iou`` has no such guard)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


def box_centers(boxes: Tensor) -> Tensor:
    """``[N, 4]`` x1,y1,x2,y2 -> ``[N, 2]`` centres ``(cx, cy)``."""
    return torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0), dim=1)


class ATSSAssigner:
    """ATSS assigner.

    Args:
        topk: candidates per level and gt box (9 in the paper and in GFL).
        center_margin: a candidate's centre must be more than this many pixels inside
            every side of the gt box (MMDetection: 0.01).
    """

    def __init__(self, topk: int = 9, center_margin: float = 0.01) -> None:
        self.topk = topk
        self.center_margin = center_margin

    def __call__(
        self, anchors: Tensor, num_level_anchors: list[int], gt_boxes: Tensor, gt_labels: Tensor
    ) -> AssignResult:
        return self.assign(anchors, num_level_anchors, gt_boxes, gt_labels)

    def select_candidates(self, distances: Tensor, num_level_anchors: list[int]) -> Tensor:
        """Step 1: per level, the ``k`` anchors closest to each gt centre.

        Args:
            distances: ``[A, G]`` centre distances, anchors ordered level by level.
            num_level_anchors: anchors per level, summing to ``A``.

        Returns:
            ``[K, G]`` int64 anchor indices, ``K = sum_l min(k, A_l)``.
        """
        candidates = []
        start = 0
        for count in num_level_anchors:
            end = start + count
            k = min(self.topk, count)
            if k > 0:
                _, idx = distances[start:end].topk(k, dim=0, largest=False)
                candidates.append(idx + start)
            start = end
        return torch.cat(candidates, dim=0)

    def assign(
        self, anchors: Tensor, num_level_anchors: list[int], gt_boxes: Tensor, gt_labels: Tensor
    ) -> AssignResult:
        """Assign anchors of one image.

        Args:
            anchors: ``[A, 4]`` anchor boxes x1,y1,x2,y2 (valid anchors only), ordered
                level by level.
            num_level_anchors: number of anchors of each level (sum ``A``).
            gt_boxes: ``[G, 4]`` x1,y1,x2,y2.
            gt_labels: ``[G]`` int64.

        Returns:
            :class:`AssignResult` with ``[A]`` tensors.
        """
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        device = anchors.device
        gt_inds = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
        labels = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
        if num_gt == 0 or num_anchors == 0:
            return AssignResult(gt_inds, labels, anchors.new_zeros((num_anchors,)))

        overlaps = box_iou_eps(anchors, gt_boxes)  # [A, G]
        anchor_pts = box_centers(anchors)  # [A, 2]
        gt_pts = box_centers(gt_boxes)  # [G, 2]
        distances = (anchor_pts[:, None, :] - gt_pts[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]

        cand = self.select_candidates(distances, num_level_anchors)  # [K, G]
        gt_range = torch.arange(num_gt, device=device)
        cand_overlaps = overlaps[cand, gt_range]  # [K, G]
        thr = cand_overlaps.mean(0) + cand_overlaps.std(0)  # t_g = m_g + v_g
        is_pos = cand_overlaps >= thr[None, :]

        # Centre of the candidate inside the gt box (l, t, r, b all > margin).
        cx = anchor_pts[cand, 0]
        cy = anchor_pts[cand, 1]
        ltrb = torch.stack(
            (cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy), dim=0
        )
        is_pos &= ltrb.min(dim=0).values > self.center_margin

        # An anchor positive for several gts goes to the one with the highest IoU.
        masked = torch.full_like(overlaps, _NEG_INF)  # [A, G]
        cols = gt_range.expand_as(cand)
        masked[cand[is_pos], cols[is_pos]] = overlaps[cand[is_pos], cols[is_pos]]
        max_overlaps, argmax = masked.max(dim=1)
        assigned = max_overlaps != _NEG_INF
        gt_inds[assigned] = argmax[assigned]
        labels[assigned] = gt_labels[argmax[assigned]].long()
        return AssignResult(gt_inds, labels, max_overlaps)
