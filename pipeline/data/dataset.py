"""A torch Dataset over a curated COCO-format json, and the collate into :class:`Batch`.

Per image: decode RGB as displayed (EXIF orientation applied: :func:`pipeline.data.images.read_rgb`,
still importable from here), keep-ratio resize into the ``input`` box, flip with probability
``flip_prob`` (training only; decided by ``(seed, epoch, index)`` so runs are
reproducible whatever the worker count), normalise, pad to the fixed padded input shape.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import InputParams
from pipeline.data import transforms as T
from pipeline.data.images import read_rgb
from pipeline.errors import UserError
from pipeline.structures import Batch


@dataclass
class Sample:
    """One transformed image, before collation. Boxes in input pixels."""

    image: np.ndarray          # [3, H, W] float32, padded
    boxes: np.ndarray          # [K, 4] float32
    labels: np.ndarray         # [K] int64
    ignore_boxes: np.ndarray   # [M, 4] float32
    image_id: int
    scale: tuple[float, float]
    flipped: bool
    image_size: tuple[int, int]
    orig_size: tuple[int, int]


def load_curated(path: Path) -> dict[str, Any]:
    """Read a curated json (see docs/curated-format.md)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: curated dataset not found; run `dvc repro curate` first")
    data = json.loads(path.read_text())
    for key in ("info", "categories", "images", "annotations"):
        if key not in data:
            raise UserError(f"{path}: missing key {key!r}; re-run the curate stage")
    return data


class CuratedDataset(Dataset):
    """Images and targets of one curated split.

    Args:
        coco: the curated json dict (or a path to it).
        input_params: the ``input`` section of params.
        train: enables random flipping.
        seed: base seed of the flip decisions.
    """

    def __init__(self, coco: dict[str, Any] | Path | str, input_params: InputParams,
                 train: bool, seed: int = 0) -> None:
        self.coco = coco if isinstance(coco, dict) else load_curated(Path(coco))
        self.input = input_params
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.image_root = Path(self.coco["info"]["image_root"])
        self.images = list(self.coco["images"])
        self.categories = list(self.coco["categories"])
        self.class_names = [c["name"] for c in self.categories]
        cat_index = {c["id"]: i for i, c in enumerate(self.categories)}
        self._objects: dict[int, list[tuple[list[float], int]]] = defaultdict(list)
        self._ignores: dict[int, set[tuple[float, ...]]] = defaultdict(set)
        for ann in self.coco["annotations"]:
            x, y, w, h = ann["bbox"]
            box = (x, y, x + w, y + h)
            if ann.get("iscrowd", 0) or ann.get("ignore", 0):
                self._ignores[ann["image_id"]].add(box)   # replicated per category: dedupe
            else:
                self._objects[ann["image_id"]].append((list(box), cat_index[ann["category_id"]]))

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Change the flip decisions for a new epoch."""
        self.epoch = epoch

    def _flip(self, index: int) -> bool:
        if not self.train or self.input.flip_prob <= 0:
            return False
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return bool(rng.random() < self.input.flip_prob)

    def __getitem__(self, index: int) -> Sample:
        record = self.images[index]
        rgb = read_rgb(self.image_root / record["file_name"])
        orig_h, orig_w = rgb.shape[:2]
        resized, sx, sy = T.resize_image(rgb, self.input.width, self.input.height)
        h, w = resized.shape[:2]
        objects = self._objects.get(record["id"], [])
        boxes = np.array([b for b, _ in objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([c for _, c in objects], dtype=np.int64)
        ignores = np.array(sorted(self._ignores.get(record["id"], ())), dtype=np.float32).reshape(-1, 4)
        boxes, ignores = T.scale_boxes(boxes, sx, sy), T.scale_boxes(ignores, sx, sy)
        flipped = self._flip(index)
        if flipped:
            resized = np.ascontiguousarray(resized[:, ::-1])
            boxes, ignores = T.flip_boxes(boxes, w), T.flip_boxes(ignores, w)
        pad_h, pad_w = self.input.padded_shape
        image = T.pad_to(T.normalize(resized, self.input.mean, self.input.std), pad_h, pad_w)
        return Sample(image=image, boxes=boxes, labels=labels, ignore_boxes=ignores,
                      image_id=int(record["id"]), scale=(sx, sy), flipped=flipped,
                      image_size=(h, w), orig_size=(orig_h, orig_w))


def spread_indices(size: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(size)`` (all of them when ``count >= size``):
    the int8 calibration images, the same for post-training int8 and quantization-aware training."""
    n = min(count, size)
    return sorted(set(np.linspace(0, size - 1, n).round().astype(int).tolist())) if n > 0 else []


def collate(samples: list[Sample]) -> Batch:
    """Stack samples (all padded to the same shape) into a :class:`Batch`."""
    return Batch(
        images=torch.from_numpy(np.stack([s.image for s in samples])),
        boxes=[torch.from_numpy(s.boxes) for s in samples],
        labels=[torch.from_numpy(s.labels) for s in samples],
        ignore_boxes=[torch.from_numpy(s.ignore_boxes) for s in samples],
        image_ids=[s.image_id for s in samples],
        scale_factors=torch.tensor([s.scale for s in samples], dtype=torch.float32),
        flipped=torch.tensor([s.flipped for s in samples], dtype=torch.bool),
        image_sizes=[s.image_size for s in samples],
        orig_sizes=[s.orig_size for s in samples],
    )
