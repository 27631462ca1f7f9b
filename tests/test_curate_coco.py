"""COCO-Traffic curation on a generated COCO-format fixture with real category ids."""
from __future__ import annotations

import json

import pytest

from pipeline.config import SourceParams
from pipeline.data.coco_traffic import KEPT_CATEGORIES
from pipeline.data.curate import curate_coco_traffic
from pipeline.errors import UserError

from conftest import write_coco

SOURCE = SourceParams(format="coco")

TRAIN_IMAGES = [
    [(3, (1, 1, 20, 10), 0), (1, (30, 5, 8, 20), 0)],          # car + person: kept
    [(62, (1, 1, 20, 20), 0), (72, (25, 1, 20, 15), 0)],       # chair + tv: indoor only, dropped
    [(1, (1, 1, 10, 30), 0), (18, (20, 20, 20, 10), 0)],       # person + dog only: dropped
    [(10, (50, 2, 4, 9), 0), (5, (0, 0, 30, 30), 0)],          # traffic light + airplane: kept, airplane dropped
    [(8, (2, 2, 40, 30), 0), (8, (0, 0, 64, 48), 1)],          # truck + crowd truck: kept, crowd -> ignore
    [(3, (0, 0, 64, 48), 1)],                                  # only a crowd car: dropped
]
VAL_IMAGES = [
    [(13, (5, 5, 10, 10), 0), (17, (20, 20, 10, 10), 0)],     # stop sign + cat: kept
    [(63, (5, 5, 30, 20), 0)],                                 # couch: dropped
]


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, "train", TRAIN_IMAGES)
    write_coco(root, "val", VAL_IMAGES)
    return root


def test_keeps_13_categories_and_only_images_with_a_road_object(coco_root):
    curated = curate_coco_traffic(coco_root, "coco_traffic", SOURCE, min_box_size=1.0)
    cats = curated.train["categories"]
    assert {c["id"]: c["name"] for c in cats} == KEPT_CATEGORIES
    assert [c["id"] for c in cats] == sorted(KEPT_CATEGORIES)
    assert len(cats) == 13
    assert [img["id"] for img in curated.train["images"]] == [1000, 1003, 1004]
    assert [img["id"] for img in curated.val["images"]] == [2000]
    kept_cats = sorted(a["category_id"] for a in curated.train["annotations"])
    assert kept_cats == [1, 3, 8, 8, 10]            # airplane/chair/tv/dog-only images gone
    crowd = [a for a in curated.train["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["ignore"] == 1 and crowd[0]["category_id"] == 8
    assert curated.split["train"] == [1000, 1003, 1004] and curated.split["val"] == [2000]
    json.dumps(curated.train)  # serialisable


def test_coco_json_missing_keys(coco_root):
    path = coco_root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"instances_val2017.json: missing key 'annotations'"):
        curate_coco_traffic(coco_root, "coco_traffic", SOURCE, min_box_size=1.0)


def test_annotation_missing_bbox(coco_root):
    path = coco_root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    del data["annotations"][2]["bbox"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotations\[2\] is missing key 'bbox'"):
        curate_coco_traffic(coco_root, "coco_traffic", SOURCE, min_box_size=1.0)


def test_filter_leaving_zero_images_is_an_error(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, "train", [[(62, (1, 1, 5, 5), 0)], [(1, (1, 1, 5, 5), 0)]])
    write_coco(root, "val", VAL_IMAGES)
    with pytest.raises(UserError, match="no image holds a road-related object"):
        curate_coco_traffic(root, "coco_traffic", SOURCE, min_box_size=1.0)


def test_wrong_category_ids_are_rejected(coco_root):
    path = coco_root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    for cat in data["categories"]:
        if cat["id"] == 3:
            cat["name"] = "automobile"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="category id 3 should be 'car'"):
        curate_coco_traffic(coco_root, "coco_traffic", SOURCE, min_box_size=1.0)


def test_missing_image_file(coco_root):
    (coco_root / "train2017" / "000000001003.jpg").unlink()
    with pytest.raises(UserError, match="000000001003.jpg: image listed in .* is missing"):
        curate_coco_traffic(coco_root, "coco_traffic", SOURCE, min_box_size=1.0)
