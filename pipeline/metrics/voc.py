"""VOC-style area AP at one IoU threshold, with MMDetection 3.3 ``eval_map`` semantics.

Reproduces ``eval_map(iou_thr=0.5, scale_ranges=None, eval_mode='area',
use_legacy_coordinate=False)`` with its default ``tpfp_default``:

* per class and image, IoU (float32, ``inter / max(area_d + area_g - inter, 1e-6)``, no ``+1``)
  of every detection against the ground truths followed by the ignore boxes of that class;
* every detection takes the box with its maximum IoU (first on ties), whether or not that box
  was already matched. Going through the image's detections by descending score:
  ``max IoU >= thr`` and the box is an ignore box -> neither TP nor FP; ``max IoU >= thr`` and
  the box is a ground truth not yet covered -> TP (the box becomes covered); already covered
  -> FP; ``max IoU < thr`` -> FP. An image with no boxes of the class: all detections FP;
* per class, detections of all images sorted by descending score, cumulative TP/FP give
  ``recall = TP / max(num_gts, eps)`` and ``precision = TP / max(TP + FP, eps)``;
* area AP (VOC 2010+): ``mrec = [0, recall, 1]``, ``mpre = [0, precision, 0]``, ``mpre`` made
  monotone non-increasing from the right, ``AP = sum_i (mrec[i+1] - mrec[i]) * mpre[i+1]`` over
  the points where recall changes. A class without detections has AP 0;
* ``num_gts`` counts ground truths only (not ignore boxes); the mean AP averages the classes
  with ``num_gts > 0`` (0 if there is none). ``area_ranges=None``: no size filtering.

Ties between equal scores are broken stably (input order, then image order); MMDetection
uses numpy's default (unstable) sort there.

Boxes: ``x1, y1, x2, y2`` pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.metrics.coco import DetectionSet, GroundTruth, block_slices, group_runs, padded_index

_EPS32 = np.finfo(np.float32).eps
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class VocResult:
    """VOC AP per class as fractions in [0, 1].

    Attributes:
        ap: ``[C]`` float32 AP per class.
        num_gts: ``[C]`` int64 ground truths (ignore boxes excluded).
        num_dets: ``[C]`` int64 detections.
        mean_ap: mean of ``ap`` over classes with ``num_gts > 0``.
    """

    ap: np.ndarray
    num_gts: np.ndarray
    num_dets: np.ndarray
    mean_ap: float


def bbox_iou_f32(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """MMDetection's ``bbox_overlaps(mode='iou', use_legacy_coordinate=False)`` in float32.

    Args:
        dets: ``[..., D, 4]``, gts: ``[..., G, 4]`` x1,y1,x2,y2.

    Returns:
        ``[..., D, G]`` float32 ``max(iw, 0) * max(ih, 0) / max(area_d + area_g - inter, 1e-6)``.
    """
    d = dets[..., :, None, :].astype(np.float32)
    g = gts[..., None, :, :].astype(np.float32)
    area_d = (d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    iw = np.maximum(np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]), 0)
    ih = np.maximum(np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]), 0)
    inter = iw * ih
    union = np.maximum(area_g + area_d - inter, np.float32(1e-6))
    return inter / union


def area_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2010+ area under the monotone precision envelope.

    Args:
        recall: ``[N]`` cumulative recall (non-decreasing).
        precision: ``[N]`` cumulative precision.

    Returns:
        ``sum over i with mrec[i+1] != mrec[i] of (mrec[i+1] - mrec[i]) * mpre[i+1]`` where
        ``mrec = [0, recall, 1]`` and ``mpre`` = right-to-left running max of
        ``[0, precision, 0]``; as float32 like MMDetection.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.float32(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1])))


def _best_boxes(gt_image: np.ndarray, gt_boxes: np.ndarray, dt_image: np.ndarray,
                dt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max IoU and its box (flat GT index, first on ties) for every detection.

    Args:
        gt_image, gt_boxes: ``[G]``, ``[G, 4]`` sorted by image (ground truths, then ignores).
        dt_image, dt_boxes: ``[N]``, ``[N, 4]`` sorted by image.

    Returns:
        ``(iou_max [N] float32, best [N] int64)``; ``-1`` / ``-1`` for detections in images
        with no box.
    """
    n = dt_image.size
    iou_max = np.full(n, -1.0, dtype=np.float32)
    best = np.full(n, -1, dtype=np.int64)
    g_vals, g_starts, g_counts = group_runs(gt_image)
    d_vals, d_starts, d_counts = group_runs(dt_image)
    _, gi, di = np.intersect1d(g_vals, d_vals, assume_unique=True, return_indices=True)
    order = np.argsort(-d_counts[di], kind="stable")
    gi, di = gi[order], di[order]
    for blk in block_slices(d_counts[di], g_counts[gi], 4, _BLOCK_ELEMENTS):   # ~4 temporaries
        d_idx, d_valid = padded_index(d_starts[di[blk]], d_counts[di[blk]])
        g_idx, g_valid = padded_index(g_starts[gi[blk]], g_counts[gi[blk]])
        ious = bbox_iou_f32(dt_boxes[d_idx], gt_boxes[g_idx])
        ious = np.where(g_valid[:, None, :], ious, np.float32(-1.0))
        arg = np.argmax(ious, axis=-1)                                   # [B, D] first max
        rows, cols = np.nonzero(d_valid)
        flat = d_idx[rows, cols]
        best[flat] = g_idx[rows, arg[rows, cols]]
        iou_max[flat] = ious[rows, cols, arg[rows, cols]]
    return iou_max, best


