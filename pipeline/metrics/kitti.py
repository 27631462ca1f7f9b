"""KITTI 2D bbox AP40 (easy / moderate / hard) per grouped class, vectorised numpy.

Re-implements the rules of the official KITTI object devkit as its widely used Python port
(mmdetection3d ``kitti_eval``, bbox metric) applies them, so that the numbers agree with it.

Per class ``c`` and difficulty ``l`` (min height ``H = 40/25/25`` px, max occlusion
``0/1/2``, max truncation ``0.15/0.3/0.5``) with strict overlap ``o = 0.7`` (Car) or ``0.5``
(Pedestrian, Cyclist):

* *ground truth* of class ``c`` is *ignored* when ``occluded > max_occ`` or
  ``truncated > max_trunc`` or ``height <= H``; other classes and DontCare boxes take no part
  in the matching;
* *detections*: every detection lower than ``H`` px (``|y2 - y1| < H``, of any class) is an
  *ignored detection*; detections of class ``c`` at least ``H`` px high are *valid*; the rest
  take no part;
* IoU is plain ``inter / union`` (no ``+1``); a match needs ``IoU > o`` (strict);
* **threshold pass**: ground truths in order each take the unassigned detection with the
  highest score (first one on ties); if both are non-ignored it is a TP and its score a
  threshold candidate; the candidates give 41 thresholds (``get_thresholds``: walk scores
  descending, keep one each time recall passes the next multiple of 1/40);
* **counting pass**, per threshold ``s`` (detections with ``score < s`` dropped): ground
  truths in order take the unassigned valid detection with the largest IoU (first on ties),
  else the first unassigned ignored one; unmatched non-ignored GT -> FN; matched pairs with
  an ignored side -> nothing; else TP. Unassigned valid detections are FP, except those whose
  ``inter / detection area > o`` for some DontCare box;
* ``recall = TP / (TP + FN)``, ``precision = TP / (TP + FP)``, precision made monotone
  (``max`` over later thresholds) and ``AP40 = 100 / 40 * sum(precision[1:41])``.

Boxes everywhere: ``x1, y1, x2, y2`` in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.metrics.coco import block_slices, group_runs, padded_index

DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
#: Strict 2D overlap per class (the devkit's ``min_overlaps[0, 0]`` row).
STRICT_OVERLAP = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
N_SAMPLE_PTS = 41
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class KittiData:
    """Flat KITTI evaluation input.

    Attributes:
        gt_image: ``[G]`` int64 frame index.
        gt_boxes: ``[G, 4]`` float64 x1,y1,x2,y2.
        gt_labels: ``[G]`` int64 index into the evaluated class names.
        gt_occluded: ``[G]`` occlusion level 0..3.
        gt_truncated: ``[G]`` truncation 0..1.
        gt_heights: ``[G]`` box heights used by the difficulty rule (``y2 - y1``).
        dc_image: ``[M]`` int64 frame index of DontCare boxes.
        dc_boxes: ``[M, 4]`` DontCare boxes.
        det_image: ``[K]`` int64 frame index.
        det_boxes: ``[K, 4]`` float64.
        det_scores: ``[K]`` float64.
        det_labels: ``[K]`` int64 class index, ``-1`` for a class not evaluated.
    """

    gt_image: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_occluded: np.ndarray
    gt_truncated: np.ndarray
    gt_heights: np.ndarray
    dc_image: np.ndarray
    dc_boxes: np.ndarray
    det_image: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_labels: np.ndarray


def box_overlap(a: np.ndarray, b: np.ndarray, criterion: int = -1) -> np.ndarray:
    """The devkit's ``image_box_overlap`` broadcast over leading dims.

    Args:
        a: ``[..., N, 4]``, b: ``[..., K, 4]`` x1,y1,x2,y2.
        criterion: ``-1`` IoU ``inter / (area_a + area_b - inter)``; ``0`` ``inter / area_a``.

    Returns:
        ``[..., N, K]`` float64, 0 unless width and height of the intersection are > 0.
    """
    p = a[..., :, None, :].astype(np.float64)
    q = b[..., None, :, :].astype(np.float64)
    iw = np.minimum(p[..., 2], q[..., 2]) - np.maximum(p[..., 0], q[..., 0])
    ih = np.minimum(p[..., 3], q[..., 3]) - np.maximum(p[..., 1], q[..., 1])
    positive = (iw > 0) & (ih > 0)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    if criterion == -1:
        area_q = (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1])
        union = area_p + area_q - inter
    else:
        union = area_p + np.zeros_like(inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive, inter / np.where(positive, union, 1.0), 0.0)


def get_thresholds(scores: np.ndarray, num_gt: int, num_sample_pts: int = N_SAMPLE_PTS) -> np.ndarray:
    """Score thresholds at (about) recall ``0, 1/40, ..., 1`` (the devkit's ``get_thresholds``).

    Walking TP scores in descending order, score ``i`` is kept when the recall step to the next
    score is no closer to the current target recall than this one (``l = (i+1)/n``,
    ``r = (i+2)/n``; skip while ``r - target < target - l``), and the last score is always kept;
    each kept score advances the target by ``1 / (num_sample_pts - 1)``.

    Args:
        scores: ``[P]`` scores of the threshold-pass TPs.
        num_gt: non-ignored ground truths of the class and difficulty.

    Returns:
        ``[<= num_sample_pts]`` float64 thresholds, descending.
    """
    desc = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    kept, target, n = [], 0.0, len(desc)
    for i, score in enumerate(desc):
        l_recall = (i + 1) / num_gt
        r_recall = (i + 2) / num_gt if i < n - 1 else l_recall
        if (r_recall - target) < (target - l_recall) and i < n - 1:
            continue
        kept.append(score)
        target += 1 / (num_sample_pts - 1.0)
    return np.asarray(kept[:num_sample_pts], dtype=np.float64)


def _groups(gt_image: np.ndarray, det_image: np.ndarray) -> tuple[np.ndarray, ...]:
    """Frames holding both ground truth and detections.

    Args:
        gt_image: ``[G]``, det_image: ``[D]`` frame indices, each sorted.

    Returns:
        ``(g_starts, g_counts, d_starts, d_counts)`` ``[B]`` each, sorted by GT count
        descending, then ``gt_paired [G]`` and ``det_paired [D]`` bool masks of items in
        such frames.
    """
    g_vals, g_starts, g_counts = group_runs(gt_image)
    d_vals, d_starts, d_counts = group_runs(det_image)
    _, gi, di = np.intersect1d(g_vals, d_vals, assume_unique=True, return_indices=True)
    order = np.argsort(-g_counts[gi], kind="stable")
    gi, di = gi[order], di[order]
    gt_paired = np.isin(gt_image, g_vals[gi])
    det_paired = np.isin(det_image, d_vals[di])
    return g_starts[gi], g_counts[gi], d_starts[di], d_counts[di], gt_paired, det_paired


def _threshold_pass(ov: np.ndarray, g_ign: np.ndarray, g_valid: np.ndarray, d_ign: np.ndarray,
                    d_valid: np.ndarray, d_score: np.ndarray, o: float) -> np.ndarray:
    """Scores of TPs when every detection is allowed (``compute_fp=False``).

    Args:
        ov: ``[B, D, G]`` IoU; ``g_*``: ``[B, G]``; ``d_*``: ``[B, D]``; groups sorted by GT
            count descending.

    Returns:
        ``[P]`` TP scores.
    """
    b, d_max, g_max = ov.shape
    assigned = ~d_valid.copy()
    active_counts = g_valid.sum(axis=0)
    rows = np.arange(b)
    scores = []
    for k in range(g_max):
        na = int(active_counts[k])
        cand = ~assigned[:na] & (ov[:na, :, k] > o)
        found = cand.any(axis=1)
        j = np.argmax(np.where(cand, d_score[:na], -np.inf), axis=1)   # first max score
        r = rows[:na][found]
        assigned[r, j[found]] = True
        tp = found & ~g_ign[:na, k] & ~d_ign[rows[:na], j]
        scores.append(d_score[rows[:na][tp], j[tp]])
    return np.concatenate(scores) if scores else np.zeros(0)


def _counting_pass(ov: np.ndarray, g_ign: np.ndarray, g_valid: np.ndarray, d_ign: np.ndarray,
                   d_valid: np.ndarray, d_score: np.ndarray, d_dontcare: np.ndarray,
                   thresholds: np.ndarray, o: float) -> np.ndarray:
    """TP, FP, FN per threshold for a padded block (``compute_fp=True``).

    Args:
        ov: ``[B, D, G]`` IoU; ``g_*``: ``[B, G]``; ``d_*``: ``[B, D]``;
        d_dontcare: ``[B, D]`` detection covered by a DontCare box (``inter/area_det > o``).
        thresholds: ``[T]``.

    Returns:
        ``[T, 3]`` int64 sums of (TP, FP, FN).
    """
    b, d_max, g_max = ov.shape
    above = d_score[:, None, :] >= thresholds[None, :, None]                  # [B, T, D]
    assigned = ~(above & d_valid[:, None, :])
    active_counts = g_valid.sum(axis=0)
    out = np.zeros((thresholds.size, 3), dtype=np.int64)
    for k in range(g_max):
        na = int(active_counts[k])
        cand = ~assigned[:na] & (ov[:na, None, :, k] > o)                      # [na, T, D]
        ign = d_ign[:na, None, :]
        cand_valid = cand & ~ign
        has_valid = cand_valid.any(axis=-1)
        cand_ign = cand & ign
        has_ign = cand_ign.any(axis=-1)
        best_valid = np.argmax(np.where(cand_valid, ov[:na, None, :, k], -1.0), axis=-1)
        first_ign = np.argmax(cand_ign, axis=-1)
        j = np.where(has_valid, best_valid, first_ign)
        found = has_valid | has_ign                                            # [na, T]
        bi, ti = np.nonzero(found)
        assigned[bi, ti, j[bi, ti]] = True
        gt_ok = ~g_ign[:na, k][:, None]
        out[:, 0] += (has_valid & gt_ok).sum(axis=0)
        out[:, 2] += (~found & gt_ok).sum(axis=0)
    fp = ~assigned & ~d_ign[:, None, :] & ~d_dontcare[:, None, :]
    out[:, 1] += fp.sum(axis=(0, 2))
    return out


def _dontcare_cover(data: KittiData, det_sel: np.ndarray, o: float) -> np.ndarray:
    """``[len(det_sel)]`` bool: detection has ``inter / area_det > o`` with a DontCare box
    of its frame."""
    covered = np.zeros(det_sel.size, dtype=bool)
    if det_sel.size == 0 or data.dc_image.size == 0:
        return covered
    dc_order = np.argsort(data.dc_image, kind="stable")
    dc_img, dc_box = data.dc_image[dc_order], data.dc_boxes[dc_order]
    vals, starts, counts = group_runs(dc_img)
    d_img = data.det_image[det_sel]
    pos = np.searchsorted(vals, d_img)
    pos = np.minimum(pos, max(vals.size - 1, 0))
    has = vals[pos] == d_img
    if not has.any():
        return covered
    idx, valid = padded_index(starts[pos[has]], counts[pos[has]])              # [n, M]
    ratio = box_overlap(data.det_boxes[det_sel][has][:, None, :], dc_box[idx], criterion=0)[:, 0, :]
    covered[has] = ((ratio > o) & valid).any(axis=1)
    return covered


def _class_difficulty_pr(data: KittiData, cls: int, level: int, o: float) -> np.ndarray:
    """``[41]`` monotone precision of one class at one difficulty."""
    min_h = MIN_HEIGHT[level]
    g_sel = np.flatnonzero(data.gt_labels == cls)
    g_sel = g_sel[np.argsort(data.gt_image[g_sel], kind="stable")]
    g_ign_all = ((data.gt_occluded[g_sel] > MAX_OCCLUSION[level])
                 | (data.gt_truncated[g_sel] > MAX_TRUNCATION[level])
                 | (data.gt_heights[g_sel] <= min_h))
    num_valid_gt = int(np.count_nonzero(~g_ign_all))

    det_h = np.abs(data.det_boxes[:, 3] - data.det_boxes[:, 1])
    d_small = det_h < min_h
    d_sel = np.flatnonzero((data.det_labels == cls) | d_small)
    d_sel = d_sel[np.argsort(data.det_image[d_sel], kind="stable")]
    d_ign_all = d_small[d_sel]
    d_score_all = data.det_scores[d_sel].astype(np.float64)
    d_dc_all = _dontcare_cover(data, d_sel, o)

    g_starts, g_counts, d_starts, d_counts, g_paired, d_paired = _groups(
        data.gt_image[g_sel], data.det_image[d_sel])
    blocks = _blocks(g_starts, g_counts, d_starts, d_counts)

    arrays = [_block_arrays(data, g_sel, d_sel, g_ign_all, d_ign_all, d_score_all, d_dc_all, *blk)
              for blk in blocks]
    tp_scores = [_threshold_pass(*arr[:6], o) for arr in arrays]
    scores = np.concatenate(tp_scores) if tp_scores else np.zeros(0)
    thresholds = get_thresholds(scores, num_valid_gt) if num_valid_gt > 0 else np.zeros(0)

    counts = np.zeros((thresholds.size, 3), dtype=np.int64)
    for arr in arrays:
        counts += _counting_pass(*arr, thresholds, o)
    # frames with GT but no detection: every non-ignored GT is a FN
    counts[:, 2] += int(np.count_nonzero(~g_ign_all & ~g_paired))
    # frames with detections but no GT: valid, uncovered detections above threshold are FP
    lone = ~d_paired & ~d_ign_all & ~d_dc_all
    counts[:, 1] += (d_score_all[lone][None, :] >= thresholds[:, None]).sum(axis=1)

    precision = np.zeros(N_SAMPLE_PTS)
    if thresholds.size:
        tp, fp = counts[:, 0].astype(np.float64), counts[:, 1].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = tp / (tp + fp)
        # suffix max; like the devkit's np.max(prec[i:]) a nan (TP + FP == 0) propagates
        precision[: prec.size] = np.maximum.accumulate(prec[::-1])[::-1]
    return precision


def _blocks(g_starts: np.ndarray, g_counts: np.ndarray, d_starts: np.ndarray,
            d_counts: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Split paired frames into memory-bounded blocks (``B * G * D * 41`` elements)."""
    out = []
    for blk in block_slices(g_counts, d_counts, N_SAMPLE_PTS, _BLOCK_ELEMENTS):
        out.append((g_starts[blk], g_counts[blk], d_starts[blk], d_counts[blk]))
    return out


def _block_arrays(data: KittiData, g_sel: np.ndarray, d_sel: np.ndarray, g_ign_all: np.ndarray,
                  d_ign_all: np.ndarray, d_score_all: np.ndarray, d_dc_all: np.ndarray,
                  gs: np.ndarray, gc: np.ndarray, ds: np.ndarray, dc: np.ndarray) -> tuple:
    """Padded ``(ov [B,D,G], g_ign, g_valid, d_ign, d_valid, d_score, d_dontcare)``."""
    g_idx, g_valid = padded_index(gs, gc)
    d_idx, d_valid = padded_index(ds, dc)
    ov = box_overlap(data.det_boxes[d_sel[d_idx]], data.gt_boxes[g_sel[g_idx]])
    ov = np.where(g_valid[:, None, :] & d_valid[:, :, None], ov, 0.0)
    return (ov, g_ign_all[g_idx] & g_valid, g_valid, d_ign_all[d_idx] & d_valid, d_valid,
            np.where(d_valid, d_score_all[d_idx], -np.inf), d_dc_all[d_idx] & d_valid)


def kitti_ap40(data: KittiData, class_names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """KITTI 2D AP40 (percent) per class and difficulty, and their means over classes.

    Args:
        data: the flat input; ``gt_labels`` / ``det_labels`` index ``class_names``.
        class_names: evaluated classes, each one of ``Car``, ``Pedestrian``, ``Cyclist``.

    Returns:
        ``{"<Class>_<difficulty>": AP40, ..., "mAP_<difficulty>": mean over classes}``.
    """
    unknown = [n for n in class_names if n not in STRICT_OVERLAP]
    if unknown:
        raise ValueError(f"KITTI AP40: unsupported classes {unknown}; expected {list(STRICT_OVERLAP)}")
    out: dict[str, float] = {}
    per_level: list[list[float]] = [[] for _ in DIFFICULTIES]
    for cls, name in enumerate(class_names):
        for level, diff in enumerate(DIFFICULTIES):
            prec = _class_difficulty_pr(data, cls, level, STRICT_OVERLAP[name])
            ap = float(prec[1:].sum() / 40 * 100)
            out[f"{name}_{diff}"] = ap
            per_level[level].append(ap)
    for level, diff in enumerate(DIFFICULTIES):
        out[f"mAP_{diff}"] = float(np.mean(per_level[level])) if per_level[level] else float("nan")
    return out
