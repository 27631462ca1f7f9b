"""The one resize (training, evaluation, parity gate, runtime): half-pixel bilinear without
antialiasing, which a C++ or GPU pipeline (cv2.INTER_LINEAR, NPP) reproduces."""
from __future__ import annotations

import math
from fractions import Fraction

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
    assert (w, h) == half_up_size(in_hw[1], in_hw[0], *box)


def half_up_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """An independent statement of the size rule in exact rational arithmetic: floor(x * scale + 1/2)."""
    scale = min(Fraction(box_w, width), Fraction(box_h, height))
    return max(1, math.floor(width * scale + Fraction(1, 2))), max(1, math.floor(height * scale + Fraction(1, 2)))


#: (in w x h, box w x h, the output size C's floor(x * scale + 0.5) gives, worked out by hand)
ODD_SIZES = [((333, 192), (320, 96), (167, 96)),      # 333 * 0.5 = 166.5: Python's round gives 166
             ((1001, 301), (320, 96), (319, 96)),     # 1001 * 96 / 301 = 319.26
             ((1242, 375), (320, 96), (318, 96)),     # 1242 * 0.256 = 317.95
             ((103, 64), (320, 96), (155, 96)),       # upscale 1.5: 154.5 -> 155 (Python's round: 154)
             ((1242, 375), (1333, 800), (1333, 402))]  # KITTI into MMDetection's box: 375 * 1333 / 1242 = 402.48


@pytest.mark.parametrize("in_wh, box, out_wh", ODD_SIZES, ids=["333x192", "1001x301", "1242x375", "up_103x64",
                                                                "1242x375_into_1333x800"])
def test_odd_sizes_round_half_up_and_match_opencv_within_one_grey_level(in_wh, box, out_wh):
    """What a C++ consumer computes from the manifest: the size floor(x * scale + 0.5) and
    cv2.resize(..., INTER_LINEAR) at that explicit size (OpenCV's fixed-point weights: one grey level)."""
    cv2 = pytest.importorskip("cv2")
    assert T.resized_size(*in_wh, *box) == half_up_size(*in_wh, *box) == out_wh
    image = road_like(in_wh[1], in_wh[0], seed=in_wh[0])
    inp = InputParams(width=box[0], height=box[1], pad_divisor=1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pre = preprocessing_record(inp.width, inp.height, inp.padded_shape, inp.mean, inp.std, T.INTERPOLATION)
    prepared = preprocess(image, pre)                                    # the runtime's path
    assert prepared.size_hw == (out_wh[1], out_wh[0])
    assert prepared.scale == (out_wh[0] / in_wh[0], out_wh[1] / in_wh[1])
    resized, sx, sy = T.resize_image(image, *box)                        # training's and evaluation's path
    assert resized.shape[:2] == (out_wh[1], out_wh[0]) and (sx, sy) == prepared.scale
    expected = cv2.resize(image, out_wh, interpolation=cv2.INTER_LINEAR).astype(np.int16)
    ours = np.rint(prepared.image[:, :out_wh[1], :out_wh[0]].transpose(1, 2, 0)).astype(np.int16)
    assert np.array_equal(ours, resized.astype(np.int16))
    assert np.abs(ours - expected).max() <= 1


def test_manifest_states_the_size_rule_in_words_and_numbers():
    pre = preprocessing_record(320, 96, (96, 320), (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), T.INTERPOLATION)
    assert "floor(w * scale + 0.5)" in pre["resize"] and "not to even" in pre["resize"]
    examples = {tuple(e["in_wh"]): tuple(e["out_wh"]) for e in pre["resize_examples"]}
    assert examples[(639, 192)] == (320, 96) and examples[(637, 192)] == (319, 96)   # 318.5 -> 319 (even: 318)
    assert examples[(1242, 375)] == (318, 96)
    for e in pre["resize_examples"]:
        assert tuple(e["out_wh"]) == half_up_size(*e["in_wh"], 320, 96)
        assert e["sx_sy"] == [e["out_wh"][0] / e["in_wh"][0], e["out_wh"][1] / e["in_wh"][1]]


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
