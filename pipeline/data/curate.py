"""Curation: raw KITTI / COCO folders -> ``data/curated/<dataset>/{train,val,split}.json``.

The curated files are COCO "instances" jsons with grouped categories, ignore regions as
crowd annotations and, for KITTI-format data, the KITTI difficulty inputs; the format is
documented in ``docs/curated-format.md``. Boxes are clipped to their image (both formats; the
counts go to split.json), and the recorded image sizes are the sizes as displayed (EXIF
orientation applied), which is how every stage reads the images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import SourceParams
from pipeline.data import coco_traffic, kitti
from pipeline.data.images import read_header
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


def clip_or_drop(box: tuple[float, float, float, float], width: int, height: int,
                 counts: dict[str, int]) -> tuple[float, float, float, float] | None:
    """``box`` (x1,y1,x2,y2 pixels) clipped to its ``width x height`` image, or None when no area
    is left inside. A box that changes counts in ``counts["clipped"]``, a dropped one also in
    ``counts["outside"]``."""
    clipped = clip_box(box, width, height)
    if clipped == box:
        return box
    counts["clipped"] += 1
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        counts["outside"] += 1
        return None
    return clipped


def _clip_counts(counts: dict[str, int]) -> dict[str, int]:
    """The split.json entries of the counts of :func:`clip_or_drop`."""
    return {"boxes_clipped_to_image": counts["clipped"], "boxes_outside_image_dropped": counts["outside"]}


def _kitti_annotations(frame: kitti.KittiFrame, min_box_size: float, next_id: int,
                       counts: dict[str, int]) -> list[dict]:
    """COCO annotations of one KITTI frame: objects, then per-category ignore regions.

    Boxes reaching outside the image are clipped to it or dropped: :func:`clip_or_drop`."""
    anns = []
    for obj in frame.objects:
        box = clip_or_drop(obj.box, frame.width, frame.height, counts)
        if box is None:
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


def _check_split(image_dir: Path, count: int, val_fraction: float, train: list[int], val: list[int]) -> None:
    """Both sides of a split hold an image: training on none fails, evaluating none reports 0 mAP."""
    if not train or not val:
        raise UserError(f"{image_dir}: {count} frame(s) split with curate.val_fraction {val_fraction:g} give "
                        f"{len(train)} train / {len(val)} val images; both need at least one: add frames "
                        "(at least 2)")


def curate_kitti(root: Path, name: str, val_fraction: float, seed: int, min_box_size: float) -> Curated:
    """Curate a KITTI ``training/`` folder: group classes, ignore regions, 8:2 split."""
    frames = kitti.read_kitti_folder(root)
    ids = [f.frame_id for f in frames]
    train_ids, val_ids = split_ids(ids, val_fraction, seed)
    _check_split(Path(root) / "image_2", len(ids), val_fraction, train_ids, val_ids)
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
             **_clip_counts(counts)}
    return Curated(train=train, val=val, split=split)


def _coco_annotations(anns: list[dict], images: list[dict], min_box_size: float,
                      counts: dict[str, int]) -> list[dict]:
    """Curated records of COCO annotations ``[x, y, w, h]``, ids renumbered from 1.

    Boxes are clipped to their image (``images``' width, height) or dropped, :func:`clip_or_drop`;
    a clipped box's area (COCO's object area) is capped at the clipped box's. Non-crowd boxes
    under ``min_box_size`` are dropped; crowd ones become ignore regions.
    """
    sizes = {img["id"]: (img["width"], img["height"]) for img in images}
    kept = []
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        area = float(ann.get("area", w * h))
        original = (x, y, x + w, y + h)
        box = clip_or_drop(original, *sizes[ann["image_id"]], counts)
        if box is None:
            continue
        x, y, w, h = _xywh(box)
        if box != original:
            area = min(area, w * h)
        crowd = int(bool(ann.get("iscrowd", 0)))
        if not crowd and (w < min_box_size or h < min_box_size):
            continue
        kept.append({"id": len(kept) + 1, "image_id": ann["image_id"], "category_id": ann["category_id"],
                     "bbox": [x, y, w, h], "area": area, "iscrowd": crowd, "ignore": crowd})
    return kept


def _check_image_files(json_path: Path, image_dir: Path, records: list[dict], name: str, split: str) -> None:
    """Every image of ``records`` is in ``image_dir`` with the json's width x height as displayed
    (EXIF orientation applied): the boxes must be drawn on the image every stage reads."""
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: image folder not found; check sources.{name}.{split}_images")
    missing = [r["file_name"] for r in records if not (image_dir / r["file_name"]).is_file()]
    if missing:
        raise UserError(f"{image_dir / missing[0]}: image listed in {json_path} is missing "
                        f"({len(missing)} missing in all); complete the download")
    for record in records:
        header = read_header(image_dir / record["file_name"])
        if (header.width, header.height) != (record["width"], record["height"]):
            turned = f" (EXIF orientation {header.orientation})" if header.orientation != 1 else ""
            raise UserError(f"{json_path}: image {record['id']} ({record['file_name']}) is {record['width']} x "
                            f"{record['height']} in the json but {header.width} x {header.height} as displayed"
                            f"{turned}; the pipeline reads images as displayed: fix the json's width, height (and "
                            "boxes) or the image file")


def _coco_split(root: Path, name: str, json_rel: str, images_rel: str, split: str,
                min_box_size: float, counts: dict[str, int]) -> dict[str, Any]:
    """One curated split of COCO-Traffic; boxes clipped as :func:`_coco_annotations` counts."""
    json_path = Path(root) / json_rel
    data = coco_traffic.load_coco_json(json_path)
    images, anns = coco_traffic.select_road_images(data)
    if not images:
        raise UserError(
            f"{json_path}: no image holds a road-related object ({', '.join(coco_traffic.ROAD_CATEGORIES.values())}) "
            "after filtering; check that this is a COCO 2017 instances file"
        )
    categories = [{"id": i, "name": n, "supercategory": "road" if i in coco_traffic.ROAD_CATEGORIES else "other"}
                  for i, n in coco_traffic.KEPT_CATEGORIES.items()]
    image_records = [{k: img[k] for k in ("id", "file_name", "width", "height")}
                     for img in sorted(images, key=lambda r: r["id"])]
    image_dir = Path(root) / images_rel
    _check_image_files(json_path, image_dir, image_records, name, split)
    kept = _coco_annotations(anns, image_records, min_box_size, counts)
    return _coco_dict(name, "coco", image_dir, split, categories, image_records, kept)


def curate_coco_traffic(root: Path, name: str, source: SourceParams, min_box_size: float) -> Curated:
    """Curate COCO 2017 into COCO-Traffic, keeping COCO's own train/val split."""
    if not Path(root).is_dir():
        raise UserError(f"{root}: dataset folder not found; put (or symlink) your COCO 2017 root there")
    counts = {"clipped": 0, "outside": 0}
    train = _coco_split(root, name, source.train_json, source.train_images, "train", min_box_size, counts)
    val = _coco_split(root, name, source.val_json, source.val_images, "val", min_box_size, counts)
    split = {"dataset": name, "seed": None, "val_fraction": None,
             "train": [img["id"] for img in train["images"]], "val": [img["id"] for img in val["images"]],
             **_clip_counts(counts)}
    return Curated(train=train, val=val, split=split)


def curate(root: Path, name: str, source: SourceParams, val_fraction: float, seed: int,
           min_box_size: float) -> Curated:
    """Curate dataset ``name`` whose raw data is in ``root``, by its source format."""
    if source.format == "kitti":
        return curate_kitti(root, name, val_fraction, seed, min_box_size)
    return curate_coco_traffic(root, name, source, min_box_size)
