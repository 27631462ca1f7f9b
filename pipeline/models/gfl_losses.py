"""Losses of Generalized Focal Loss (Li et al., "Generalized Focal Loss: Learning
Qualified and Distributed Bounding Boxes for Dense Object Detection", NeurIPS 2020).

All functions return *unreduced* per-sample losses; weighting and averaging is done by
the caller (see :mod:`pipeline.models.gfl_head`), as MMDetection 3.3 does with its
``weight_reduce_loss`` (``sum(loss * weight) / (avg_factor + eps)``).

Box format everywhere: ``x1, y1, x2, y2`` (width is ``x2 - x1``, no +1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``torch.finfo(torch.float32).eps``: MMDetection adds it to every ``avg_factor``.
AVG_EPS = float(torch.finfo(torch.float32).eps)


def quality_focal_loss(pred_logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """Quality Focal Loss, GFL paper Eq. (QFL):

        QFL(sigma) = -|y - sigma|^beta * ((1 - y) log(1 - sigma) + y log(sigma))

    applied independently to every class logit (sigmoid, not softmax). For the class an
    anchor is assigned to, ``y`` is its IoU (quality) target ``scores``; for every other
    class, and for every class of a background anchor, ``y = 0`` (the term reduces to the
    focal loss ``-sigma^beta log(1 - sigma)``).

    Args:
        pred_logits: ``[N, C]`` raw classification logits.
        labels: ``[N]`` int64 class index in ``0..C-1``; ``C`` (or any value outside
            ``[0, C)``) means background.
        scores: ``[N]`` float IoU targets in ``[0, 1]`` (used only at positives).
        beta: the modulating exponent (2 in the paper).

    Returns:
        ``[N]`` loss summed over the ``C`` classes.

    Note:
        As in MMDetection the modulating factor ``|y - sigma|^beta`` is not detached.
    """
    sigma = pred_logits.sigmoid()
    # Negative term for every (anchor, class): y = 0.
    loss = F.binary_cross_entropy_with_logits(
        pred_logits, torch.zeros_like(pred_logits), reduction="none"
    ) * sigma.pow(beta)
    num_classes = pred_logits.shape[1]
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    if pos.numel() > 0:
        pos_labels = labels[pos].long()
        pos_logits = pred_logits[pos, pos_labels]
        y = scores[pos].to(pred_logits.dtype)
        modulator = (y - sigma[pos, pos_labels]).abs().pow(beta)
        pos_loss = F.binary_cross_entropy_with_logits(pos_logits, y, reduction="none") * modulator
        loss = loss.index_put((pos, pos_labels), pos_loss)
    return loss.sum(dim=1)


def distribution_focal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss, GFL paper Eq. (DFL):

        DFL(S_i, S_{i+1}) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})

    where ``y_i = floor(y)``, ``y_{i+1} = y_i + 1`` and ``S = softmax(pred)``.

    Args:
        pred: ``[N, n+1]`` logits of the discretised distance distribution.
        target: ``[N]`` float distances in ``[0, n)`` (in stride units; MMDetection clamps
            targets to ``n - 0.1`` so ``y_{i+1} <= n``).

    Returns:
        ``[N]`` loss.
    """
    left = target.long()
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    return (
        F.cross_entropy(pred, left, reduction="none") * w_left
        + F.cross_entropy(pred, right, reduction="none") * w_right
    )


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of row-aligned boxes.

    Args:
        boxes1, boxes2: ``[N, 4]`` x1,y1,x2,y2.
        eps: lower bound of the union (MMDetection's ``bbox_overlaps`` default).

    Returns:
        ``[N]`` IoU.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    union = (area1 + area2 - overlap).clamp(min=eps)
    return overlap / union


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalized IoU loss (Rezatofighi et al., CVPR 2019): ``1 - GIoU``, with

        GIoU = IoU - (|C| - |A u B|) / |C|

    where ``C`` is the smallest box enclosing both boxes.

    Args:
        pred, target: ``[N, 4]`` x1,y1,x2,y2, row-aligned.
        eps: lower bound of the union and enclosing areas (MMDetection's ``GIoULoss``
            uses 1e-7).

    Returns:
        ``[N]`` loss in ``[0, 2]``.
    """
    area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    union = (area1 + area2 - overlap).clamp(min=eps)
    iou = overlap / union
    enc_lt = torch.min(pred[:, :2], target[:, :2])
    enc_rb = torch.max(pred[:, 2:], target[:, 2:])
    enc_wh = (enc_rb - enc_lt).clamp(min=0)
    enclose = (enc_wh[:, 0] * enc_wh[:, 1]).clamp(min=eps)
    giou = iou - (enclose - union) / enclose
    return 1.0 - giou


def integral(pred: Tensor, reg_max: int) -> Tensor:
    """Integral (expectation) of the general distribution, GFL paper Eq. (5):

        y_hat = sum_{i=0}^{n} P(y_i) * y_i,   P = softmax(logits),  y_i = i

    Args:
        pred: ``[..., 4 * (reg_max + 1)]`` distance-distribution logits, the four sides
            (left, top, right, bottom) concatenated.
        reg_max: ``n``, the largest bin.

    Returns:
        ``[..., 4]`` expected distances in bin (stride) units.
    """
    shape = pred.shape[:-1]
    prob = F.softmax(pred.reshape(-1, reg_max + 1), dim=1)
    project = torch.arange(reg_max + 1, dtype=prob.dtype, device=prob.device)
    return F.linear(prob, project).reshape(*shape, 4)
