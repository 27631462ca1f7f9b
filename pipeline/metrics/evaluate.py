"""``evaluate_detections``: COCO, VOC and (for KITTI-format data) KITTI metrics of a val set.

Inputs are a curated COCO-format dict (``docs/curated-format.md``) and per-image
:class:`~pipeline.structures.Detections` in original-image pixels (x1,y1,x2,y2), labels being
0-based positions in ``coco['categories']``. Ignore regions (``iscrowd`` or ``ignore`` set)
are crowd boxes for the COCO metric, ``bboxes_ignore`` for the VOC metric and, when their
``kitti.type`` is ``DontCare`` (de-duplicated across the per-category copies), DontCare boxes
for the KITTI metric.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.metrics.coco import CocoResult, DetectionSet, GroundTruth, coco_bbox_eval
from pipeline.metrics.kitti import STRICT_OVERLAP, KittiData, kitti_ap40
from pipeline.metrics.voc import VocResult, eval_voc_map

KITTI_CLASSES = tuple(STRICT_OVERLAP)


@dataclass(frozen=True)
class PreparedEval:
    """Validated, flattened evaluation input.

    Attributes:
        class_names: ``[C]`` category names in ``coco['categories']`` order.
        image_ids: ``[N]`` int64 image ids, ascending; image index = position here.
        gt: ground truth (``ignore`` = ignore region), boxes float64 x1,y1,x2,y2.
        dets: detections, boxes float64 x1,y1,x2,y2, scores float64.
        kitti: KITTI input, or None when the annotations carry no ``kitti`` field or no
            category is named Car / Pedestrian / Cyclist.
        kitti_classes: names of the KITTI classes evaluated (``kitti.gt_labels`` index it).
    """

    class_names: list[str]
    image_ids: np.ndarray
    gt: GroundTruth
    dets: DetectionSet
    kitti: KittiData | None
    kitti_classes: list[str]


# --------------------------------------------------------------------------- parsing


def _categories(coco: Mapping[str, Any]) -> tuple[list[str], dict[int, int]]:
    """``(names [C], category id -> class index)``."""
    cats = coco.get("categories")
    if not isinstance(cats, list) or not cats:
        raise ValueError("evaluate_detections: coco['categories'] must be a non-empty list")
    names = [str(c["name"]) for c in cats]
    index = {int(c["id"]): i for i, c in enumerate(cats)}
    if len(index) != len(cats) or len(set(names)) != len(names):
        raise ValueError("evaluate_detections: coco['categories'] has duplicate ids or names")
    return names, index


def _image_ids(coco: Mapping[str, Any]) -> np.ndarray:
    """``[N]`` ascending unique image ids."""
    images = coco.get("images")
    if not isinstance(images, list):
        raise ValueError("evaluate_detections: coco['images'] must be a list")
    ids = np.array([int(img["id"]) for img in images], dtype=np.int64)
    unique = np.unique(ids)
    if unique.size != ids.size:
        raise ValueError("evaluate_detections: coco['images'] has duplicate ids")
    return unique


def _xyxy(ann: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` -> ``(x1, y1, x2, y2)``."""
    bbox = ann.get("bbox")
    if bbox is None or len(bbox) != 4:
        raise ValueError(f"evaluate_detections: annotation {ann.get('id')} has no 4-number bbox")
    x, y, w, h = (float(v) for v in bbox)
    return x, y, x + w, y + h


def _ground_truth(coco: Mapping[str, Any], image_ids: np.ndarray,
                  cat_index: dict[int, int]) -> GroundTruth:
    """Flatten ``coco['annotations']`` (ignore = ``iscrowd`` or ``ignore``); boxes
    ``[x, y, w, h]`` -> x1,y1,x2,y2 float64."""
    anns = coco.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError("evaluate_detections: coco['annotations'] must be a list")
    if not anns:
        return GroundTruth(image=np.zeros(0, dtype=np.int64), boxes=np.zeros((0, 4)),
                           labels=np.zeros(0, dtype=np.int64), ignore=np.zeros(0, dtype=bool))
    try:
        image = np.array([ann["image_id"] for ann in anns], dtype=np.int64)
        cats = [int(ann["category_id"]) for ann in anns]
        xywh = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(len(anns), -1)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"evaluate_detections: malformed coco['annotations'] ({err!r}); each needs "
                         "image_id, category_id and a 4-number bbox") from None
    if xywh.shape[1] != 4:
        raise ValueError("evaluate_detections: every annotation bbox must be [x, y, w, h]")
    unknown = [c for c in cats if c not in cat_index]
    if unknown:
        raise ValueError(f"evaluate_detections: an annotation has unknown category_id {unknown[0]}")
    ignore = np.array([bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)) for ann in anns], dtype=bool)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return GroundTruth(image=_image_index(image_ids, image, "annotation"), boxes=boxes,
                       labels=np.array([cat_index[c] for c in cats], dtype=np.int64), ignore=ignore)


