"""Loading: resize, flip and pad, the Batch record, and mapping boxes back to the image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import InputParams
from pipeline.data.curate import curate_kitti
from pipeline.data.dataset import CuratedDataset, collate

from conftest import kitti_line, write_kitti


@pytest.fixture
def coco(tmp_path):
    frames = {i: [kitti_line("Car", (10, 4, 50, 30)), kitti_line("Pedestrian", (90, 10, 100, 38)),
                  kitti_line("DontCare", (60, 0, 80, 10))] for i in range(6)}
    root = write_kitti(tmp_path / "kit", frames, size=(120, 40))
    return curate_kitti(root, "kit", 0.2, 0, 1.0).train


def test_keep_ratio_resize_pad_and_box_scaling(coco):
    params = InputParams(width=200, height=100, pad_divisor=32, flip_prob=0.0)
    sample = CuratedDataset(coco, params, train=True)[0]
    # 120x40 fits 200x100 with scale min(200/120, 100/40) = 5/3 -> 200x67
    assert sample.image_size == (67, 200)
    assert sample.image.shape == (3, 128, 224)           # padded to multiples of 32
    sx, sy = sample.scale
    assert sx == pytest.approx(200 / 120) and sy == pytest.approx(67 / 40)
    np.testing.assert_allclose(sample.boxes[0], [10 * sx, 4 * sy, 50 * sx, 30 * sy], rtol=1e-6)
    assert sample.labels.tolist() == [0, 1]
    assert sample.ignore_boxes.shape == (1, 4)            # replicated per category, deduplicated
    assert np.all(sample.image[:, 67:, :] == 0) and np.all(sample.image[:, :, 200:] == 0)


def test_normalisation_uses_mean_and_std(coco):
    params = InputParams(width=120, height=40, flip_prob=0.0, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    ds = CuratedDataset(coco, params, train=False)
    sample = ds[0]
    rgb = np.asarray(__import__("PIL.Image").Image.open(ds.image_root / ds.images[0]["file_name"]).convert("RGB"))
    np.testing.assert_allclose(sample.image[1, :40, :120], (rgb[..., 1] - 20.0) / 4.0, rtol=1e-6)


def test_flip_mirrors_image_and_boxes_and_is_reproducible_per_epoch(coco):
    params = InputParams(width=120, height=40, flip_prob=1.0)
    flipped = CuratedDataset(coco, params, train=True)[0]
    plain = CuratedDataset(coco, params, train=False)[0]
    assert flipped.flipped and not plain.flipped
    np.testing.assert_allclose(flipped.image[:, :40, :120], plain.image[:, :40, :120][:, :, ::-1])
    np.testing.assert_allclose(flipped.boxes[0], [120 - 50, 4, 120 - 10, 30])

    half = InputParams(width=120, height=40, flip_prob=0.5)
    ds = CuratedDataset(coco, half, train=True, seed=1)
    epoch0 = [ds[i].flipped for i in range(len(ds))]
    assert epoch0 == [ds[i].flipped for i in range(len(ds))]
    decisions = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        decisions.add(tuple(ds[i].flipped for i in range(len(ds))))
    assert len(decisions) > 1                              # a new epoch draws new flips


def test_batch_record_maps_boxes_back_to_original_pixels(coco):
    params = InputParams(width=200, height=100, flip_prob=1.0)
    ds = CuratedDataset(coco, params, train=True)
    batch = collate([ds[0], ds[1]])
    assert batch.images.shape == (2, 3, 128, 224) and batch.images.dtype == torch.float32
    assert batch.flipped.tolist() == [True, True]
    assert batch.scale_factors.shape == (2, 2)
    assert batch.image_ids == [ds.images[0]["id"], ds.images[1]["id"]]
    back = batch.to_original(0, batch.boxes[0])
    torch.testing.assert_close(back, torch.tensor([[10.0, 4, 50, 30], [90, 10, 100, 38]]), atol=1e-4, rtol=0)
    assert batch.input_shape == (128, 224)
