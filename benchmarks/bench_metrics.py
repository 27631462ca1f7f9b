"""Benchmark: our numpy COCO bbox AP (and the full ``evaluate_detections``) vs pycocotools.

Builds a synthetic val set (500 images, 3 classes, ~5,000 detections, crowd regions),
checks that both give the same AP / AP50 and prints best-of-N wall times and the ratio
``pycocotools time / ours``. Run from the repository root::

    .venv/bin/python benchmarks/bench_metrics.py
"""
from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.metrics import evaluate_detections  # noqa: E402
from pipeline.metrics.coco import coco_bbox_eval  # noqa: E402
from pipeline.metrics.evaluate import prepare_inputs  # noqa: E402
from pipeline.structures import Detections  # noqa: E402

NUM_IMAGES = 500
NUM_DETECTIONS = 5000
CLASSES = ("car", "person", "bicycle")
REPEATS_OURS = 5
REPEATS_REF = 3


def synthetic_val_set(seed: int = 0) -> tuple[dict, dict[int, Detections]]:
    """A curated-format dict and detections: jittered copies of GTs plus random boxes."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i + 1:06d}.png", "width": 1242, "height": 375}
              for i in range(NUM_IMAGES)]
    anns, gt_by_image = [], {}
    for img in images:
        boxes = []
        for _ in range(int(rng.integers(0, 9))):
            w, h = rng.uniform(15, 200), rng.uniform(15, 150)
            x, y = rng.uniform(0, 1242 - w), rng.uniform(0, 375 - h)
            cat = int(rng.integers(0, len(CLASSES)))
            crowd = int(rng.random() < 0.05)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat + 1,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd, "ignore": crowd})
            boxes.append((x, y, x + w, y + h, cat))
        gt_by_image[img["id"]] = boxes
    per_image = np.bincount(rng.integers(0, NUM_IMAGES, NUM_DETECTIONS), minlength=NUM_IMAGES)
    detections = {}
    for img, n in zip(images, per_image):
        gts, rows = gt_by_image[img["id"]], []
        for _ in range(int(n)):
            if gts and rng.random() < 0.6:
                x1, y1, x2, y2, cat = gts[int(rng.integers(0, len(gts)))]
                jitter = rng.normal(0, 0.08 * max(x2 - x1, y2 - y1), 4)
                x1, y1, x2, y2 = np.array([x1, y1, x2, y2]) + jitter
            else:
                w, h = rng.uniform(15, 200), rng.uniform(15, 150)
                x1, y1 = rng.uniform(0, 1242 - w), rng.uniform(0, 375 - h)
                x2, y2, cat = x1 + w, y1 + h, int(rng.integers(0, len(CLASSES)))
            rows.append((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1), float(rng.random()), cat))
        if rows:
            arr = np.array(rows, dtype=np.float64)
            detections[img["id"]] = Detections(torch.tensor(arr[:, :4], dtype=torch.float32),
                                               torch.tensor(arr[:, 4], dtype=torch.float32),
                                               torch.tensor(arr[:, 5], dtype=torch.long))
    coco = {"info": {"dataset": "bench", "format": "coco", "image_root": ".", "split": "val"},
            "categories": [{"id": i + 1, "name": n, "supercategory": "road"} for i, n in enumerate(CLASSES)],
            "images": images, "annotations": anns}
    return coco, detections


def ours_coco_part(coco: dict, detections: dict[int, Detections]) -> tuple[float, float]:
    """Validation + flattening + our COCO AP: (AP, AP50) fractions."""
    prep = prepare_inputs(coco, detections)
    res = coco_bbox_eval(prep.gt, prep.dets, len(prep.class_names))
    return res.ap, res.ap50


def pycocotools_eval(coco: dict, detections: dict[int, Detections]) -> tuple[float, float]:
    """Same input through pycocotools (conversion of the detections included)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat_ids = [c["id"] for c in coco["categories"]]
    results = []
    for image_id, det in detections.items():
        boxes, scores, labels = det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()
        for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels):
            results.append({"image_id": image_id, "category_id": cat_ids[lab],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    coco, detections = synthetic_val_set()
    n_dets = sum(len(d) for d in detections.values())
    n_gt = len(coco["annotations"])
    n_crowd = sum(a["iscrowd"] for a in coco["annotations"])
    print(f"synthetic val set: {NUM_IMAGES} images, {len(CLASSES)} classes, {n_gt} annotations "
          f"({n_crowd} crowd), {n_dets} detections")
    t_ours, (ap, ap50) = best_time(lambda: ours_coco_part(coco, detections), REPEATS_OURS)
    t_full, full = best_time(lambda: evaluate_detections(coco, detections), REPEATS_OURS)
    t_ref, (ref_ap, ref_ap50) = best_time(lambda: pycocotools_eval(coco, detections), REPEATS_REF)
    print(f"AP@[.5:.95]  ours {ap:.6f}  pycocotools {ref_ap:.6f}  |diff| {abs(ap - ref_ap):.2e}")
    print(f"AP50         ours {ap50:.6f}  pycocotools {ref_ap50:.6f}  |diff| {abs(ap50 - ref_ap50):.2e}")
    print(f"full evaluate_detections: mAP50 {full['mAP50']:.3f}%  mAP {full['mAP']:.3f}%  "
          f"voc_mAP50 {full['voc_mAP50']:.3f}%")
    print(f"ours, COCO part (validate + flatten + COCO AP), best of {REPEATS_OURS}: {t_ours * 1e3:8.1f} ms")
    print(f"ours, full evaluate_detections (COCO + VOC),     best of {REPEATS_OURS}: {t_full * 1e3:8.1f} ms")
    print(f"pycocotools (COCO + loadRes + evaluate + accumulate), best of {REPEATS_REF}: {t_ref * 1e3:8.1f} ms")
    print(f"speed-up, pycocotools / ours COCO part: {t_ref / t_ours:6.1f}x")
    print(f"speed-up, pycocotools / ours full call: {t_ref / t_full:6.1f}x")


if __name__ == "__main__":
    main()