def _image_index(image_ids: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``ids`` in the sorted ``image_ids``; ValueError for unknown ids."""
    pos = np.searchsorted(image_ids, ids)
    ok = pos < image_ids.size
    ok[ok] = image_ids[pos[ok]] == ids[ok]
    if not ok.all():
        bad = int(ids[~ok][0])
        raise ValueError(f"evaluate_detections: {what} for image id {bad}, which is not in coco['images']")
    return pos.astype(np.int64)


def _as_numpy(value: Any) -> np.ndarray:
    """Tensor or array-like -> numpy array on the CPU."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        try:
            value = value.numpy()
        except TypeError:               # bfloat16 and other dtypes numpy lacks
            value = value.float().numpy()
    return np.asarray(value)


def _per_image_arrays(image_id: int, det: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes [K, 4], scores [K], labels [K])`` of one Detections, shapes and dtype checked."""
    try:
        b, s, lab = _as_numpy(det.boxes), _as_numpy(det.scores), _as_numpy(det.labels)
    except AttributeError:
        raise ValueError(f"evaluate_detections: detections[{image_id}] is not a Detections "
                         "(needs boxes, scores, labels)") from None
    k = b.shape[0] if b.ndim == 2 else -1
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (k,) or lab.shape != (k,):
        raise ValueError(f"evaluate_detections: detections[{image_id}] has boxes {b.shape}, "
                         f"scores {s.shape}, labels {lab.shape}; expected [K, 4], [K], [K]")
    if k and lab.dtype.kind not in "iu":
        raise ValueError(f"evaluate_detections: detections[{image_id}].labels must be integers, "
                         f"got {lab.dtype}")
    return b, s, lab


def _detections(detections: Mapping[int, Any], image_ids: np.ndarray,
                num_classes: int) -> DetectionSet:
    """Validate and flatten ``image id -> Detections`` (boxes and scores as float64)."""
    if not isinstance(detections, Mapping):
        raise ValueError("evaluate_detections: detections must map image id -> Detections")
    keys, boxes, scores, labels = [], [], [], []
    for key, det in detections.items():
        try:
            image_id = operator.index(key)
        except TypeError:
            raise ValueError(f"evaluate_detections: detections key {key!r} is not an integer image id") from None
        b, s, lab = _per_image_arrays(image_id, det)
        keys.append(image_id)
        boxes.append(b)
        scores.append(s)
        labels.append(lab)
    key_pos = _image_index(image_ids, np.array(keys, dtype=np.int64), "detections")
    counts = np.array([s.shape[0] for s in scores], dtype=np.int64)
    image = np.repeat(key_pos, counts)
    flat_boxes = np.concatenate(boxes).astype(np.float64) if boxes else np.zeros((0, 4))
    flat_scores = np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)
    flat_labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64)
    bad_label = (flat_labels < 0) | (flat_labels >= num_classes)
    if bad_label.any():
        k = int(np.argmax(bad_label))
        raise ValueError(f"evaluate_detections: detections[{int(image_ids[image[k]])}] has label "
                         f"{int(flat_labels[k])} outside the {num_classes} categories (0..{num_classes - 1})")
    finite = np.isfinite(flat_boxes).all(axis=1) & np.isfinite(flat_scores)
    if not finite.all():
        k = int(np.argmin(finite))
        raise ValueError(f"evaluate_detections: detections[{int(image_ids[image[k]])}] has non-finite "
                         "boxes or scores")
    return DetectionSet(image=image, boxes=flat_boxes, scores=flat_scores, labels=flat_labels)


def _kitti_data(coco: Mapping[str, Any], image_ids: np.ndarray, class_names: list[str],
                cat_index: dict[int, int], dets: DetectionSet) -> tuple[KittiData | None, list[str]]:
    """KITTI input when annotations carry ``kitti`` and Car/Pedestrian/Cyclist exist."""
    anns = coco.get("annotations", [])
    kitti_classes = [n for n in class_names if n in KITTI_CLASSES]
    if not kitti_classes or not any("kitti" in ann for ann in anns):
        return None, []
    to_kitti = np.array([kitti_classes.index(n) if n in kitti_classes else -1 for n in class_names],
                        dtype=np.int64)
    g_img, g_box, g_lab, g_occ, g_trunc, g_h = [], [], [], [], [], []
    dontcare: dict[tuple[int, tuple[float, ...]], None] = {}
    for ann in anns:
        meta = ann.get("kitti")
        crowd = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
        if crowd:
            if meta is not None and meta.get("type") == "DontCare":
                dontcare[(int(ann["image_id"]), _xyxy(ann))] = None
            continue
        label = int(to_kitti[cat_index[int(ann["category_id"])]])
        if label < 0:
            continue
        if meta is None or "occluded" not in meta or "truncated" not in meta:
            raise ValueError(f"evaluate_detections: annotation {ann.get('id')} lacks "
                             "kitti.occluded / kitti.truncated needed by the KITTI metric")
        g_img.append(int(ann["image_id"]))
        g_box.append(_xyxy(ann))
        g_lab.append(label)
        g_occ.append(int(meta["occluded"]))
        g_trunc.append(float(meta["truncated"]))
        g_h.append(float(ann["bbox"][3]))
    dc_keys = list(dontcare)
    data = KittiData(
        gt_image=_image_index(image_ids, np.array(g_img, dtype=np.int64), "annotation"),
        gt_boxes=np.array(g_box, dtype=np.float64).reshape(-1, 4),
        gt_labels=np.array(g_lab, dtype=np.int64),
        gt_occluded=np.array(g_occ, dtype=np.int64),
        gt_truncated=np.array(g_trunc, dtype=np.float64),
        gt_heights=np.array(g_h, dtype=np.float64),
        dc_image=_image_index(image_ids, np.array([k[0] for k in dc_keys], dtype=np.int64), "annotation"),
        dc_boxes=np.array([k[1] for k in dc_keys], dtype=np.float64).reshape(-1, 4),
        det_image=dets.image, det_boxes=dets.boxes, det_scores=dets.scores,
        det_labels=to_kitti[dets.labels] if dets.labels.size else dets.labels,
    )
    return data, kitti_classes


def prepare_inputs(coco: Mapping[str, Any], detections: Mapping[int, Any]) -> PreparedEval:
    """Validate and flatten the curated dict and the detections (ValueError on bad input)."""
    if not isinstance(coco, Mapping):
        raise ValueError("evaluate_detections: coco must be a curated COCO-format dict")
    class_names, cat_index = _categories(coco)
    image_ids = _image_ids(coco)
    gt = _ground_truth(coco, image_ids, cat_index)
    dets = _detections(detections, image_ids, len(class_names))
    kitti, kitti_classes = _kitti_data(coco, image_ids, class_names, cat_index, dets)
    return PreparedEval(class_names, image_ids, gt, dets, kitti, kitti_classes)


# --------------------------------------------------------------------------- report


def _pct(value: float) -> float:
    """Fraction -> percent; ``nan`` (no ground truth) -> 0.0."""
    return 0.0 if math.isnan(value) else float(value) * 100.0


def _report(prep: PreparedEval, coco_res: CocoResult, voc_res: VocResult) -> dict[str, Any]:
    """Assemble the result dict (percent)."""
    per_class = {
        name: {
            "AP50": _pct(float(coco_res.per_class_ap50[i])),
            "AP": _pct(float(coco_res.per_class_ap[i])),
            "voc_AP50": _pct(float(voc_res.ap[i])),
            "num_gt": int(voc_res.num_gts[i]),
        }
        for i, name in enumerate(prep.class_names)
    }
    return {
        "mAP50": _pct(coco_res.ap50),
        "mAP": _pct(coco_res.ap),
        "voc_mAP50": _pct(voc_res.mean_ap),
        "per_class": per_class,
        "num_images": int(prep.image_ids.size),
        "num_detections": int(prep.dets.image.size),
    }


def evaluate_detections(coco: dict, detections: Mapping[int, Any]) -> dict[str, Any]:
    """COCO AP / AP50, VOC area AP50 and (KITTI data) KITTI AP40 of a set of detections.

    Args:
        coco: curated COCO-format dict (``categories``, ``images``, ``annotations``).
        detections: image id -> :class:`~pipeline.structures.Detections` (boxes ``[K, 4]``
            x1,y1,x2,y2 in original pixels, scores ``[K]``, labels ``[K]`` 0-based category
            positions). Images absent from the mapping have no detections.

    Returns:
        Plain floats in percent: ``mAP50`` (COCO AP50), ``mAP`` (COCO AP@[.5:.95]),
        ``voc_mAP50`` (MMDetection VOC area AP50 mean), ``per_class`` ``{name: {AP50, AP,
        voc_AP50, num_gt}}``, ``num_images``, ``num_detections`` and, for annotations with a
        ``kitti`` field, ``kitti`` ``{<Class>_<easy|moderate|hard>, mAP_<difficulty>}``. A class
        without ground truth reports COCO AP 0 and is left out of the COCO/VOC means.

    Raises:
        ValueError: detections for an unknown image id, a label outside the categories,
            wrong shapes or non-finite values, or a malformed curated dict.
    """
    prep = prepare_inputs(coco, detections)
    num_classes = len(prep.class_names)
    coco_res = coco_bbox_eval(prep.gt, prep.dets, num_classes)
    voc_res = eval_voc_map(prep.gt, prep.dets, num_classes)
    out = _report(prep, coco_res, voc_res)
    if prep.kitti is not None:
        out["kitti"] = kitti_ap40(prep.kitti, prep.kitti_classes)
    return out
