"""COCO bbox AP (AP@[.5:.95] and AP50) in vectorised numpy, equal to pycocotools.

Our own implementation of the documented ``COCOeval`` rules for ``iouType='bbox'``, area
range ``all`` and ``maxDets=100``; pycocotools stays the reference in the tests and the
benchmark only.

Rules implemented (per class ``k``, per image):

* detections are sorted by score, descending and stable (ties keep input order), and only the
  first ``max_dets`` (100) are kept;
* IoU of a detection ``d`` with a ground truth ``g`` is ``|d & g| / |d | g|``; for a crowd
  ground truth it is ``|d & g| / |d|`` (the detection's own area);
* ground truths with the ignore flag (crowd) are sorted after the others (stable);
* for every IoU threshold ``t`` in ``0.50:0.05:0.95`` each detection, in score order, takes
  the ground truth with the largest IoU ``>= t`` (ties go to the later one) among those not yet
  matched at ``t`` (crowd ones may be matched any number of times), preferring any
  non-ignored ground truth over an ignored one;
* a detection matched to an ignored ground truth is ignored (neither TP nor FP);
  an unmatched detection is a FP; ``npig`` = number of non-ignored ground truths;
* per class, detections of all images (ascending image id, then score order inside an image)
  are stable-sorted by score; ``rc = TP / npig``, ``pr = TP / (TP + FP + eps)``; ``pr`` is made
  monotone non-increasing from the right; precision at the 101 recall points
  ``0:0.01:1`` is ``pr[searchsorted(rc, r, 'left')]`` (0 beyond the last recall);
* AP of a class = mean of those 101 x 10 values; a class with ``npig == 0`` is left out of
  the means (pycocotools' ``-1``; here ``nan``). AP50 uses the ``t = 0.5`` row only.

Box format everywhere: ``x1, y1, x2, y2`` in pixels (width ``x2 - x1``, no ``+1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: pycocotools' IoU thresholds ``.5:.05:.95`` (built the same way so the floats are identical).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: pycocotools' 101 recall points ``0:.01:1``.
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
#: Upper bound on elements of one padded ``[B, T, D, G]`` work block (memory control only).
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class GroundTruth:
    """Flat ground truth of a whole evaluation set.

    Attributes:
        image: ``[G]`` int64 image index ``0..N-1`` (position in ascending image-id order).
        boxes: ``[G, 4]`` float64 x1,y1,x2,y2 pixels.
        labels: ``[G]`` int64 class index ``0..C-1``.
        ignore: ``[G]`` bool, True for ignore regions (crowd boxes; VOC ``bboxes_ignore``).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray


@dataclass(frozen=True)
class DetectionSet:
    """Flat detections of a whole evaluation set.

    Attributes:
        image: ``[K]`` int64 image index, same indexing as :class:`GroundTruth`.
        boxes: ``[K, 4]`` float x1,y1,x2,y2 pixels.
        scores: ``[K]`` float scores.
        labels: ``[K]`` int64 class index ``0..C-1``.
    """

    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class CocoResult:
    """COCO bbox metrics as fractions in [0, 1].

    Attributes:
        ap: AP@[.5:.95], mean over classes with ``num_gts > 0`` (``nan`` if none).
        ap50: AP at IoU 0.5, same mean.
        per_class_ap: ``[C]`` AP@[.5:.95] per class (``nan`` where ``num_gts == 0``).
        per_class_ap50: ``[C]`` AP50 per class (``nan`` where ``num_gts == 0``).
        num_gts: ``[C]`` int64 non-ignored ground truths per class.
        precision: ``[T, R, C]`` interpolated precision (pycocotools' ``eval['precision']``
            for area ``all``, maxDets 100), ``-1`` for classes without ground truth.
    """

    ap: float
    ap50: float
    per_class_ap: np.ndarray
    per_class_ap50: np.ndarray
    num_gts: np.ndarray
    precision: np.ndarray


# --------------------------------------------------------------------------- grouping helpers


