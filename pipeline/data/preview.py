"""A picture of curated data: a grid of training images with their boxes and class names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from pipeline.data.dataset import read_rgb

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40)]
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
    colours = {c["id"]: PALETTE[i % len(PALETTE)] for i, c in enumerate(coco["categories"])}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    root = Path(coco["info"]["image_root"])
    tiles = []
    for record in coco["images"][:count]:
        tile = Image.fromarray(read_rgb(root / record["file_name"]))
        draw_annotations(tile, by_image.get(record["id"], []), names, colours)
        scale = tile_width / tile.width
        tiles.append(tile.resize((tile_width, max(1, round(tile.height * scale))), Image.BILINEAR))
    if not tiles:
        return Image.new("RGB", (tile_width, 32), (0, 0, 0))
    rows = -(-len(tiles) // columns)
    tile_h = max(t.height for t in tiles)
    grid = Image.new("RGB", (columns * tile_width, rows * tile_h), (20, 20, 20))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * tile_width, (i // columns) * tile_h))
    return grid
