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


def tile_grid(tiles: Sequence[Image.Image], columns: int = 2, tile_width: int = 640) -> Image.Image:
    """The ``tiles`` scaled to ``tile_width`` and laid out ``columns`` per row on a dark ground."""
    scaled = [t.resize((tile_width, max(1, round(t.height * tile_width / t.width))), Image.BILINEAR) for t in tiles]
    if not scaled:
        return Image.new("RGB", (tile_width, 32), (0, 0, 0))
    rows = -(-len(scaled) // columns)
    tile_h = max(t.height for t in scaled)
    grid = Image.new("RGB", (columns * tile_width, rows * tile_h), (20, 20, 20))
    for i, tile in enumerate(scaled):
        grid.paste(tile, ((i % columns) * tile_width, (i // columns) * tile_h))
    return grid