def group_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values in a sorted ``[N]`` key array.

    Returns ``(values [B], starts [B], counts [B])``.
    """
    if keys.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    values, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    return values, starts.astype(np.int64), counts.astype(np.int64)


def padded_index(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gather indices for a padded ``[B, L]`` view of runs (``L = counts.max()``).

    Args:
        starts: ``[B]`` first flat index of each run.
        counts: ``[B]`` run lengths (>= 1).

    Returns:
        ``(index [B, L], valid [B, L])``; padded slots hold index of the run's first item
        and ``valid == False``.
    """
    width = int(counts.max()) if counts.size else 0
    pos = np.arange(width, dtype=np.int64)[None, :]
    valid = pos < counts[:, None]
    index = np.where(valid, starts[:, None] + pos, starts[:, None])
    return index, valid


def block_slices(det_counts: np.ndarray, gt_counts: np.ndarray, depth: int,
                 budget: int = _BLOCK_ELEMENTS) -> list[slice]:
    """Split groups (sorted by ``det_counts`` descending) into blocks of bounded padded size.

    A block ``[s, e)`` costs ``(e - s) * det_counts[s] * max(gt_counts[s:e]) * depth``
    elements; each block holds at least one group.
    """
    slices, start, n = [], 0, len(det_counts)
    while start < n:
        gmax = np.maximum.accumulate(gt_counts[start:])
        cost = np.arange(1, n - start + 1) * det_counts[start] * gmax * depth
        size = max(1, int(np.searchsorted(cost, budget, side="right")))
        slices.append(slice(start, start + size))
        start += size
    return slices


def within_group_rank(group: np.ndarray) -> np.ndarray:
    """Position of each item inside its run of a sorted ``[N]`` group array."""
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, starts, counts = group_runs(group)
    return np.arange(group.size, dtype=np.int64) - np.repeat(starts, counts)


# --------------------------------------------------------------------------- IoU


def crowd_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' bbox IoU, broadcast over leading dimensions.

    ``iou = inter / (area_d + area_g - inter)``, or ``inter / area_d`` when the ground truth
    is a crowd box; 0 when the boxes do not overlap with positive width and height.

    Args:
        dets: ``[..., D, 4]`` x1,y1,x2,y2.
        gts: ``[..., G, 4]`` x1,y1,x2,y2.
        crowd: ``[..., G]`` bool.

    Returns:
        ``[..., D, G]`` float64.
    """
    d = dets[..., :, None, :].astype(np.float64)
    g = gts[..., None, :, :].astype(np.float64)
    iw = np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    ih = np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    positive = (iw > 0) & (ih > 0)
    inter = np.where(positive, iw * ih, 0.0)
    area_d = (d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    union = np.where(crowd[..., None, :], area_d, area_d + area_g - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive, inter / np.where(positive, union, 1.0), 0.0)


# --------------------------------------------------------------------------- matching


def _match_block(ious: np.ndarray, d_valid: np.ndarray, g_ignore: np.ndarray,
                 g_crowd: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching of a padded block, all IoU thresholds at once.

    Args:
        ious: ``[B, D, G]`` IoUs, ``-1`` at padded ground-truth slots; detections of a
            group in score order, ground truths non-ignored first.
        d_valid: ``[B, D]`` bool, real (non padded) detection slots; groups are sorted by
            detection count descending, so the active groups at step ``d`` are a prefix.
        g_ignore, g_crowd: ``[B, G]`` bool.
        thresholds: ``[T]`` IoU thresholds (already capped at ``1 - 1e-10``).

    Returns:
        ``(matched [B, T, D], ignored [B, T, D])`` bool per detection slot.
    """
    b, d_max, g_max = ious.shape
    t = thresholds.size
    matched_gt = np.zeros((b, t, g_max), dtype=bool)
    dt_matched = np.zeros((b, t, d_max), dtype=bool)
    dt_ignored = np.zeros((b, t, d_max), dtype=bool)
    active_counts = d_valid.sum(axis=0)
    for d in range(d_max):
        na = int(active_counts[d])
        iou = ious[:na, d, :]                                          # [na, G]
        ok = iou[:, None, :] >= thresholds[None, :, None]              # [na, T, G]
        blocked = matched_gt[:na] & ~g_crowd[:na, None, :]
        avail = ok & ~blocked
        ign = g_ignore[:na, None, :]
        cand_regular = avail & ~ign
        has_regular = cand_regular.any(axis=-1)
        cand = np.where(has_regular[..., None], cand_regular, avail)
        found = has_regular | avail.any(axis=-1)                       # [na, T]
        score = np.where(cand, iou[:, None, :], -2.0)
        last = g_max - 1 - np.argmax(score[..., ::-1], axis=-1)         # last max wins ties
        bi, ti = np.nonzero(found)
        matched_gt[bi, ti, last[bi, ti]] = True
        dt_matched[:na, :, d] = found
        dt_ignored[:na, :, d] = found & np.take_along_axis(g_ignore[:na], last, axis=1)
    return dt_matched, dt_ignored


