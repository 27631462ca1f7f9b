"""Our numpy COCO bbox AP equals pycocotools (the reference) on random data."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from pipeline.metrics.coco import DetectionSet, GroundTruth, coco_bbox_eval

NUM_CLASSES = 4          # the last class never has ground truth


def _random_case(seed: int, num_images: int = 30, max_dets: int = 14,
                 noise: float = 3.0) -> tuple[GroundTruth, DetectionSet]:
    """Random GT (15% crowd, every 7th image empty) and jittered / random detections."""
    rng = np.random.default_rng(seed)
    gi, gb, gl, gc, di, db, ds, dl = [], [], [], [], [], [], [], []
    for img in range(num_images):
        n_gt = int(rng.integers(0, 8)) if img % 7 else 0
        first = len(gb)
        for _ in range(n_gt):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(5, 80, 2)
            gi.append(img), gb.append([x, y, x + w, y + h])
            gl.append(int(rng.integers(0, NUM_CLASSES - 1))), gc.append(bool(rng.random() < 0.15))
        n_det = int(rng.integers(0, max_dets)) if img % 5 else 0
        for _ in range(n_det):
            if n_gt and rng.random() < 0.7:
                k = int(rng.integers(first, first + n_gt))
                box = np.asarray(gb[k]) + rng.normal(0, noise, 4)
                label = gl[k] if rng.random() < 0.9 else int(rng.integers(0, NUM_CLASSES))
            else:
                x, y = rng.uniform(0, 200, 2)
                w, h = rng.uniform(5, 80, 2)
                box, label = np.array([x, y, x + w, y + h]), int(rng.integers(0, NUM_CLASSES))
            box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
            # scores rounded to 2 decimals: plenty of ties exercise the tie-breaking rules
            di.append(img), db.append(box), ds.append(round(float(rng.random()), 2)), dl.append(label)
    gt = GroundTruth(np.array(gi, dtype=np.int64), np.array(gb, dtype=np.float64).reshape(-1, 4),
                     np.array(gl, dtype=np.int64), np.array(gc, dtype=bool))
    dets = DetectionSet(np.array(di, dtype=np.int64), np.array(db, dtype=np.float64).reshape(-1, 4),
                        np.array(ds, dtype=np.float64), np.array(dl, dtype=np.int64))
    return gt, dets


def _pycocotools(gt: GroundTruth, dets: DetectionSet, num_images: int):
    """Run pycocotools COCOeval (bbox) on the same data; image index i -> id i + 1."""
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    anns = []
    for k, (x1, y1, x2, y2) in enumerate(gt.boxes.tolist()):
        anns.append({"id": k + 1, "image_id": int(gt.image[k]) + 1, "category_id": int(gt.labels[k]) + 1,
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                     "iscrowd": int(gt.ignore[k])})
    dataset = {"images": [{"id": i + 1, "width": 400, "height": 400} for i in range(num_images)],
               "annotations": anns,
               "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(NUM_CLASSES)]}
    results = [{"image_id": int(dets.image[k]) + 1, "category_id": int(dets.labels[k]) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(dets.scores[k])}
               for k, (x1, y1, x2, y2) in enumerate(dets.boxes.tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_mod.COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        ev = cocoeval_mod.COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equals_pycocotools(seed: int) -> None:
    gt, dets = _random_case(seed)
    ref = _pycocotools(gt, dets, 30)
    ours = coco_bbox_eval(gt, dets, NUM_CLASSES)
    assert gt.ignore.any() and not (gt.labels == NUM_CLASSES - 1).any()
    assert ours.ap == pytest.approx(ref.stats[0], abs=1e-4)
    assert ours.ap50 == pytest.approx(ref.stats[1], abs=1e-4)
    # full precision table (area all, maxDets 100), classes without GT stay -1
    np.testing.assert_allclose(ours.precision, ref.eval["precision"][:, :, :, 0, 2], atol=1e-4)
    ref_ap50 = ref.eval["precision"][0, :, :, 0, 2]
    for c in range(NUM_CLASSES - 1):
        assert ours.per_class_ap50[c] == pytest.approx(ref_ap50[:, c].mean(), abs=1e-4)
    assert np.isnan(ours.per_class_ap[NUM_CLASSES - 1])


def test_equals_pycocotools_with_more_than_100_detections_per_image() -> None:
    gt, dets = _random_case(7, num_images=6, max_dets=260, noise=1.5)
    assert np.bincount(dets.image).max() > 100
    ref = _pycocotools(gt, dets, 6)
    ours = coco_bbox_eval(gt, dets, NUM_CLASSES)
    assert ours.ap == pytest.approx(ref.stats[0], abs=1e-4)
    assert ours.ap50 == pytest.approx(ref.stats[1], abs=1e-4)


def test_crowd_absorbs_several_detections() -> None:
    gt = GroundTruth(np.array([0, 0]), np.array([[0.0, 0, 10, 10], [100.0, 100, 300, 300]]),
                     np.array([0, 0]), np.array([False, True]))
    # three detections inside the crowd box (IoU = inter / det area = 1), one TP
    boxes = np.array([[0.0, 0, 10, 10], [110, 110, 150, 150], [200, 200, 260, 240], [120, 200, 180, 290]])
    dets = DetectionSet(np.zeros(4, dtype=np.int64), boxes, np.array([0.5, 0.9, 0.8, 0.7]),
                        np.zeros(4, dtype=np.int64))
    res = coco_bbox_eval(gt, dets, 1)
    assert res.ap == pytest.approx(1.0) and res.ap50 == pytest.approx(1.0)
    assert res.num_gts.tolist() == [1]
