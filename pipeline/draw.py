"""Boxes with captions drawn on images (Pillow only: the command line and the reports use it,
and neither needs torch)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

#: One colour per class index (cycled), distinct on road scenes.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40))
#: Ground truth beside predictions: one colour for all of it.
TRUTH_COLOUR = (255, 255, 255)


def class_colour(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def draw_boxes(image: Image.Image, boxes: np.ndarray, captions: Sequence[str],
               colours: Sequence[tuple[int, int, int]], width: int = 2) -> Image.Image:
    """Draw ``boxes`` ``[K, 4]`` (x1, y1, x2, y2 in the image's pixels) with a caption above each,
    in place; returns ``image``."""
    draw = ImageDraw.Draw(image)
    for box, caption, colour in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), captions, colours):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if caption:
            draw.text((x1 + 2, max(0.0, y1 - 11)), caption, fill=colour)
    return image