def match_class(gt_image: np.ndarray, gt_boxes: np.ndarray, gt_ignore: np.ndarray,
                dt_image: np.ndarray, dt_boxes: np.ndarray,
                thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO matching for one class over all images.

    Args:
        gt_image, gt_boxes, gt_ignore: ``[G]``, ``[G, 4]``, ``[G]``; sorted by image, then
            non-ignored first (stable). Ignored boxes are treated as crowd.
        dt_image, dt_boxes: ``[N]``, ``[N, 4]``; sorted by image, then score descending,
            already truncated to ``max_dets`` per image.
        thresholds: ``[T]`` IoU thresholds.

    Returns:
        ``(matched [T, N], ignored [T, N])`` bool.
    """
    t, n = thresholds.size, dt_image.size
    matched = np.zeros((t, n), dtype=bool)
    ignored = np.zeros((t, n), dtype=bool)
    g_vals, g_starts, g_counts = group_runs(gt_image)
    d_vals, d_starts, d_counts = group_runs(dt_image)
    _, gi, di = np.intersect1d(g_vals, d_vals, assume_unique=True, return_indices=True)
    if gi.size == 0:
        return matched, ignored
    order = np.argsort(-d_counts[di], kind="stable")
    gi, di = gi[order], di[order]
    capped = np.minimum(thresholds, 1 - 1e-10)
    for blk in block_slices(d_counts[di], g_counts[gi], t):
        d_idx, d_valid = padded_index(d_starts[di[blk]], d_counts[di[blk]])
        g_idx, g_valid = padded_index(g_starts[gi[blk]], g_counts[gi[blk]])
        g_ign = gt_ignore[g_idx] & g_valid
        ious = crowd_iou(dt_boxes[d_idx], gt_boxes[g_idx], g_ign)
        ious = np.where(g_valid[:, None, :], ious, -1.0)
        m, ig = _match_block(ious, d_valid, g_ign, g_ign, capped)
        rows, cols = np.nonzero(d_valid)
        flat = d_idx[rows, cols]
        matched[:, flat] = m[rows, :, cols].T
        ignored[:, flat] = ig[rows, :, cols].T
    return matched, ignored


# --------------------------------------------------------------------------- accumulation


def interpolated_precision(tp: np.ndarray, fp: np.ndarray, num_gt: int,
                           recall_thresholds: np.ndarray = RECALL_THRESHOLDS) -> np.ndarray:
    """pycocotools' 101-point interpolated precision.

    Args:
        tp, fp: ``[T, N]`` bool flags in final (score-sorted) order.
        num_gt: non-ignored ground truths (> 0).

    Returns:
        ``[T, R]`` float64: ``q[r] = max_{i >= idx} pr[i]`` with
        ``idx = searchsorted(rc, recall_thresholds[r], 'left')``, 0 where ``idx >= N``.
    """
    t, n = tp.shape
    out = np.zeros((t, recall_thresholds.size))
    if n == 0:
        return out
    tp_sum = np.cumsum(tp, axis=1).astype(np.float64)
    fp_sum = np.cumsum(fp, axis=1).astype(np.float64)
    rc = tp_sum / num_gt
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for row in range(t):
        idx = np.searchsorted(rc[row], recall_thresholds, side="left")
        inside = idx < n
        out[row, inside] = pr[row, idx[inside]]
    return out


def class_outcomes(gt: GroundTruth, dets: DetectionSet, cls: int, max_dets: int,
                   thresholds: np.ndarray = IOU_THRESHOLDS) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The detections of class ``cls`` in final (score) order with their outcome per IoU threshold.

    Returns:
        ``(image [N], tp [T, N], fp [T, N])`` (a detection matched to an ignored ground truth is
        neither), or ``None`` when the class has no non-ignored ground truth.
    """
    gsel = np.flatnonzero(gt.labels == cls)
    g_img, g_ign = gt.image[gsel], gt.ignore[gsel]
    if not np.count_nonzero(~g_ign):
        return None
    g_order = np.lexsort((g_ign, g_img))
    g_img, g_ign, g_box = g_img[g_order], g_ign[g_order], gt.boxes[gsel][g_order]

    dsel = np.flatnonzero(dets.labels == cls)
    d_img, d_score = dets.image[dsel], dets.scores[dsel].astype(np.float64)
    d_order = np.lexsort((-d_score, d_img))
    d_img, d_score, d_box = d_img[d_order], d_score[d_order], dets.boxes[dsel][d_order]
    keep = within_group_rank(d_img) < max_dets
    d_img, d_score, d_box = d_img[keep], d_score[keep], d_box[keep]

    matched, ignored = match_class(g_img, g_box, g_ign, d_img, d_box, thresholds)
    final = np.argsort(-d_score, kind="stable")
    matched, ignored = matched[:, final], ignored[:, final]
    return d_img[final], matched & ~ignored, ~matched & ~ignored


def _class_precision(gt: GroundTruth, dets: DetectionSet, cls: int,
                     max_dets: int) -> tuple[np.ndarray | None, int]:
    """``([T, R] precision or None when the class has no non-ignored GT, num_gt)``."""
    outcome = class_outcomes(gt, dets, cls, max_dets)
    if outcome is None:
        return None, 0
    num_gt = int(np.count_nonzero(~gt.ignore[gt.labels == cls]))
    _, tp, fp = outcome
    return interpolated_precision(tp, fp, num_gt), num_gt


def coco_bbox_eval(gt: GroundTruth, dets: DetectionSet, num_classes: int,
                   max_dets: int = 100) -> CocoResult:
    """COCO bbox AP@[.5:.95] and AP50 (area ``all``, ``maxDets=max_dets``).

    Image indices must follow ascending image id to reproduce pycocotools' tie-breaking of
    equal scores across images. See the module docstring for the rules.
    """
    t, r = IOU_THRESHOLDS.size, RECALL_THRESHOLDS.size
    precision = -np.ones((t, r, num_classes))
    num_gts = np.zeros(num_classes, dtype=np.int64)
    for cls in range(num_classes):
        q, num_gts[cls] = _class_precision(gt, dets, cls, max_dets)
        if q is not None:
            precision[:, :, cls] = q
    valid = num_gts > 0
    per_ap = np.full(num_classes, np.nan)
    per_ap50 = np.full(num_classes, np.nan)
    if valid.any():
        per_ap[valid] = precision[:, :, valid].mean(axis=(0, 1))
        per_ap50[valid] = precision[0][:, valid].mean(axis=0)
    ap = float(precision[:, :, valid].mean()) if valid.any() else float("nan")
    ap50 = float(precision[0][:, valid].mean()) if valid.any() else float("nan")
    return CocoResult(ap=ap, ap50=ap50, per_class_ap=per_ap, per_class_ap50=per_ap50,
                      num_gts=num_gts, precision=precision)
