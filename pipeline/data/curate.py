"""Curation: raw KITTI / COCO folders -> ``data/curated/<dataset>/{train,val,split}.json``.

The curated files are COCO "instances" jsons with grouped categories, ignore regions as
crowd annotations and, for KITTI-format data, the KITTI difficulty inputs; the format is
documented in ``docs/curated-format.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import SourceParams
from pipeline.data import coco_traffic, kitti
from pipeline.errors import UserError

KITTI_CATEGORIES = [
    {"id": i + 1, "name": name, "supercategory": "road_user"} for i, name in enumerate(kitti.GROUPED_CLASSES)
]


@dataclass(frozen=True)
class Curated:
    """A curated dataset: the two COCO dicts and the recorded split."""

    train: dict[str, Any]
    val: dict[str, Any]
    split: dict[str, Any]


def _xywh(box: tuple[float, float, float, float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def split_ids(ids: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle ``ids`` with ``seed`` and cut off ``round(len * val_fraction)`` for val.

    At least one image goes to each side when there are two or more. Returns sorted lists.
    """
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(len(ids) * val_fraction))
    if len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def clip_box(box: tuple[float, float, float, float], width: int, height: int
             ) -> tuple[float, float, float, float]:
    """x1,y1,x2,y2 clipped to the image ``[0, width] x [0, height]``."""
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
            min(max(y2, 0.0), height))


def _kitti_annotations(frame: kitti.KittiFrame, min_box_size: float, next_id: int,
                       counts: dict[str, int]) -> list[dict]:
    """COCO annotations of one KITTI frame: objects, then per-category ignore regions.

    Boxes reaching outside the image are clipped to it (``counts["clipped"]``); a box with no
    area left inside is dropped (``counts["outside"]``)."""
    anns = []
    for obj in frame.objects:
        box = clip_box(obj.box, frame.width, frame.height)
        if box != obj.box:
            counts["clipped"] += 1
            if box[2] <= box[0] or box[3] <= box[1]:
                counts["outside"] += 1
                continue
        x, y, w, h = _xywh(box)
        meta = {"type": obj.type, "truncated": obj.truncated, "occluded": obj.occluded}
        group = kitti.GROUPS[obj.type]
        if group is None:
            for cat in KITTI_CATEGORIES:
                anns.append({"category_id": cat["id"], "iscrowd": 1, "ignore": 1,
                             "bbox": [x, y, w, h], "area": w * h, "kitti": meta})
            continue
        if w < min_box_size or h < min_box_size:
            continue
        cat_id = kitti.GROUPED_CLASSES.index(group) + 1
        anns.append({"category_id": cat_id, "iscrowd": 0, "ignore": 0,
                     "bbox": [x, y, w, h], "area": w * h, "kitti": meta})
    for offset, ann in enumerate(anns):
        ann["id"] = next_id + offset
        ann["image_id"] = frame.frame_id
    return anns


def _coco_dict(name: str, fmt: str, image_root: Path, split: str, categories: list[dict],
               images: list[dict], annotations: list[dict]) -> dict[str, Any]:
    return {
        "info": {"dataset": name, "format": fmt, "image_root": str(image_root), "split": split},
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }


def curate_kitti(root: Path, name: str, val_fraction: float, seed: int, min_box_size: float) -> Curated:
    """Curate a KITTI ``training/`` folder: group classes, ignore regions, 8:2 split."""
    frames = kitti.read_kitti_folder(root)
    ids = [f.frame_id for f in frames]
    train_ids, val_ids = split_ids(ids, val_fraction, seed)
    by_id = {f.frame_id: f for f in frames}
    counts = {"clipped": 0, "outside": 0}

    def build(split: str, split_ids_: list[int]) -> dict[str, Any]:
        images, anns = [], []
        for frame_id in split_ids_:
            frame = by_id[frame_id]
            images.append({"id": frame_id, "file_name": frame.image_path.name,
                           "width": frame.width, "height": frame.height})
            anns.extend(_kitti_annotations(frame, min_box_size, len(anns) + 1, counts))
        return _coco_dict(name, "kitti", Path(root) / "image_2", split, KITTI_CATEGORIES, images, anns)

    train, val = build("train", train_ids), build("val", val_ids)
    split = {"dataset": name, "seed": seed, "val_fraction": val_fraction, "train": train_ids, "val": val_ids,
             "boxes_clipped_to_image": counts["clipped"], "boxes_outside_image_dropped": counts["outside"]}
    return Curated(train=train, val=val, split=split)


def _coco_split(root: Path, name: str, json_rel: str, images_rel: str, split: str,
                min_box_size: float) -> dict[str, Any]:
    json_path = Path(root) / json_rel
    data = coco_traffic.load_coco_json(json_path)
    images, anns = coco_traffic.select_road_images(data)
    if not images:
        raise UserError(
            f"{json_path}: no image holds a road-related object ({', '.join(coco_traffic.ROAD_CATEGORIES.values())}) "
            "after filtering; check that this is a COCO 2017 instances file"
        )
    kept = []
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        crowd = int(bool(ann.get("iscrowd", 0)))
        if not crowd and (w < min_box_size or h < min_box_size):
            continue
        kept.append({"id": len(kept) + 1, "image_id": ann["image_id"], "category_id": ann["category_id"],
                     "bbox": [x, y, w, h], "area": float(ann.get("area", w * h)),
                     "iscrowd": crowd, "ignore": crowd})
    categories = [{"id": i, "name": n, "supercategory": "road" if i in coco_traffic.ROAD_CATEGORIES else "other"}
                  for i, n in coco_traffic.KEPT_CATEGORIES.items()]
    image_records = [{k: img[k] for k in ("id", "file_name", "width", "height")}
                     for img in sorted(images, key=lambda r: r["id"])]
    image_dir = Path(root) / images_rel
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: image folder not found; check sources.{name}.{split}_images")
    missing = [r["file_name"] for r in image_records if not (image_dir / r["file_name"]).is_file()]
    if missing:
        raise UserError(f"{image_dir / missing[0]}: image listed in {json_path} is missing "
                        f"({len(missing)} missing in all); complete the download")
    return _coco_dict(name, "coco", image_dir, split, categories, image_records, kept)


def curate_coco_traffic(root: Path, name: str, source: SourceParams, min_box_size: float) -> Curated:
    """Curate COCO 2017 into COCO-Traffic, keeping COCO's own train/val split."""
    if not Path(root).is_dir():
        raise UserError(f"{root}: dataset folder not found; put (or symlink) your COCO 2017 root there")
    train = _coco_split(root, name, source.train_json, source.train_images, "train", min_box_size)
    val = _coco_split(root, name, source.val_json, source.val_images, "val", min_box_size)
    split = {"dataset": name, "seed": None, "val_fraction": None,
             "train": [img["id"] for img in train["images"]], "val": [img["id"] for img in val["images"]]}
    return Curated(train=train, val=val, split=split)


def curate(root: Path, name: str, source: SourceParams, val_fraction: float, seed: int,
           min_box_size: float) -> Curated:
    """Curate dataset ``name`` whose raw data is in ``root``, by its source format."""
    if source.format == "kitti":
        return curate_kitti(root, name, val_fraction, seed, min_box_size)
    return curate_coco_traffic(root, name, source, min_box_size)
