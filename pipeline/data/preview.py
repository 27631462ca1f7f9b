"""A picture of curated data: a grid of training images with their boxes and class names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from pipeline.data.images import read_rgb
from pipeline.draw import class_colour, tile_grid

IGNORE_COLOUR = (128, 128, 128)


def draw_annotations(image: Image.Image, annotations: list[dict], names: dict[int, str],
                     colours: dict[int, tuple[int, int, int]]) -> None:
    """Draw COCO ``[x, y, w, h]`` boxes in place; ignore regions dashed grey, no label."""
    draw = ImageDraw.Draw(image)
    seen_ignores = set()
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        if ann.get("iscrowd", 0) or ann.get("ignore", 0):
            if (x, y, w, h) in seen_ignores:
                continue
            seen_ignores.add((x, y, w, h))
            for i in range(int(x), int(x + w), 6):
                draw.line([(i, y), (min(i + 3, x + w), y)], fill=IGNORE_COLOUR)
                draw.line([(i, y + h), (min(i + 3, x + w), y + h)], fill=IGNORE_COLOUR)
            continue
        colour = colours[ann["category_id"]]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        draw.text((x + 2, max(0, y - 11)), names[ann["category_id"]], fill=colour)


def preview_grid(coco: dict[str, Any], count: int, columns: int = 2, tile_width: int = 640) -> Image.Image:
    """Render the first ``count`` images of a curated split with their annotations."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    colours = {c["id"]: class_colour(i) for i, c in enumerate(coco["categories"])}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    root = Path(coco["info"]["image_root"])
    tiles = []
    for record in coco["images"][:count]:
        tile = Image.fromarray(read_rgb(root / record["file_name"]))
        draw_annotations(tile, by_image.get(record["id"], []), names, colours)
        tiles.append(tile)
    return tile_grid(tiles, columns, tile_width)
