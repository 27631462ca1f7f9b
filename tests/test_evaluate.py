"""evaluate_detections end to end on tiny hand-built curated dicts."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline.metrics import evaluate_detections
from pipeline.structures import Detections


def _ann(ann_id: int, image_id: int, cat: int, xywh: list[float], crowd: int = 0, kitti: dict | None = None) -> dict:
    ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": xywh,
           "area": xywh[2] * xywh[3], "iscrowd": crowd, "ignore": crowd}
    if kitti is not None:
        ann["kitti"] = kitti
    return ann


def _coco() -> dict:
    """Three images, classes car (id 3) and person (id 1, listed second), one crowd region."""
    return {
        "info": {"dataset": "tiny", "format": "coco", "image_root": ".", "split": "val"},
        "categories": [{"id": 3, "name": "car", "supercategory": "road"},
                       {"id": 1, "name": "person", "supercategory": "road"},
                       {"id": 7, "name": "train", "supercategory": "road"}],
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in (5, 9, 12)],
        "annotations": [
            _ann(1, 5, 3, [10, 10, 100, 50]),
            _ann(2, 5, 1, [300, 100, 40, 120]),
            _ann(3, 9, 3, [50, 200, 120, 80]),
            _ann(4, 9, 3, [400, 50, 200, 200], crowd=1),     # crowd region of class car
        ],
    }


def _det(rows: list[tuple[list[float], float, int]]) -> Detections:
    """rows: (x1y1x2y2, score, class index)."""
    return Detections(boxes=torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
                      scores=torch.tensor([r[1] for r in rows], dtype=torch.float32),
                      labels=torch.tensor([r[2] for r in rows], dtype=torch.long))


def test_perfect_detections_in_percent() -> None:
    dets = {5: _det([([10, 10, 110, 60], 0.9, 0), ([300, 100, 340, 220], 0.8, 1)]),
            9: _det([([50, 200, 170, 280], 0.7, 0),
                     ([410, 60, 590, 240], 0.95, 0)])}    # on the crowd region (IoU 0.81): ignored
    res = evaluate_detections(_coco(), dets)
    assert res["mAP50"] == pytest.approx(100.0)
    assert res["mAP"] == pytest.approx(100.0)
    assert res["voc_mAP50"] == pytest.approx(100.0)
    assert res["num_images"] == 3 and res["num_detections"] == 4
    assert res["per_class"]["car"] == {"AP50": pytest.approx(100.0), "AP": pytest.approx(100.0),
                                       "voc_AP50": pytest.approx(100.0), "num_gt": 2}
    assert res["per_class"]["person"]["num_gt"] == 1
    assert res["per_class"]["train"] == {"AP50": 0.0, "AP": 0.0, "voc_AP50": 0.0, "num_gt": 0}
    assert "kitti" not in res
    assert all(isinstance(v, float) for v in (res["mAP50"], res["mAP"], res["voc_mAP50"]))


def test_small_detection_inside_crowd_region_coco_versus_voc() -> None:
    # pycocotools: IoU with a crowd box = inter / detection area (1 here) -> ignored;
    # MMDetection VOC: plain IoU with the ignore box (0.18 < 0.5) -> a FP above the TPs
    dets = {5: _det([([10, 10, 110, 60], 0.9, 0), ([300, 100, 340, 220], 0.8, 1)]),
            9: _det([([50, 200, 170, 280], 0.7, 0), ([420, 60, 500, 150], 0.95, 0)])}
    res = evaluate_detections(_coco(), dets)
    assert res["per_class"]["car"]["AP50"] == pytest.approx(100.0)
    # car: FP, TP, TP -> precision 1/2 at recall 1/2, 2/3 at recall 1 -> envelope 2/3
    assert res["per_class"]["car"]["voc_AP50"] == pytest.approx(100 * 2 / 3, abs=1e-4)


def test_fp_above_tps_in_percent() -> None:
    # car: FP (score .9), TP (.8) on image 5, TP (.7) on image 9
    dets = {5: _det([([500, 400, 600, 470], 0.9, 0), ([10, 10, 110, 60], 0.8, 0),
                     ([300, 100, 340, 220], 0.5, 1)]),
            9: _det([([50, 200, 170, 280], 0.7, 0)])}
    res = evaluate_detections(_coco(), dets)
    car = res["per_class"]["car"]
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1: envelope 2/3 -> COCO AP50 and VOC both 2/3
    assert car["voc_AP50"] == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert car["AP50"] == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert res["per_class"]["person"]["AP50"] == pytest.approx(100.0)
    assert res["mAP50"] == pytest.approx((100 * 2 / 3 + 100) / 2, abs=1e-4)   # train left out
    assert res["voc_mAP50"] == pytest.approx((100 * 2 / 3 + 100) / 2, abs=1e-4)


def test_missing_images_have_no_detections() -> None:
    res = evaluate_detections(_coco(), {5: _det([([10, 10, 110, 60], 0.9, 0)])})
    assert res["per_class"]["car"]["AP50"] == pytest.approx(100 * 51 / 101)   # recall points 0..0.5
    assert res["per_class"]["car"]["voc_AP50"] == pytest.approx(50.0)
    assert res["per_class"]["person"]["AP50"] == 0.0
    assert res["num_detections"] == 1
    empty = evaluate_detections(_coco(), {})
    assert empty["mAP50"] == 0.0 and empty["num_detections"] == 0


def test_bad_input_raises_value_error() -> None:
    good = _det([([10, 10, 110, 60], 0.9, 0)])
    with pytest.raises(ValueError, match="image id 77"):
        evaluate_detections(_coco(), {5: good, 77: good})
    with pytest.raises(ValueError, match="outside the 3 categories"):
        evaluate_detections(_coco(), {5: _det([([10, 10, 110, 60], 0.9, 3)])})
    with pytest.raises(ValueError, match="outside the 3 categories"):
        evaluate_detections(_coco(), {5: _det([([10, 10, 110, 60], 0.9, -1)])})
    wrong = SimpleNamespace(boxes=torch.zeros(2, 5), scores=torch.zeros(2), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected \[K, 4\]"):
        evaluate_detections(_coco(), {5: wrong})
    mismatch = SimpleNamespace(boxes=torch.zeros(2, 4), scores=torch.zeros(3), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected \[K, 4\]"):
        evaluate_detections(_coco(), {5: mismatch})
    with pytest.raises(ValueError, match="not a Detections"):
        evaluate_detections(_coco(), {5: "boxes"})
    bad_cat = _coco()
    bad_cat["annotations"].append(_ann(9, 5, 42, [0, 0, 5, 5]))
    with pytest.raises(ValueError, match="category_id 42"):
        evaluate_detections(bad_cat, {})


def _kitti_coco() -> dict:
    """KITTI-format: Car/Pedestrian/Cyclist, a DontCare and a Misc region replicated per category."""
    obj = {"type": "Car", "truncated": 0.0, "occluded": 0}
    dc = {"type": "DontCare", "truncated": -1.0, "occluded": -1}
    misc = {"type": "Misc", "truncated": 0.0, "occluded": 0}
    anns = [_ann(1, 1, 1, [100, 100, 80, 60], kitti=obj),
            _ann(2, 1, 2, [400, 100, 30, 70], kitti={"type": "Pedestrian", "truncated": 0.0, "occluded": 3})]
    for cat in (1, 2, 3):
        anns.append(_ann(len(anns) + 1, 1, cat, [600, 100, 200, 100], crowd=1, kitti=dc))
        anns.append(_ann(len(anns) + 1, 1, cat, [900, 100, 100, 100], crowd=1, kitti=misc))
    return {"info": {"dataset": "kitti", "format": "kitti", "image_root": ".", "split": "val"},
            "categories": [{"id": 1, "name": "Car"}, {"id": 2, "name": "Pedestrian"}, {"id": 3, "name": "Cyclist"}],
            "images": [{"id": 1, "file_name": "000001.png", "width": 1242, "height": 375}],
            "annotations": anns}


def test_kitti_block_and_dontcare_versus_misc() -> None:
    base = [([100, 100, 180, 160], 0.6, 0)]
    res = evaluate_detections(_kitti_coco(), {1: _det(base)})
    assert set(res["kitti"]) == {f"{c}_{d}" for c in ("Car", "Pedestrian", "Cyclist")
                                 for d in ("easy", "moderate", "hard")} | {"mAP_easy", "mAP_moderate", "mAP_hard"}
    # detections with IoU 0.81 on the DontCare / Misc regions: ignored by COCO and VOC
    dc_hit = evaluate_detections(_kitti_coco(), {1: _det(base + [([610, 105, 790, 195], 0.9, 0)])})
    misc_hit = evaluate_detections(_kitti_coco(), {1: _det(base + [([905, 105, 995, 195], 0.9, 0)])})
    assert dc_hit["mAP50"] == misc_hit["mAP50"] == pytest.approx(res["mAP50"])
    assert dc_hit["voc_mAP50"] == misc_hit["voc_mAP50"] == pytest.approx(res["voc_mAP50"])
    assert res["per_class"]["Car"]["num_gt"] == 1 and res["per_class"]["Cyclist"]["num_gt"] == 0
    assert res["kitti"]["Pedestrian_hard"] == 0.0     # occlusion 3: never counted


def test_kitti_dontcare_changes_ap40() -> None:
    """Many frames: a DontCare-covered detection costs nothing, a Misc-covered one does."""
    coco = {"categories": [{"id": 1, "name": "Car"}, {"id": 2, "name": "Pedestrian"}],
            "images": [{"id": i, "file_name": f"{i}.png", "width": 1242, "height": 375} for i in range(80)],
            "annotations": []}
    for i in range(80):
        coco["annotations"].append(_ann(len(coco["annotations"]) + 1, i, 1, [100, 100, 80, 60],
                                        kitti={"type": "Car", "truncated": 0.0, "occluded": 0}))
        for cat in (1, 2):
            coco["annotations"].append(_ann(len(coco["annotations"]) + 1, i, cat, [600, 100, 200, 100], crowd=1,
                                            kitti={"type": "DontCare" if i % 2 else "Misc",
                                                   "truncated": -1.0, "occluded": -1}))
    dets = {i: _det([([100, 100, 180, 160], 0.5 + i / 200, 0), ([610, 105, 790, 195], 0.99, 0)]) for i in range(80)}
    res = evaluate_detections(coco, dets)
    # half of the extra detections (on Misc) are FPs above every TP: precision 2/3 everywhere
    assert res["kitti"]["Car_easy"] == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert res["mAP50"] == pytest.approx(100.0) and res["voc_mAP50"] == pytest.approx(100.0)
    assert set(res["kitti"]) >= {"Car_easy", "Pedestrian_easy", "mAP_hard"} and "Cyclist_easy" not in res["kitti"]