def tpfp_class(gt_image: np.ndarray, gt_boxes: np.ndarray, gt_ignore: np.ndarray,
               dt_image: np.ndarray, dt_boxes: np.ndarray,
               iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """MMDetection's ``tpfp_default`` for one class over all images, vectorised.

    Args:
        gt_image, gt_boxes, gt_ignore: ``[G]``, ``[G, 4]``, ``[G]`` sorted by image, ground
            truths before ignore boxes inside an image.
        dt_image, dt_boxes: ``[N]``, ``[N, 4]`` sorted by image, score descending inside an
            image (stable).
        iou_thr: IoU threshold (``>=``).

    Returns:
        ``(tp [N], fp [N])`` float32 0/1 flags in the input order.
    """
    iou_max, best = _best_boxes(gt_image, gt_boxes, dt_image, dt_boxes)
    hit = (best >= 0) & (iou_max >= np.float32(iou_thr))
    hit_ignore = hit & gt_ignore[np.maximum(best, 0)] if gt_ignore.size else np.zeros_like(hit)
    hit_gt = hit & ~hit_ignore
    # the first detection (score order) hitting a box covers it; later ones are FP
    cand = np.flatnonzero(hit_gt)
    first = np.zeros(dt_image.size, dtype=bool)
    if cand.size:
        order = cand[np.argsort(best[cand], kind="stable")]
        lead = np.concatenate(([True], best[order][1:] != best[order][:-1]))
        first[order[lead]] = True
    tp = first.astype(np.float32)
    fp = (~hit | (hit_gt & ~first)).astype(np.float32)
    return tp, fp


def eval_voc_map(gt: GroundTruth, dets: DetectionSet, num_classes: int,
                 iou_thr: float = 0.5) -> VocResult:
    """VOC area AP per class and their mean (MMDetection 3.3 ``eval_map`` semantics).

    ``gt.ignore`` marks the ignore boxes (MMDetection's ``bboxes_ignore`` of that class).
    """
    ap = np.zeros(num_classes, dtype=np.float32)
    num_gts = np.zeros(num_classes, dtype=np.int64)
    num_dets = np.zeros(num_classes, dtype=np.int64)
    for cls in range(num_classes):
        gsel = np.flatnonzero(gt.labels == cls)
        g_order = gsel[np.lexsort((gt.ignore[gsel], gt.image[gsel]))]
        num_gts[cls] = int(np.count_nonzero(~gt.ignore[gsel]))
        dsel = np.flatnonzero(dets.labels == cls)
        scores = dets.scores[dsel].astype(np.float32)
        d_order = dsel[np.lexsort((-scores, dets.image[dsel]))]
        num_dets[cls] = d_order.size
        tp, fp = tpfp_class(gt.image[g_order], gt.boxes[g_order], gt.ignore[g_order],
                            dets.image[d_order], dets.boxes[d_order], iou_thr)
        final = np.argsort(-dets.scores[d_order].astype(np.float32), kind="stable")
        tp_c = np.cumsum(tp[final], dtype=np.float32)
        fp_c = np.cumsum(fp[final], dtype=np.float32)
        recall = tp_c.astype(np.float64) / max(float(num_gts[cls]), float(_EPS32))
        precision = tp_c / np.maximum(tp_c + fp_c, _EPS32)
        ap[cls] = area_ap(recall, precision)
    with_gt = ap[num_gts > 0]
    mean_ap = float(with_gt.mean()) if with_gt.size else 0.0
    return VocResult(ap=ap, num_gts=num_gts, num_dets=num_dets, mean_ap=mean_ap)
