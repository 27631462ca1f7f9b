"""Pictures of what a model detects: precision-recall curves, confusion matrix, drawn predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.metrics import evaluate_detections
from pipeline.metrics.coco import interpolated_precision
from pipeline.metrics.diagnostics import confusion_matrix, pr_curves
from pipeline.report.pictures import FILES, predictions_picture, write_pictures
from pipeline.structures import Detections

COCO = {"info": {}, "categories": [{"id": 1, "name": "Car"}, {"id": 2, "name": "Ped"}],
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"},
                   {"id": 2, "width": 100, "height": 100, "file_name": "b.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 20], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [70, 0, 30, 30], "iscrowd": 1, "ignore": 1}]}


def dets(rows) -> Detections:
    return Detections(torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
                      torch.tensor([r[1] for r in rows], dtype=torch.float32),
                      torch.tensor([r[2] for r in rows], dtype=torch.int64))


DETS = {1: dets([([0, 0, 20, 20], 0.9, 0),          # Car on the Car: right
                 ([50, 50, 60, 70], 0.8, 0),        # Car on the Pedestrian: confused
                 ([80, 80, 90, 90], 0.5, 1),        # Pedestrian on nothing: background
                 ([0, 80, 10, 90], 0.1, 1)]),       # below the picture score: not in the matrix
        2: dets([([10, 10, 40, 40], 0.7, 0),        # Car on the Car: right
                 ([72, 2, 98, 28], 0.6, 0)])}       # on the ignore region: not counted


def test_confusion_matrix_counts_confusions_misses_and_false_detections():
    matrix, names = confusion_matrix(COCO, DETS, score_thr=0.3)
    assert names == ["Car", "Ped", "background"]
    np.testing.assert_array_equal(matrix, [[2, 0, 0],     # both cars found as cars
                                           [1, 0, 0],     # the pedestrian detected as a car
                                           [0, 1, 0]])    # one pedestrian detection of nothing
    low, _ = confusion_matrix(COCO, DETS, score_thr=0.05)
    assert low[2, 1] == 2                                  # the 0.1 detection joins the background row
    none, _ = confusion_matrix(COCO, {}, score_thr=0.3)
    np.testing.assert_array_equal(none[:, 2], [2, 1, 0])   # nothing detected: every object missed


def test_pr_curves_agree_with_the_reported_ap50():
    curves = {c.name: c for c in pr_curves(COCO, DETS)}
    car = curves["Car"]
    np.testing.assert_allclose(car.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(car.precision, [1.0, 0.5, 2 / 3])
    metrics = evaluate_detections(COCO, DETS)
    for name, curve in curves.items():
        tp = np.diff(np.concatenate([[0.0], curve.recall])) * curve.num_gt
        ap = float(np.mean(interpolated_precision(tp[None] > 0, tp[None] == 0, curve.num_gt)[0]))
        assert ap * 100 == pytest.approx(metrics["per_class"][name]["AP50"], abs=1e-6)


def test_pictures_draw_truth_and_predictions(tmp_path):
    for record, colour in zip(COCO["images"], (40, 60)):
        Image.fromarray(np.full((100, 100, 3), colour, np.uint8)).save(tmp_path / record["file_name"])
    coco = {**COCO, "info": {"image_root": str(tmp_path)}}
    grid = np.asarray(predictions_picture(coco, DETS, count=2, score_thr=0.3))
    assert grid.shape[1] == 2 * 640
    assert (grid > 200).all(axis=2).any()                  # white ground truth
    assert (np.abs(grid.astype(int) - [230, 25, 75]).sum(axis=2) < 30).any()   # a Car box in its colour
    out = tmp_path / "pics"
    out.mkdir()
    write_pictures(out, coco, DETS, evaluate_detections(coco, DETS), 2, 0.3)
    for name in FILES:
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100


def test_every_picture_names_its_model(tmp_path, monkeypatch):
    import matplotlib.figure

    from pipeline.report.pictures import TITLE_HEIGHT

    for record in COCO["images"]:
        Image.fromarray(np.full((100, 100, 3), 40, np.uint8)).save(tmp_path / record["file_name"])
    coco = {**COCO, "info": {"image_root": str(tmp_path)}}
    plain = np.asarray(predictions_picture(coco, DETS, count=2, score_thr=0.3))
    titled = np.asarray(predictions_picture(coco, DETS, count=2, score_thr=0.3, title="synthetic/gfl/m-resnet18"))
    assert titled.shape[0] == plain.shape[0] + TITLE_HEIGHT
    np.testing.assert_array_equal(titled[TITLE_HEIGHT:], plain)
    assert (titled[:TITLE_HEIGHT] > 200).all(axis=2).any()          # white lettering in the band
    titles = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (titles.append(fig.axes[0].get_title()), real_savefig(fig, *a, **k)))
    write_pictures(tmp_path, coco, DETS, evaluate_detections(coco, DETS), 2, 0.3, "synthetic/gfl/m-resnet18")
    assert len(titles) == 2 and all(t.startswith("synthetic/gfl/m-resnet18\n") for t in titles)
