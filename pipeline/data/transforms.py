"""Image and box transforms: keep-ratio resize, horizontal flip, normalise, pad.

Boxes are ``[K, 4]`` float32 x1,y1,x2,y2 in pixels. Functions are pure (numpy in, numpy
out) so the exported-model runtime can share the exact preprocessing rule.

The resize is the one a C++ or GPU pipeline can reproduce: bilinear with half-pixel centres
and no antialiasing, which is what ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` and
NPP's linear resize compute (PIL's ``BILINEAR`` filters over the whole footprint when shrinking,
so nothing outside PIL reproduces it). Training, evaluation, the export parity gate and the
runtime all call :func:`resize_image`, whose output size is :func:`resized_size`'s (the one
place that computes it; the manifest states its rule, :data:`SIZE_RULE`).
"""
from __future__ import annotations

import math

import numpy as np

#: How :func:`resize_bilinear` samples, stated in the export manifest for other implementations.
INTERPOLATION = ("bilinear, half-pixel centres: src = (dst + 0.5) * in_size / out_size - 0.5, clamped to "
                 "[0, in_size - 1]; no antialiasing; rounded half up to uint8 (cv2.INTER_LINEAR)")


#: How :func:`resized_size` rounds, stated in the export manifest for other implementations.
SIZE_RULE = ("scale = min(resize_w / w, resize_h / h); out_w = floor(w * scale + 0.5), out_h = floor(h * scale + 0.5), "
             "at least 1: halves round up, not to even (C: (int)floor(w * scale + 0.5)); IEEE double, the product "
             "rounded before 0.5 is added (no fused multiply-add)")


def fit_scale(width: int, height: int, box_width: int, box_height: int) -> float:
    """Scale that fits a ``width x height`` image into the box keeping the aspect ratio (float64)."""
    return min(box_width / width, box_height / height)


def resized_size(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """``(out_w, out_h)`` of the keep-ratio resize of a ``width x height`` image into the
    ``box_width x box_height`` box, as :data:`SIZE_RULE`: ``floor(x * scale + 0.5)``, at least 1.

    Half up rather than Python's ``round`` (half to even), so C's ``floor(x + 0.5)`` reproduces
    it: 333 x 192 into 320 x 96 is 167 x 96 (333 * 0.5 = 166.5), not 166 x 96.
    """
    scale = fit_scale(width, height, box_width, box_height)
    return max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5))


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index along one axis: the two source indices and the weight of the second."""
    pos = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    pos = np.clip(pos, 0.0, in_size - 1)
    first = np.floor(pos).astype(np.int64)
    second = np.minimum(first + 1, in_size - 1)
    return first, second, (pos - first).astype(np.float32)


def resize_bilinear(image: np.ndarray, out_width: int, out_height: int) -> np.ndarray:
    """``[H, W, C]`` uint8 -> ``[out_height, out_width, C]`` uint8, sampled as :data:`INTERPOLATION`
    (separable: rows, then columns, in float32)."""
    height, width = image.shape[:2]
    y0, y1, wy = _taps(height, out_height)
    x0, x1, wx = _taps(width, out_width)
    pixels = image.astype(np.float32)
    rows = pixels[y0] * (1.0 - wy)[:, None, None] + pixels[y1] * wy[:, None, None]
    out = rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, box_width: int, box_height: int) -> tuple[np.ndarray, float, float]:
    """Keep-ratio bilinear resize (:func:`resize_bilinear`) of an ``[H, W, 3]`` uint8 image into the box.

    Returns the resized image (of :func:`resized_size`) and the exact per-axis factors
    ``(sx, sy)`` (the output size divided by the input size, as MMDetection records them; a box
    maps back to the original image as ``x / sx``, ``y / sy``).
    """
    height, width = image.shape[:2]
    new_w, new_h = resized_size(width, height, box_width, box_height)
    if (new_w, new_h) != (width, height):
        image = resize_bilinear(image, new_w, new_h)
    return image, new_w / width, new_h / height


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Multiply x coordinates by ``sx`` and y by ``sy``."""
    return boxes * np.array([sx, sy, sx, sy], dtype=np.float32)


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror boxes horizontally inside an image of ``width`` pixels."""
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB -> ``[3, H, W]`` float32 ``(x - mean) / std``."""
    out = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def pad_to(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad a ``[3, h, w]`` array at the bottom and right to ``[3, height, width]``."""
    _, h, w = chw.shape
    if h > height or w > width:
        raise ValueError(f"cannot pad a {h}x{w} image to {height}x{width}")
    out = np.zeros((chw.shape[0], height, width), dtype=chw.dtype)
    out[:, :h, :w] = chw
    return out
