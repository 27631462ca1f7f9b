"""KITTI 2D AP40: the mmdetection3d devkit-port golden fixture and hand cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.metrics.kitti import KittiData, get_thresholds, kitti_ap40

from conftest import reference_fixture

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def _data(gts: list[tuple], dontcares: list[tuple], dets: list[tuple]) -> KittiData:
    """gts: (frame, box, class, occluded, truncated); dontcares: (frame, box);
    dets: (frame, box, class, score); class names index ``CLASSES`` (-1 otherwise)."""
    gb = np.array([g[1] for g in gts], dtype=np.float64).reshape(-1, 4)
    return KittiData(
        gt_image=np.array([g[0] for g in gts], dtype=np.int64), gt_boxes=gb,
        gt_labels=np.array([CLASSES.index(g[2]) for g in gts], dtype=np.int64),
        gt_occluded=np.array([g[3] for g in gts], dtype=np.int64),
        gt_truncated=np.array([g[4] for g in gts], dtype=np.float64),
        gt_heights=gb[:, 3] - gb[:, 1],
        dc_image=np.array([d[0] for d in dontcares], dtype=np.int64),
        dc_boxes=np.array([d[1] for d in dontcares], dtype=np.float64).reshape(-1, 4),
        det_image=np.array([d[0] for d in dets], dtype=np.int64),
        det_boxes=np.array([d[1] for d in dets], dtype=np.float64).reshape(-1, 4),
        det_labels=np.array([CLASSES.index(d[2]) if d[2] in CLASSES else -1 for d in dets], dtype=np.int64),
        det_scores=np.array([d[3] for d in dets], dtype=np.float64),
    )


def test_reproduces_devkit_port_golden() -> None:
    case = json.loads(reference_fixture("kitti/kitti_ap40_golden.json").read_text())["case"]
    gts, dcs, dets = [], [], []
    for i, img in enumerate(case["images"]):
        for g in img["gt"]:
            if g["name"] == "DontCare":
                dcs.append((i, g["bbox"]))
            else:
                gts.append((i, g["bbox"], g["name"], g["occluded"], g["truncated"]))
        dets += [(i, d["bbox"], d["name"], d["score"]) for d in img["detections"]]
    res = kitti_ap40(_data(gts, dcs, dets), CLASSES)
    expected = case["expected"]
    for name in CLASSES:
        for diff in ("easy", "moderate", "hard"):
            assert res[f"{name}_{diff}"] == pytest.approx(expected[f"{name}_2D_AP40_{diff}_strict"], abs=1e-4)
    for diff in ("easy", "moderate", "hard"):
        assert res[f"mAP_{diff}"] == pytest.approx(expected[f"Overall_2D_AP40_{diff}"], abs=1e-4)


def _car(x: float, h: float = 60.0) -> list[float]:
    return [x, 100.0, x + 80.0, 100.0 + h]


N = 80  # frames; enough TPs to fill all 41 thresholds (40 give at most 97.5)


def test_dontcare_absorbs_detection() -> None:
    gts = [(f, _car(100), "Car", 0, 0.0) for f in range(N)]
    dc = [(f, [600.0, 100.0, 800.0, 200.0]) for f in range(N)]
    dets = [(f, _car(100), "Car", 0.5 + f / 200) for f in range(N)]
    dets += [(f, [650.0, 120.0, 720.0, 190.0], "Car", 0.95) for f in range(N)]   # inside the DontCare
    with_dc = kitti_ap40(_data(gts, dc, dets), CLASSES)
    without_dc = kitti_ap40(_data(gts, [], dets), CLASSES)
    assert with_dc["Car_easy"] == pytest.approx(100.0)
    assert without_dc["Car_easy"] < 60.0
    # a detection only partly inside (inter / det area <= 0.7) is still a FP
    partial = [d if d[3] != 0.95 else (d[0], [760.0, 120.0, 840.0, 190.0], "Car", 0.95) for d in dets]
    assert kitti_ap40(_data(gts, dc, partial), CLASSES)["Car_easy"] < 60.0


def test_hard_only_gt_does_not_count_at_easy() -> None:
    easy = [(f, _car(100), "Car", 0, 0.0) for f in range(N)]
    hard_only = [(f, _car(400), "Car", 2, 0.0) for f in range(N)]       # occlusion 2: hard only
    dets = [(f, _car(100), "Car", 0.5 + f / 200) for f in range(N)]
    # not detected: no FN at easy / moderate, FN at hard
    res = kitti_ap40(_data(easy + hard_only, [], dets), CLASSES)
    assert res["Car_easy"] == pytest.approx(100.0)
    assert res["Car_moderate"] == pytest.approx(100.0)
    assert res["Car_hard"] < 60.0
    # detected: neither TP nor FP at easy, TP at hard
    dets_hard = dets + [(f, _car(400), "Car", 0.9) for f in range(N)]
    res = kitti_ap40(_data(easy + hard_only, [], dets_hard), CLASSES)
    assert res["Car_easy"] == pytest.approx(100.0)
    assert res["Car_hard"] == pytest.approx(100.0)


def test_short_boxes_and_strict_overlap() -> None:
    # GT 30 px high: ignored at easy (min 40) -> easy has no GT -> AP 0; counted at moderate
    gts = [(f, _car(100, h=30.0), "Car", 0, 0.0) for f in range(N)]
    dets = [(f, _car(100, h=30.0), "Car", 0.5 + f / 200) for f in range(N)]
    res = kitti_ap40(_data(gts, [], dets), CLASSES)
    assert res["Car_easy"] == 0.0 and res["Car_moderate"] == pytest.approx(100.0)
    # Car needs IoU > 0.7: a shifted box with IoU ~0.6 is a miss, but fine for a Pedestrian
    shifted = [(f, [120.0, 100.0, 200.0, 160.0], c, 0.5 + f / 200) for f in range(N) for c in ("Car",)]
    car = kitti_ap40(_data([(f, _car(100), "Car", 0, 0.0) for f in range(N)], [], shifted), CLASSES)
    assert car["Car_easy"] == 0.0
    ped_gts = [(f, _car(100), "Pedestrian", 0, 0.0) for f in range(N)]
    ped = kitti_ap40(_data(ped_gts, [], [(f, b, "Pedestrian", s) for f, b, _, s in shifted]), CLASSES)
    assert ped["Pedestrian_easy"] == pytest.approx(100.0)
    assert ped["mAP_easy"] == pytest.approx(100.0 / 3)   # Car and Cyclist have no GT: 0


def test_get_thresholds_samples_recall() -> None:
    scores = np.linspace(1.0, 0.01, 80)
    th = get_thresholds(scores.copy(), num_gt=80)
    assert th.size == 41 and th[0] == 1.0 and th[-1] == pytest.approx(0.01)
    assert np.all(np.diff(th) < 0)
