"""What a detector gets wrong: per-class precision-recall curves and a confusion matrix.

Both from the same flattened inputs as the metrics (:func:`pipeline.metrics.evaluate.prepare_inputs`):
ground truth ``x1,y1,x2,y2`` in original pixels with ignore regions, detections with scores.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.metrics.coco import class_outcomes, crowd_iou
from pipeline.metrics.evaluate import prepare_inputs

IOU = 0.5
MAX_DETS = 100


@dataclass(frozen=True)
class PRCurve:
    """One class's curve at IoU 0.5 (COCO matching, 100 detections per image): ``recall [N]``,
    ``precision [N]`` after each counted detection in score order, ``num_gt``."""

    name: str
    recall: np.ndarray
    precision: np.ndarray
    num_gt: int


def pr_curves(coco: Mapping[str, Any], detections: Mapping[int, Any]) -> list[PRCurve]:
    """The precision-recall curve of every class with ground truth (detections: image id ->
    :class:`~pipeline.structures.Detections` in original pixels)."""
    prep = prepare_inputs(coco, detections)
    curves = []
    for cls, name in enumerate(prep.class_names):
        outcome = class_outcomes(prep.gt, prep.dets, cls, MAX_DETS, np.array([IOU]))
        if outcome is None:
            continue
        num_gt = int(np.count_nonzero((prep.gt.labels == cls) & ~prep.gt.ignore))
        _, tp, fp = outcome
        counted = tp[0] | fp[0]                       # detections on ignore regions count as neither
        ctp, cfp = np.cumsum(tp[0][counted]), np.cumsum(fp[0][counted])
        curves.append(PRCurve(name, ctp / max(num_gt, 1), ctp / np.maximum(ctp + cfp, 1), num_gt))
    return curves


def _greedy_pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (gt, det) pairs with IoU >= threshold, highest IoU first."""
    gi, di = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[gi, di], kind="stable")
    used_g, used_d, pairs = set(), set(), []
    for g, d in zip(gi[order], di[order]):
        if g not in used_g and d not in used_d:
            used_g.add(g)
            used_d.add(d)
            pairs.append((int(g), int(d)))
    return pairs


def confusion_matrix(coco: Mapping[str, Any], detections: Mapping[int, Any], score_thr: float = 0.3,
                     iou_thr: float = IOU) -> tuple[np.ndarray, list[str]]:
    """``[C + 1, C + 1]`` counts: row = true class (last row: background, i.e. a detection that
    matches no ground truth), column = predicted class (last column: background, i.e. a missed
    ground truth). Per image, detections scoring at least ``score_thr`` are paired one-to-one with
    ground truth of any class at IoU >= ``iou_thr``, highest IoU first; an unpaired detection
    lying on an ignore region (crowd IoU >= ``iou_thr``) is not counted. Returns the matrix and
    the ``C + 1`` names (``background`` last)."""
    prep = prepare_inputs(coco, detections)
    c = len(prep.class_names)
    matrix = np.zeros((c + 1, c + 1), dtype=np.int64)
    gt, dets = prep.gt, prep.dets
    for image in range(prep.image_ids.size):
        gsel = np.flatnonzero((gt.image == image) & ~gt.ignore)
        isel = np.flatnonzero((gt.image == image) & gt.ignore)
        dsel = np.flatnonzero((dets.image == image) & (dets.scores >= score_thr))
        g_boxes, d_boxes = gt.boxes[gsel], dets.boxes[dsel]
        iou = crowd_iou(d_boxes, g_boxes, np.zeros(len(gsel), bool)).T      # [G, D]
        pairs = _greedy_pairs(iou, iou_thr)
        for g, d in pairs:
            matrix[gt.labels[gsel[g]], dets.labels[dsel[d]]] += 1
        paired_g, paired_d = {g for g, _ in pairs}, {d for _, d in pairs}
        for g in set(range(len(gsel))) - paired_g:
            matrix[gt.labels[gsel[g]], c] += 1
        loose = np.array(sorted(set(range(len(dsel))) - paired_d), dtype=np.int64)
        if loose.size and isel.size:
            on_ignore = crowd_iou(d_boxes[loose], gt.boxes[isel], np.ones(len(isel), bool)).max(axis=1) >= iou_thr
            loose = loose[~on_ignore]
        for d in loose:
            matrix[c, dets.labels[dsel[d]]] += 1
    return matrix, [*prep.class_names, "background"]
