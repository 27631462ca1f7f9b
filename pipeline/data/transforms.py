"""Image and box transforms: keep-ratio resize, horizontal flip, normalise, pad.

Boxes are ``[K, 4]`` float32 x1,y1,x2,y2 in pixels. Functions are pure (numpy in, numpy
out) so the exported-model runtime can share the exact preprocessing rule.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def fit_scale(width: int, height: int, box_width: int, box_height: int) -> float:
    """Scale that fits a ``width x height`` image into the box keeping the aspect ratio."""
    return min(box_width / width, box_height / height)


def resize_image(image: np.ndarray, box_width: int, box_height: int) -> tuple[np.ndarray, float, float]:
    """Keep-ratio bilinear resize of an ``[H, W, 3]`` uint8 image into the box.

    Returns the resized image and the exact per-axis factors ``(sx, sy)`` (the rounded
    output size divided by the input size, as MMDetection records them).
    """
    height, width = image.shape[:2]
    scale = fit_scale(width, height, box_width, box_height)
    new_w = max(1, int(round(width * scale)))
    new_h = max(1, int(round(height * scale)))
    if (new_w, new_h) != (width, height):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
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
