"""Shared test helpers: tiny KITTI folders and COCO-format fixtures written on the fly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.structures import Batch

REPO = Path(__file__).resolve().parents[1]
#: Small reference files (json) copied into the repository, so the checks that use them always run.
LOCAL_FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: Large ones (tensors, tens of MB) stay in ../shared/fixtures beside the repository.
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def reference_fixture(relative: str) -> Path:
    """The reference file ``relative`` (e.g. ``mmdet/voc_map_golden.json``): the repository's copy
    if there is one, else ../shared/fixtures'; skips the calling test with the reason when neither exists."""
    for root in (LOCAL_FIXTURES, SHARED_FIXTURES):
        if (root / relative).is_file():
            return root / relative
    pytest.skip(f"reference fixture {relative} not found in tests/fixtures/ or ../shared/fixtures/ "
                "(the large MMDetection tensors ship in ../shared/fixtures only)")


def kitti_line(kind: str, box: tuple[float, float, float, float], truncated: float = 0.0,
               occluded: int = 0) -> str:
    """A valid 15-field KITTI label line."""
    x1, y1, x2, y2 = box
    if kind == "DontCare":
        return f"DontCare -1 -1 -10 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} -1 -1 -1 -1000 -1000 -1000 -10"
    return (f"{kind} {truncated:.2f} {occluded} -1.57 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} "
            "1.50 1.60 3.90 1.00 1.70 20.00 -1.57")


def write_kitti(root: Path, frames: dict[int, list[str]], size: tuple[int, int] = (120, 40)) -> Path:
    """Write ``root/image_2/<id>.png`` and ``root/label_2/<id>.txt`` for each frame."""
    (root / "image_2").mkdir(parents=True, exist_ok=True)
    (root / "label_2").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for frame_id, lines in frames.items():
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "image_2" / f"{frame_id:06d}.png")
        (root / "label_2" / f"{frame_id:06d}.txt").write_text("".join(line + "\n" for line in lines))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: as fast as two, and it does not
    spin against other processes on a shared 2-core machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kitti_root(tmp_path: Path) -> Path:
    """Ten frames covering every raw class, an ignore region and truncation."""
    frames = {}
    kinds = ["Car", "Van", "Truck", "Tram", "Pedestrian", "Person_sitting", "Cyclist", "Misc", "Car", "Cyclist"]
    for i, kind in enumerate(kinds):
        frames[i] = [kitti_line(kind, (10 + i, 5, 40 + i, 30), truncated=0.1 * (i % 3), occluded=i % 3),
                     kitti_line("DontCare", (80, 10, 100, 20))]
    return write_kitti(tmp_path / "raw" / "kit", frames)


# COCO 2017 category ids and names (a subset, with real ids) for generated fixtures.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (17, "cat"), (18, "dog"),
    (62, "chair"), (63, "couch"), (67, "dining table"), (72, "tv"),
]


def write_coco(root: Path, split: str, images: list[list[tuple[int, tuple, int]]], seed: int = 0) -> Path:
    """Write a COCO-format instances json and its images under ``root``.

    ``images``: per image a list of ``(category_id, (x, y, w, h), iscrowd)``.
    """
    rng = np.random.default_rng(seed)
    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"info": {}, "licenses": [], "images": [], "annotations": [],
            "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in COCO_CATEGORIES]}
    for index, objects in enumerate(images):
        image_id = 1000 * (1 if split == "train" else 2) + index
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image_dir / name)
        data["images"].append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        for cat, bbox, crowd in objects:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id,
                                        "category_id": cat, "bbox": list(bbox), "iscrowd": crowd,
                                        "area": bbox[2] * bbox[3]})
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def plain_batch(images: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> Batch:
    """A Batch of unflipped, unscaled, unpadded images ``[N, 3, H, W]`` with the given boxes
    (x1,y1,x2,y2 input pixels) and labels, no ignore regions, image ids ``0..N-1``."""
    n, hw = images.shape[0], tuple(images.shape[-2:])
    return Batch(images=images, boxes=boxes, labels=labels, ignore_boxes=[torch.zeros(0, 4) for _ in range(n)],
                 image_ids=list(range(n)), scale_factors=torch.ones(n, 2), flipped=torch.zeros(n, dtype=torch.bool),
                 image_sizes=[hw] * n, orig_sizes=[hw] * n)
