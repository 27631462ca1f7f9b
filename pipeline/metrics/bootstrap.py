"""Paired bootstrap of COCO AP50 over val images: is a gain real?

Two models evaluated on the same val images differ by ``d = AP50(B) - AP50(A)``. Resampling the
images with replacement (the same resample for both models) and recomputing ``d`` gives its
sampling distribution; the 2.5 and 97.5 percentiles are the 95% interval (Efron & Tibshirani,
percentile method). With several seeds per model, each resample also draws the seeds with
replacement, so the interval of the *mean* gain covers both the images and the training noise.

Resampling images only re-weights them: COCO's matching is per image, so each detection's
TP/FP flag at IoU 0.5 is computed once (:func:`image_matches`, the rules of
:mod:`pipeline.metrics.coco`), and a resample drawing image ``i`` ``w_i`` times weights its
detections and ground truths by ``w_i`` in the cumulative TP/FP counts. That is exactly the AP50
of the data set with those images repeated (up to the order of equal scores from different
images), computed in microseconds instead of a full evaluation per resample.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.io import atomic_file
from pipeline.metrics.coco import RECALL_THRESHOLDS, class_outcomes
from pipeline.metrics.evaluate import prepare_inputs
from pipeline.structures import Detections

MAX_DETS = 100


@dataclass(frozen=True)
class ImageMatches:
    """Per class, the score-ordered detections of a whole val set with their IoU-0.5 outcome.

    Attributes:
        num_images: ``N`` val images (image index = position in ascending image-id order).
        classes: per class with ground truth, ``(det_image [D], tp [D], fp [D], gt_per_image [N])``:
            detections in final score order (ignored ones dropped), their image index, TP/FP
            flags, and the non-ignored ground truths of each image.
    """

    num_images: int
    classes: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]


def image_matches(coco: Mapping[str, Any], detections: Mapping[int, Any]) -> ImageMatches:
    """Match ``detections`` (image id -> Detections in original pixels) to ``coco``'s ground
    truth at IoU 0.5 once, for :func:`weighted_ap50`."""
    prep = prepare_inputs(coco, detections)
    gt, n = prep.gt, int(prep.image_ids.size)
    out = []
    for cls in range(len(prep.class_names)):
        outcome = class_outcomes(gt, prep.dets, cls, MAX_DETS, np.array([0.5]))
        if outcome is None:
            continue
        det_image, tp, fp = outcome
        counted = tp[0] | fp[0]                                   # drop detections matched to ignore regions
        keep = (gt.labels == cls) & ~gt.ignore
        gt_per_image = np.bincount(gt.image[keep], minlength=n).astype(np.float64)
        out.append((det_image[counted], tp[0, counted], fp[0, counted], gt_per_image))
    return ImageMatches(n, tuple(out))


def weighted_ap50(matches: ImageMatches, weights: np.ndarray) -> float:
    """COCO AP50 (percent) with image ``i`` counted ``weights[i]`` times (all ones: the plain
    AP50 of :func:`pipeline.metrics.evaluate_detections`). Classes whose weighted ground truth is
    0 are left out of the mean, as COCO leaves out classes without ground truth."""
    aps = []
    for det_image, tp, fp, gt_per_image in matches.classes:
        num_gt = float(gt_per_image @ weights)
        if num_gt <= 0:
            continue
        w = weights[det_image]
        if w.size == 0:
            aps.append(0.0)
            continue
        tp_sum = np.cumsum(w * tp)
        fp_sum = np.cumsum(w * fp)
        rc = tp_sum / num_gt
        pr = tp_sum / (tp_sum + fp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        inside = idx < rc.size
        aps.append(float(pr[idx[inside]].sum()) / RECALL_THRESHOLDS.size)
    return 100.0 * float(np.mean(aps)) if aps else float("nan")


@dataclass(frozen=True)
class Interval:
    """A gain with its 95% bootstrap interval (percentage points)."""

    mean: float
    low: float
    high: float
    resamples: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"gain": self.mean, "low": self.low, "high": self.high, "resamples": self.resamples}

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_gain(model: Sequence[ImageMatches], reference: Sequence[ImageMatches], resamples: int = 1000,
                seed: int = 0, level: float = 0.95) -> Interval:
    """Mean AP50 gain of ``model`` over ``reference`` with its paired bootstrap interval.

    Args:
        model, reference: one :class:`ImageMatches` per seed, all on the same val images. With
            the same number of seeds they are paired by position (seed ``k`` of both); each
            resample draws images and seeds with replacement.
        resamples: bootstrap resamples (1000 gives percentiles to about +-0.1 point here).
        seed: of the resampling generator (fixed: the interval is a function of the inputs).
        level: the interval's coverage.

    Returns:
        :class:`Interval`: ``mean`` is the gain on the actual images and seeds.
    """
    if not model or not reference:
        raise ValueError("paired_gain needs at least one evaluation per side")
    n = model[0].num_images
    if any(m.num_images != n for m in (*model, *reference)):
        raise ValueError("paired_gain: the evaluations are not on the same val images")
    ones = np.ones(n)
    a = np.array([weighted_ap50(m, ones) for m in model])
    b = np.array([weighted_ap50(m, ones) for m in reference])
    rng = np.random.default_rng(seed)
    gains = np.empty(resamples)
    paired = len(model) == len(reference)
    for r in range(resamples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        sa = rng.integers(0, len(model), len(model))
        sb = sa if paired else rng.integers(0, len(reference), len(reference))
        ma = np.mean([weighted_ap50(model[k], weights) for k in sa])
        mb = np.mean([weighted_ap50(reference[k], weights) for k in sb])
        gains[r] = ma - mb
    tail = (1.0 - level) / 2 * 100
    low, high = np.nanpercentile(gains, [tail, 100 - tail])
    return Interval(float(a.mean() - b.mean()), float(low), float(high), resamples)


@dataclass(frozen=True)
class JointBootstrap:
    """Several models' AP50 on the same val images, actual and under the same image resamples.

    Attributes:
        actual: model -> AP50 (percent) on the val images as they are.
        resampled: model -> ``[resamples]`` AP50 under resample ``r``, the same images drawn for
            every model: the difference of two rows is the paired bootstrap of their gain.
        level: the coverage of :meth:`interval` and :meth:`gain`.
    """

    actual: dict[str, float]
    resampled: dict[str, np.ndarray]
    level: float = 0.95

    def _percentiles(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1.0 - self.level) / 2 * 100
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        return float(low), float(high)

    def interval(self, model: str) -> Interval:
        """``model``'s AP50 with its percentile interval (``mean`` is the AP50 itself)."""
        low, high = self._percentiles(self.resampled[model])
        return Interval(self.actual[model], low, high, len(self.resampled[model]))

    def gain(self, model: str, reference: str) -> Interval:
        """AP50 of ``model`` minus ``reference`` with its paired interval (as :func:`paired_gain`
        for one seed per side)."""
        low, high = self._percentiles(self.resampled[model] - self.resampled[reference])
        return Interval(self.actual[model] - self.actual[reference], low, high, len(self.resampled[model]))


