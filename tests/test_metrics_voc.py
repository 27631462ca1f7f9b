"""VOC area AP50 (MMDetection 3.3 ``eval_map`` semantics): golden fixture and hand cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.metrics.coco import DetectionSet, GroundTruth
from pipeline.metrics.voc import area_ap, eval_voc_map

from conftest import reference_fixture



def _gt(rows: list[tuple[int, list[float], int, bool]]) -> GroundTruth:
    """rows: (image, box x1y1x2y2, label, ignore)."""
    return GroundTruth(
        image=np.array([r[0] for r in rows], dtype=np.int64),
        boxes=np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 4),
        labels=np.array([r[2] for r in rows], dtype=np.int64),
        ignore=np.array([r[3] for r in rows], dtype=bool),
    )


def _dets(rows: list[tuple[int, list[float], float, int]]) -> DetectionSet:
    """rows: (image, box x1y1x2y2, score, label)."""
    return DetectionSet(
        image=np.array([r[0] for r in rows], dtype=np.int64),
        boxes=np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 4),
        scores=np.array([r[2] for r in rows], dtype=np.float64),
        labels=np.array([r[3] for r in rows], dtype=np.int64),
    )


def test_reproduces_mmdet_golden() -> None:
    case = json.loads(reference_fixture("mmdet/voc_map_golden.json").read_text())["case"]
    gt_rows, det_rows = [], []
    for i, img in enumerate(case["images"]):
        gt_rows += [(i, b, lab, False) for b, lab in zip(img["gt_boxes"], img["gt_labels"])]
        gt_rows += [(i, b, lab, True) for b, lab in zip(img["ignore_boxes"], img["ignore_labels"])]
        det_rows += [(i, d["box"], d["score"], d["label"]) for d in img["detections"]]
    expected = case["expected"]
    res = eval_voc_map(_gt(gt_rows), _dets(det_rows), num_classes=3, iou_thr=0.5)
    np.testing.assert_allclose(res.ap, expected["per_class_AP"], atol=1e-6, rtol=0)
    assert res.mean_ap == pytest.approx(expected["mAP"], abs=1e-6)
    assert res.num_gts.tolist() == expected["num_gts"]
    assert res.num_dets.tolist() == expected["num_dets"]


BOX_A = [10.0, 10.0, 50.0, 50.0]
BOX_B = [100.0, 100.0, 160.0, 140.0]
FAR = [300.0, 300.0, 320.0, 330.0]


def test_perfect_detections_give_one() -> None:
    gt = _gt([(0, BOX_A, 0, False), (0, BOX_B, 1, False), (1, BOX_B, 0, False)])
    dets = _dets([(0, BOX_A, 0.9, 0), (0, BOX_B, 0.8, 1), (1, BOX_B, 0.3, 0)])
    res = eval_voc_map(gt, dets, num_classes=2)
    np.testing.assert_allclose(res.ap, [1.0, 1.0])
    assert res.mean_ap == pytest.approx(1.0)


def test_fp_above_tp_halves_precision() -> None:
    gt = _gt([(0, BOX_A, 0, False)])
    above = eval_voc_map(gt, _dets([(0, FAR, 0.9, 0), (0, BOX_A, 0.8, 0)]), 1)
    below = eval_voc_map(gt, _dets([(0, FAR, 0.7, 0), (0, BOX_A, 0.8, 0)]), 1)
    assert above.ap[0] == pytest.approx(0.5)   # recall 1 reached at precision 1/2
    assert below.ap[0] == pytest.approx(1.0)


def test_detection_on_ignore_box_is_neither_tp_nor_fp() -> None:
    gt = _gt([(0, BOX_A, 0, False), (0, BOX_B, 0, True)])
    dets = _dets([(0, BOX_B, 0.9, 0), (0, BOX_A, 0.8, 0)])
    res = eval_voc_map(gt, dets, 1)
    assert res.ap[0] == pytest.approx(1.0)       # as a FP it would be 0.5
    assert res.num_gts[0] == 1
    # an ignore box of another class does not protect the detection
    gt_other = _gt([(0, BOX_A, 0, False), (0, BOX_B, 1, True)])
    assert eval_voc_map(gt_other, dets, 2).ap[0] == pytest.approx(0.5)


def test_duplicate_is_fp_and_argmax_ignores_coverage() -> None:
    # two GTs overlapping; the second detection's best IoU is the already covered GT,
    # so (MMDetection) it is a FP even though it overlaps the other GT by >= 0.5
    g1 = [0.0, 0.0, 100.0, 100.0]
    g2 = [20.0, 0.0, 120.0, 100.0]
    d2 = [5.0, 0.0, 105.0, 100.0]           # IoU g1 0.905, g2 0.739
    gt = _gt([(0, g1, 0, False), (0, g2, 0, False)])
    res = eval_voc_map(gt, _dets([(0, g1, 0.9, 0), (0, d2, 0.8, 0)]), 1)
    # TP then FP: recall 0.5 at precision 1 -> AP 0.5
    assert res.ap[0] == pytest.approx(0.5)


def test_class_without_gt_is_zero_and_left_out_of_mean() -> None:
    gt = _gt([(0, BOX_A, 0, False)])
    dets = _dets([(0, BOX_A, 0.9, 0), (0, BOX_B, 0.9, 1)])
    res = eval_voc_map(gt, dets, 2)
    assert res.ap[1] == 0.0 and res.num_gts[1] == 0
    assert res.mean_ap == pytest.approx(1.0)


def test_no_gt_image_detections_are_fp_and_empty_class() -> None:
    gt = _gt([(0, BOX_A, 0, False)])
    res = eval_voc_map(gt, _dets([(1, BOX_A, 0.95, 0), (0, BOX_A, 0.9, 0)]), 2)
    assert res.ap[0] == pytest.approx(0.5)
    assert res.ap[1] == 0.0 and res.num_dets[1] == 0


def test_area_ap_envelope() -> None:
    # precision 1, 0.5, 2/3 at recall 1/3, 1/3, 2/3: envelope 1 then 2/3
    ap = area_ap(np.array([1 / 3, 1 / 3, 2 / 3]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(1 / 3 + (1 / 3) * (2 / 3), abs=1e-6)
