"""COCO-Traffic: COCO 2017 restricted to 13 road-related categories (docs/method.md, 'Protocol').

Kept categories (COCO id: name): 1 person, 2 bicycle, 3 car, 4 motorcycle, 6 bus, 7 train,
8 truck, 10 traffic light, 11 fire hydrant, 13 stop sign, 14 parking meter, 17 cat, 18 dog.
An image is kept only if it holds at least one of the ten road-related ones (all but
person, cat and dog), in train and val alike.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

#: COCO category id -> name for the ten road-related categories.
ROAD_CATEGORIES: dict[int, str] = {
    2: "bicycle", 3: "car", 4: "motorcycle", 6: "bus", 7: "train", 8: "truck",
    10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter",
}
#: The three categories kept but not sufficient to keep an image.
OTHER_CATEGORIES: dict[int, str] = {1: "person", 17: "cat", 18: "dog"}
KEPT_CATEGORIES: dict[int, str] = dict(sorted({**ROAD_CATEGORIES, **OTHER_CATEGORIES}.items()))

REQUIRED_KEYS = ("images", "annotations", "categories")
REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")
REQUIRED_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


def load_coco_json(path: Path) -> dict[str, Any]:
    """Read a COCO instances json and check the keys curation relies on."""
    if not path.is_file():
        raise UserError(f"{path}: COCO annotation file not found; check sources.<dataset>.train_json/val_json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid json ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a COCO instances object at the top level")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise UserError(f"{path}: missing key {key!r}; a COCO instances json needs {', '.join(REQUIRED_KEYS)}")
    for key in REQUIRED_KEYS:
        if not isinstance(data[key], list):
            raise UserError(f"{path}: {key!r} is a {type(data[key]).__name__}; COCO keeps {key} as a list of "
                            "records: re-export the file in COCO's instances format")
    for kind, records, keys in (("images", data["images"], REQUIRED_IMAGE_KEYS),
                                ("annotations", data["annotations"], REQUIRED_ANN_KEYS)):
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise UserError(f"{path}: {kind}[{index}] is a {type(record).__name__}, expected an object")
            missing = [k for k in keys if k not in record]
            if missing:
                raise UserError(f"{path}: {kind}[{index}] is missing key {missing[0]!r}")
    image_ids = _check_images(path, data["images"])
    for index, ann in enumerate(data["annotations"]):
        _check_integers(path, "annotations", index, ann, ("image_id", "category_id"))
        if ann["image_id"] not in image_ids:
            raise UserError(f"{path}: annotations[{index}] (id {ann['id']!r}): image_id {ann['image_id']} is not "
                            "the id of any entry in 'images'; fix the image_id or add the image's record")
        check_bbox(ann["bbox"], f"{path}: annotations[{index}].bbox")
    names = {c.get("id"): c.get("name") for c in data["categories"]}
    for cat_id, name in KEPT_CATEGORIES.items():
        if names.get(cat_id) != name:
            raise UserError(
                f"{path}: category id {cat_id} should be {name!r} (COCO 2017 ids), found {names.get(cat_id)!r}"
            )
    return data


def _check_images(path: Path, images: list[dict]) -> set[int]:
    """Integer ``id``, ``width``, ``height`` and unique ids; returns the ids."""
    seen: set[int] = set()
    for index, record in enumerate(images):
        _check_integers(path, "images", index, record, ("id", "width", "height"))
        if record["id"] in seen:
            raise UserError(f"{path}: images[{index}].id = {record['id']!r} is used by another image too; "
                            "image ids must be unique: fix the file")
        seen.add(record["id"])
    return seen


def _check_integers(path: Path, kind: str, index: int, record: dict, keys: tuple[str, ...]) -> None:
    """``record[key]`` is a JSON integer for each of ``keys`` (COCO's ids and sizes are)."""
    for key in keys:
        value = record[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{path}: {kind}[{index}] (id {record['id']!r}): field {key!r} = {value!r} is a "
                            f"{type(value).__name__}, expected an integer; fix the "
                            f"{'image record' if kind == 'images' else 'annotation'}")


def check_bbox(bbox: Any, where: str) -> None:
    """A COCO ``[x, y, w, h]``: four finite numbers, ``w, h >= 0``; else one line."""
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise UserError(f"{where} = {bbox!r} is not four numbers [x, y, width, height]; fix the annotation")
    if not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise UserError(f"{where} = {bbox!r} must be finite with width, height >= 0; fix the annotation")


def select_road_images(data: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Images with at least one road-related, non-crowd object, and their kept annotations.

    Returns ``(images, annotations)``; annotations of the 13 kept categories only.
    """
    keep_image_ids = {
        ann["image_id"] for ann in data["annotations"]
        if ann["category_id"] in ROAD_CATEGORIES and not ann.get("iscrowd", 0)
    }
    images = [img for img in data["images"] if img["id"] in keep_image_ids]
    annotations = [
        ann for ann in data["annotations"]
        if ann["image_id"] in keep_image_ids and ann["category_id"] in KEPT_CATEGORIES
    ]
    return images, annotations