def joint_bootstrap(matches: Mapping[str, ImageMatches], resamples: int = 1000, seed: int = 0,
                    level: float = 0.95) -> JointBootstrap:
    """Resample the val images once per draw and score every model of ``matches`` on it.

    One pass gives every pairwise interval (``gain(a, b)``) and each model's own interval at the
    cost of ``len(matches) x resamples`` AP50 evaluations, where :func:`paired_gain` per pair
    would cost that per pair. One seed per model (the evaluate or benchmark stages' detections).
    """
    if not matches:
        return JointBootstrap({}, {}, level)
    sizes = {m.num_images for m in matches.values()}
    if len(sizes) != 1:
        raise ValueError("joint_bootstrap: the evaluations are not on the same val images")
    n = sizes.pop()
    ones = np.ones(n)
    actual = {key: weighted_ap50(m, ones) for key, m in matches.items()}
    resampled = {key: np.empty(resamples) for key in matches}
    rng = np.random.default_rng(seed)
    for r in range(resamples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        for key, m in matches.items():
            resampled[key][r] = weighted_ap50(m, weights)
    return JointBootstrap(actual, resampled, level)


def save_detections(path: Path, detections: Mapping[int, Any]) -> None:
    """Write per-image detections (original pixels) as one ``.npz``: ``image_id [K]``,
    ``boxes [K, 4]`` x1,y1,x2,y2, ``scores [K]``, ``labels [K]``, atomically."""
    ids = sorted(detections)
    parts = [detections[i] for i in ids]
    counts = [int(d.scores.numel()) for d in parts]
    arrays = {
        "image_id": np.repeat(np.array(ids, dtype=np.int64), counts),
        "boxes": np.concatenate([d.boxes.cpu().numpy().reshape(-1, 4) for d in parts]) if parts else np.zeros((0, 4)),
        "scores": np.concatenate([d.scores.cpu().numpy() for d in parts]) if parts else np.zeros(0),
        "labels": np.concatenate([d.labels.cpu().numpy() for d in parts]) if parts else np.zeros(0, np.int64),
    }
    with atomic_file(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_detections(path: Path) -> dict[int, Detections]:
    """The detections of :func:`save_detections`, as image id -> Detections.

    Raises:
        UserError: a missing or malformed file, naming it and the fix.
    """
    fix = "re-run its evaluate stage (dvc repro)"
    try:
        with np.load(path) as data:
            ids, boxes, scores, labels = (data[k] for k in ("image_id", "boxes", "scores", "labels"))
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{path}: not a detections file of the evaluate stage ({err}); {fix}") from None
    if not (boxes.ndim == 2 and boxes.shape[1] == 4 and len(ids) == len(boxes) == len(scores) == len(labels)):
        raise UserError(f"{path}: arrays of inconsistent shapes; {fix}")
    out = {}
    for image_id in np.unique(ids):
        sel = ids == image_id
        out[int(image_id)] = Detections(torch.from_numpy(boxes[sel]), torch.from_numpy(scores[sel]),
                                        torch.from_numpy(labels[sel]))
    return out
