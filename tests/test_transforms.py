"""The one resize (training, evaluation, parity gate, runtime): half-pixel bilinear without
antialiasing, which a C++ or GPU pipeline (cv2.INTER_LINEAR, NPP) reproduces."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import InputParams
from pipeline.data import transforms as T
from pipeline.deploy.manifest import preprocessing_record
from pipeline.deploy.runtime import preprocess


def reference_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An independent implementation: PyTorch's bilinear, half-pixel centres, no antialias, float."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).numpy()


def road_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, hard edges and noise: where resize rules differ most."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                      ((xx // 7 + yy // 5) % 2) * 255], axis=2).astype(np.int32)
    image += rng.integers(-40, 40, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("in_hw, box", [((375, 1242), (320, 97)), ((192, 640), (320, 96)), ((48, 64), (320, 96)),
                                        ((1, 5), (40, 32)), ((97, 331), (320, 96))],
                         ids=["kitti_down", "synthetic_down", "up", "tiny", "odd"])
def test_runtime_preprocessing_matches_an_independent_bilinear_within_one_grey_level(in_hw, box):
    image = road_like(*in_hw)
    inp = InputParams(width=box[0], height=box[1], pad_divisor=1, mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0))
    pre = preprocessing_record(inp.width, inp.height, inp.padded_shape, inp.mean, inp.std, T.INTERPOLATION)
    prepared = preprocess(image, pre)
    h, w = prepared.size_hw
    pixels = prepared.image[:, :h, :w].transpose(1, 2, 0) * np.array(inp.std) + np.array(inp.mean)
    expected = reference_resize(image, w, h)
    assert np.abs(pixels - expected).max() <= 1.0 + 1e-3
    assert np.abs(pixels - expected).mean() < 0.51                     # rounding only
    assert (w, h) == (max(1, round(in_hw[1] * min(box[0] / in_hw[1], box[1] / in_hw[0]))),
                      max(1, round(in_hw[0] * min(box[0] / in_hw[1], box[1] / in_hw[0]))))


def test_resize_keeps_the_image_when_the_size_is_unchanged():
    image = road_like(96, 320)
    out, sx, sy = T.resize_image(image, 320, 96)
    assert out is image and sx == sy == 1.0


def test_constant_image_stays_constant_and_edges_clamp():
    image = np.full((37, 53, 3), 77, np.uint8)
    assert (T.resize_bilinear(image, 200, 11) == 77).all()
    ramp = np.repeat(np.arange(0, 250, 50, dtype=np.uint8)[None, :, None], 3, axis=2)   # 1 x 5
    up = T.resize_bilinear(ramp, 10, 1)[0, :, 0]
    assert up[0] == 0 and up[-1] == 200                  # half-pixel: the end samples clamp to the edge pixels
    assert list(up[1:3]) == [13, 38]                     # 0.25 and 0.75 of the way from 0 to 50, rounded half up


def test_manifest_states_the_preprocessing_in_numbers():
    pre = preprocessing_record(320, 96, (96, 320), (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), T.INTERPOLATION)
    assert pre["channel_order"] == ["R", "G", "B"] and pre["pad_value"] == 0.0
    assert pre["resize_wh"] == [320, 96] and pre["pad_hw"] == [96, 320]
    assert "half-pixel" in pre["interpolation"] and "no antialiasing" in pre["interpolation"]
