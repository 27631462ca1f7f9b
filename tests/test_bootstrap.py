"""The paired bootstrap of AP50: weighted AP equals a real evaluation of repeated images, and
the interval behaves (covers the gain, excludes 0 only for a real difference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.metrics import evaluate_detections
from pipeline.metrics.bootstrap import image_matches, joint_bootstrap, paired_gain, weighted_ap50
from pipeline.structures import Detections

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def _case(seed: int, num_images: int = 40, quality: float = 0.7):
    """A curated dict and detections: each ground truth is found (jittered) with probability
    ``quality``, plus random false positives; scores are distinct (no ties)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], {}
    scores = iter(rng.permutation(100_000) / 100_000)
    for img in range(num_images):
        image_id = 10 * img + 3
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 300, "height": 200})
        boxes, labels, conf = [], [], []
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(10, 80, 2)
            label = int(rng.integers(0, 3))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label + 1,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.1)})
            if rng.random() < quality:
                boxes.append([x + rng.normal(0, 1), y + rng.normal(0, 1), x + w, y + h])
                labels.append(label), conf.append(next(scores))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 200, 2)
            boxes.append([x, y, x + 20, y + 30]), labels.append(int(rng.integers(0, 3))), conf.append(next(scores))
        dets[image_id] = Detections(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                                    torch.tensor(conf, dtype=torch.float64), torch.tensor(labels, dtype=torch.int64))
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    return coco, dets


def test_unit_weights_give_the_evaluators_ap50():
    coco, dets = _case(0)
    expected = evaluate_detections(coco, dets)["mAP50"]
    assert weighted_ap50(image_matches(coco, dets), np.ones(40)) == pytest.approx(expected, abs=1e-9)


def test_weights_equal_a_real_evaluation_with_the_images_repeated():
    coco, dets = _case(1)
    matches = image_matches(coco, dets)
    counts = np.random.default_rng(5).integers(0, 3, 40)
    repeated = {"images": [], "annotations": [], "categories": coco["categories"]}
    repeated_dets = {}
    ids = [img["id"] for img in coco["images"]]
    for index, image_id in enumerate(sorted(ids)):
        for copy in range(int(counts[index])):
            new_id = image_id * 10 + copy
            repeated["images"].append({**next(i for i in coco["images"] if i["id"] == image_id), "id": new_id})
            repeated["annotations"] += [{**a, "id": len(repeated["annotations"]) + k + 1, "image_id": new_id}
                                        for k, a in enumerate(a for a in coco["annotations"] if a["image_id"] == image_id)]
            d = dets[image_id]
            # copies of a detection get scores a hair apart, below any gap between real scores
            repeated_dets[new_id] = Detections(d.boxes, d.scores - copy * 1e-9, d.labels)
    expected = evaluate_detections(repeated, repeated_dets)["mAP50"]
    assert weighted_ap50(matches, counts.astype(float)) == pytest.approx(expected, abs=1e-6)


def test_interval_covers_a_real_gain_and_straddles_zero_for_equal_models():
    coco, good = _case(2, num_images=120, quality=0.9)
    _, bad = _case(2, num_images=120, quality=0.5)
    g, b = image_matches(coco, good), image_matches(coco, bad)
    gain = paired_gain([g], [b], resamples=300)
    assert gain.mean > 5 and gain.low > 0 and gain.low <= gain.mean <= gain.high
    same = paired_gain([g], [g], resamples=100)
    assert same.mean == 0 and same.low == 0 and same.high == 0
    assert not same.excludes_zero()


def test_joint_bootstrap_gives_every_pair_the_paired_interval():
    """One joint resampling (the ship stage's) gives each pair the interval paired_gain gives it
    (up to the resampling noise of 1000 draws) and each model an interval around its own AP50."""
    coco, good = _case(2, num_images=120, quality=0.9)
    _, bad = _case(2, num_images=120, quality=0.5)
    g, b = image_matches(coco, good), image_matches(coco, bad)
    joint = joint_bootstrap({"good": g, "bad": b, "copy": g}, resamples=1000)
    pair, single = joint.gain("good", "bad"), paired_gain([g], [b], resamples=1000)
    assert pair.mean == pytest.approx(single.mean, abs=1e-9)
    assert pair.low == pytest.approx(single.low, abs=1.0) and pair.high == pytest.approx(single.high, abs=1.0)
    same = joint.gain("good", "copy")
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    own = joint.interval("bad")
    assert own.mean == pytest.approx(evaluate_detections(coco, bad)["mAP50"], abs=1e-6)
    assert own.low < own.mean < own.high


def test_seeds_widen_the_interval_of_the_mean_gain():
    """Two seeds that disagree make the interval of the mean gain wider than either alone."""
    coco, base = _case(3, num_images=80, quality=0.6)
    _, seed_a = _case(3, num_images=80, quality=0.95)
    _, seed_b = _case(3, num_images=80, quality=0.6)
    m_base, m_a, m_b = (image_matches(coco, d) for d in (base, seed_a, seed_b))
    one = paired_gain([m_a], [m_base], resamples=300)
    two = paired_gain([m_a, m_b], [m_base, m_base], resamples=300)
    assert two.mean == pytest.approx(one.mean / 2, abs=1e-9)
    assert (two.high - two.low) > (one.high - one.low)


def test_mismatched_image_sets_are_refused():
    coco, dets = _case(4, num_images=10)
    coco2, dets2 = _case(4, num_images=12)
    with pytest.raises(ValueError, match="same val images"):
        paired_gain([image_matches(coco, dets)], [image_matches(coco2, dets2)], resamples=10)
