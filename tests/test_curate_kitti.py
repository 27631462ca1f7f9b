"""KITTI curation: grouping, ignore regions, split, difficulty fields, and bad input."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.data.curate import curate_kitti, split_ids
from stages import curate as curate_stage

from conftest import REPO, kitti_line, write_kitti


@dataclass
class Outcome:
    returncode: int
    stderr: str


def run_curate(tmp_path: Path, raw_root: Path, dataset: str = "kit") -> Outcome:
    """Run the curate stage's main in-process, as DVC would run the script."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sources"][dataset] = {"format": "kitti"}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    argv = [dataset, "--params", str(params_path), "--raw-root", str(raw_root),
            "--out-root", str(tmp_path / "curated")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            curate_stage.main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return Outcome(code, err.getvalue())


def test_classes_are_grouped_and_misc_dontcare_become_ignore_regions(kitti_root):
    curated = curate_kitti(kitti_root, "kit", val_fraction=0.2, seed=0, min_box_size=1.0)
    assert [c["name"] for c in curated.train["categories"]] == ["Car", "Pedestrian", "Cyclist"]
    anns = curated.train["annotations"] + curated.val["annotations"]
    objects = [a for a in anns if not a["iscrowd"]]
    by_type = {}
    for ann in objects:
        by_type.setdefault(ann["kitti"]["type"], set()).add(ann["category_id"])
    assert by_type == {"Car": {1}, "Van": {1}, "Truck": {1}, "Tram": {1},
                       "Pedestrian": {2}, "Person_sitting": {2}, "Cyclist": {3}}
    ignores = [a for a in anns if a["iscrowd"]]
    assert all(a["ignore"] == 1 for a in ignores)
    # 10 DontCare + 1 Misc region, each replicated once per category
    assert len(ignores) == 11 * 3
    misc = [a for a in ignores if a["kitti"]["type"] == "Misc"]
    assert sorted(a["category_id"] for a in misc) == [1, 2, 3]
    assert len({a["id"] for a in curated.train["annotations"]}) == len(curated.train["annotations"])


def test_difficulty_inputs_and_coco_boxes_are_kept(kitti_root):
    curated = curate_kitti(kitti_root, "kit", val_fraction=0.2, seed=0, min_box_size=1.0)
    ann = next(a for a in curated.train["annotations"] + curated.val["annotations"]
               if a["image_id"] == 5 and not a["iscrowd"])
    assert ann["bbox"] == pytest.approx([15.0, 5.0, 30.0, 25.0])  # x, y, w, h from x1 y1 x2 y2
    assert ann["area"] == pytest.approx(750.0)
    assert ann["kitti"] == {"type": "Person_sitting", "truncated": pytest.approx(0.2), "occluded": 2}


def test_split_is_8_to_2_disjoint_complete_and_reproducible():
    ids = list(range(100))
    train, val = split_ids(ids, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(train + val) == ids
    assert split_ids(ids, 0.2, seed=3) == (train, val)
    assert split_ids(ids, 0.2, seed=4) != (train, val)


def test_stage_writes_split_jsons_and_preview(tmp_path, kitti_root):
    result = run_curate(tmp_path, kitti_root.parent)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "curated" / "kit"
    assert sorted(p.name for p in out.iterdir()) == ["preview.png", "split.json", "train.json", "val.json"]
    split = json.loads((out / "split.json").read_text())
    assert split["seed"] == 0 and len(split["val"]) == 2 and len(split["train"]) == 8
    val = json.loads((out / "val.json").read_text())
    assert [img["id"] for img in val["images"]] == split["val"]
    assert val["info"]["image_root"].endswith("image_2")


BAD_LABELS = [
    ("wrong field count", "Car 0.00 0 -1.57 10 5 40 30 1.5 1.6 3.9 1 1.7 20",
     "line 1: expected 15 fields"),
    ("non-numeric", "Car 0.00 0 -1.57 ten 5 40 30 1.5 1.6 3.9 1 1.7 20 -1.57",
     "line 1: field 'x1' = 'ten' is not a number"),
    ("x2 < x1", kitti_line("Car", (40, 5, 10, 30)), "line 1: box has x1,y1,x2,y2 = 40,5,10,30 with x2 < x1"),
    ("unknown class", kitti_line("Bus", (10, 5, 40, 30)), "line 1: unknown class 'Bus'"),
]


@pytest.mark.parametrize("case, line, expected", BAD_LABELS, ids=[c[0] for c in BAD_LABELS])
def test_malformed_label_ends_with_one_line_and_no_output(tmp_path, case, line, expected):
    root = write_kitti(tmp_path / "raw" / "kit", {0: [kitti_line("Car", (1, 1, 9, 9))], 1: [line]})
    result = run_curate(tmp_path, root.parent)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "000001.txt" in lines[0]
    assert not (tmp_path / "curated" / "kit").exists()


def test_failed_rerun_keeps_previous_curated_output_intact(tmp_path, kitti_root):
    assert run_curate(tmp_path, kitti_root.parent).returncode == 0
    before = (tmp_path / "curated" / "kit" / "train.json").read_text()
    (kitti_root / "label_2" / "000003.txt").write_text("Car 1 2\n")
    result = run_curate(tmp_path, kitti_root.parent)
    assert result.returncode == 2
    assert (tmp_path / "curated" / "kit" / "train.json").read_text() == before
    assert [p.name for p in (tmp_path / "curated").iterdir()] == ["kit"]  # no temp folder left


def test_missing_dataset_folder(tmp_path):
    result = run_curate(tmp_path, tmp_path / "nowhere")
    assert result.returncode == 2
    assert "dataset folder not found" in result.stderr and result.stderr.count("\n") == 1


def test_label_without_image_and_image_without_label(tmp_path):
    root = write_kitti(tmp_path / "raw" / "kit", {0: [kitti_line("Car", (1, 1, 9, 9))]})
    (root / "label_2" / "000007.txt").write_text(kitti_line("Car", (1, 1, 9, 9)) + "\n")
    result = run_curate(tmp_path, root.parent)
    assert result.returncode == 2 and "000007.txt: label file has no image" in result.stderr

    (root / "label_2" / "000007.txt").unlink()
    (root / "label_2" / "000000.txt").rename(root / "label_2" / "000009.txt")
    (root / "image_2" / "000009.png").write_bytes((root / "image_2" / "000000.png").read_bytes())
    result = run_curate(tmp_path, root.parent)
    assert result.returncode == 2 and "000000.png: image has no label file" in result.stderr


def test_unreadable_image(tmp_path):
    root = write_kitti(tmp_path / "raw" / "kit", {0: [kitti_line("Car", (1, 1, 9, 9))], 1: []})
    (root / "image_2" / "000001.png").write_bytes(b"not a png at all")
    result = run_curate(tmp_path, root.parent)
    assert result.returncode == 2
    assert "000001.png: cannot read image" in result.stderr and result.stderr.count("\n") == 1
