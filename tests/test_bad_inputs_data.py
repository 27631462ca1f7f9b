"""Bad raw data (images, KITTI labels, COCO jsons) ends with one line naming the file, the field and
the fix and no curated output; boxes reaching outside their image are clipped and counted, in
both formats; every image is read as displayed (EXIF orientation applied)."""
from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.data import dataset as dataset_module
from pipeline.data.curate import curate_coco_traffic, curate_kitti
from pipeline.data.images import read_header, read_rgb
from pipeline.errors import UserError
from stages import curate as curate_stage

from conftest import REPO, kitti_line, write_coco, write_kitti
from test_curate_coco import SOURCE, TRAIN_IMAGES, VAL_IMAGES

ORIENTATION = 0x0112


def one_line(err: UserError) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    return text


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_stage(tmp_path: Path, raw_root: Path, dataset: str, source: dict) -> Outcome:
    """The curate stage's main in-process, as DVC runs it, with ``sources.<dataset> = source``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sources"][dataset] = source
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            curate_stage.main([dataset, "--params", str(tmp_path / "params.yaml"), "--raw-root", str(raw_root),
                               "--out-root", str(tmp_path / "curated")])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return Outcome(code, out.getvalue(), err.getvalue())


def kitti_frames(tmp_path: Path, count: int = 4) -> Path:
    return write_kitti(tmp_path / "raw" / "kit", {i: [kitti_line("Car", (10, 5, 40, 30))] for i in range(count)})


def save_with_orientation(pixels: np.ndarray, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` RGB pixels (a few bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- images
def test_read_rgb_applies_the_exif_orientation(tmp_path):
    stored = np.zeros((40, 100, 3), np.uint8)                 # stored landscape, red block at its top left
    stored[:16, :16] = (255, 0, 0)
    path = tmp_path / "portrait.jpg"
    save_with_orientation(stored, path, 6)                     # 6: turn 90 degrees clockwise to display
    rgb = read_rgb(path)
    assert rgb.shape == (100, 40, 3) and rgb.dtype == np.uint8
    raw = np.asarray(Image.open(path).convert("RGB"))          # what the file stores, orientation ignored
    assert np.array_equal(rgb, np.rot90(raw, k=-1))            # as displayed
    assert rgb[:8, -8:, 0].min() > 200 and rgb[:8, -8:, 1:].max() < 60   # the red block is now top right
    assert read_header(path).width == 40 and read_header(path).height == 100
    assert dataset_module.read_rgb is read_rgb                 # training and evaluation read the same way


@pytest.mark.parametrize("make, expected", [
    (lambda p: png_header_only(p, 20000, 20000), "image too large to decode safely"),
    (lambda p: png_header_only(p, 10000, 10000), "image too large to decode safely"),   # Pillow only warns here
    (lambda p: p.write_bytes(jpeg_bytes()[:300]), "cannot read image"),
], ids=["20000x20000", "10000x10000", "truncated_jpeg"])
def test_read_rgb_turns_decode_problems_into_one_line(tmp_path, make, expected):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(UserError) as info:
        read_rgb(path)
    assert one_line(info.value).startswith(f"{path}: {expected}") and "remove" in str(info.value)


def test_huge_png_in_kitti_curate_is_one_line_and_no_output(tmp_path):
    root = kitti_frames(tmp_path)
    png_header_only(root / "image_2" / "000002.png", 20000, 20000)
    result = run_stage(tmp_path, root.parent, "kit", {"format": "kitti"})
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "000002.png: image too large to decode safely" in lines[0]
    assert not (tmp_path / "curated" / "kit").exists()


def test_kitti_image_with_an_exif_orientation_is_refused(tmp_path):
    root = kitti_frames(tmp_path)
    pixels = np.asarray(Image.open(root / "image_2" / "000001.png"))
    save_with_orientation(pixels, root / "image_2" / "000001.png", 6)
    with pytest.raises(UserError) as info:
        curate_kitti(root, "kit", 0.25, 0, 1.0)
    assert "000001.png: EXIF orientation 6" in one_line(info.value) and "KITTI labels refer to the stored" in str(
        info.value)


def test_coco_size_must_be_the_displayed_size(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, "train", TRAIN_IMAGES)
    write_coco(root, "val", VAL_IMAGES)
    path = root / "train2017" / "000000001000.jpg"
    save_with_orientation(np.asarray(Image.open(path)), path, 8)      # 64 x 48 stored, 48 x 64 displayed
    with pytest.raises(UserError) as info:
        curate_coco_traffic(root, "coco_traffic", SOURCE, min_box_size=1.0)
    assert ("instances_train2017.json: image 1000 (000000001000.jpg) is 64 x 48 in the json but 48 x 64 as "
            "displayed (EXIF orientation 8)") in one_line(info.value)


# ------------------------------------------------------------------------------------- KITTI folders and labels
def test_two_images_of_one_frame_are_refused(tmp_path):
    root = kitti_frames(tmp_path)
    Image.open(root / "image_2" / "000001.png").convert("RGB").save(root / "image_2" / "000001.jpg")
    result = run_stage(tmp_path, root.parent, "kit", {"format": "kitti"})
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "000001.jpg and 000001.png are both images of frame 000001" in lines[0]
    assert "remove or rename one" in lines[0] and not (tmp_path / "curated" / "kit").exists()


@pytest.mark.parametrize("truncated, occluded, expected", [
    (-0.5, 0, "field 'truncated' = '-0.50' is outside [0, 1]"),
    (3.0, 0, "field 'truncated' = '3.00' is outside [0, 1]"),
    (0.0, 7, "field 'occluded' = '7' is not one of 0, 1, 2, 3"),
    (-1.0, -1, "field 'truncated' = '-1.00' is outside [0, 1]"),     # -1 is DontCare's, not a Car's
], ids=["truncated_negative", "truncated_above_one", "occluded_7", "car_with_dontcare_values"])
def test_difficulty_inputs_out_of_kitti_range_are_refused(tmp_path, truncated, occluded, expected):
    root = kitti_frames(tmp_path)
    (root / "label_2" / "000002.txt").write_text(
        kitti_line("Car", (1, 1, 9, 9)) + "\n" + kitti_line("Car", (10, 5, 40, 30), truncated, occluded) + "\n")
    with pytest.raises(UserError) as info:
        curate_kitti(root, "kit", 0.25, 0, 1.0)
    assert f"000002.txt line 2: {expected}" in one_line(info.value) and "fix the value" in str(info.value)


def test_dontcare_and_misc_keep_kittis_unlabelled_minus_one(tmp_path):
    root = kitti_frames(tmp_path)
    misc = kitti_line("Misc", (50, 5, 60, 30)).split()
    misc[1], misc[2] = "-1", "-1"
    (root / "label_2" / "000002.txt").write_text(
        "\n".join([kitti_line("Car", (1, 1, 9, 9)), kitti_line("DontCare", (80, 10, 100, 20)), " ".join(misc)]) + "\n")
    curated = curate_kitti(root, "kit", 0.25, 0, 1.0)
    ignores = [a for a in curated.train["annotations"] + curated.val["annotations"] if a["iscrowd"]]
    assert {a["kitti"]["type"] for a in ignores} == {"DontCare", "Misc"}


def test_label_file_with_a_utf8_byte_order_mark_is_read(tmp_path):
    root = kitti_frames(tmp_path)
    line = kitti_line("Car", (10, 5, 40, 30)) + "\n"
    (root / "label_2" / "000002.txt").write_bytes(b"\xef\xbb\xbf" + line.encode())
    curated = curate_kitti(root, "kit", 0.25, 0, 1.0)
    anns = [a for a in curated.train["annotations"] + curated.val["annotations"] if a["image_id"] == 2]
    assert [a["kitti"]["type"] for a in anns] == ["Car"]


def test_a_split_with_an_empty_side_is_refused(tmp_path):
    root = kitti_frames(tmp_path, count=1)
    result = run_stage(tmp_path, root.parent, "kit", {"format": "kitti"})
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "image_2: 1 frame(s) split with curate.val_fraction 0.2 give 1 train / 0 val images" in lines[0]
    assert "add frames" in lines[0] and not (tmp_path / "curated" / "kit").exists()


# ------------------------------------------------------------------------------------- COCO jsons
def coco_root_with(tmp_path: Path, split: str, change) -> Path:
    root = tmp_path / "raw" / "coco"
    write_coco(root, "train", TRAIN_IMAGES)
    write_coco(root, "val", VAL_IMAGES)
    path = root / "annotations" / f"instances_{split}2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return root


def test_coco_boxes_outside_their_image_are_clipped_dropped_and_counted(tmp_path):
    def add_boxes(data):
        data["annotations"] += [
            {"id": 101, "image_id": 2000, "category_id": 3, "bbox": [500, 400, 30, 30], "iscrowd": 0},  # dropped
            {"id": 102, "image_id": 2000, "category_id": 3, "bbox": [50, 40, 30, 30], "iscrowd": 0},    # clipped
            {"id": 103, "image_id": 2000, "category_id": 3, "bbox": [64, 10, 5, 5], "iscrowd": 0},      # no area left
        ]

    root = coco_root_with(tmp_path, "val", add_boxes)           # val images are 64 x 48
    result = run_stage(tmp_path, root.parent, "coco", {"format": "coco"})
    assert result.code == 0, result.stderr
    out = tmp_path / "curated" / "coco"
    val = json.loads((out / "val.json").read_text())
    boxes = sorted(a["bbox"] for a in val["annotations"])
    assert [50.0, 40.0, 14.0, 8.0] in boxes and all(x + w <= 64 and y + h <= 48 for x, y, w, h in boxes)
    assert len(boxes) == 3                                      # the stop sign, the cat and the clipped car
    split = json.loads((out / "split.json").read_text())
    assert split["boxes_clipped_to_image"] == 3 and split["boxes_outside_image_dropped"] == 2
    assert "note: 3 boxes reached outside their image and were clipped to it; 2 of them" in result.stdout


def test_coco_annotation_of_an_unknown_image_is_refused_at_curate(tmp_path):
    stray = {"id": 77, "image_id": 999, "category_id": 3, "bbox": [1, 1, 20, 10], "iscrowd": 0}
    root = coco_root_with(tmp_path, "val", lambda d: d["annotations"].append(stray))   # evaluate crashed on it
    with pytest.raises(UserError) as info:
        curate_coco_traffic(root, "coco_traffic", SOURCE, min_box_size=1.0)
    assert ("instances_val2017.json: annotations[3] (id 77): image_id 999 is not the id of any entry in 'images'"
            in one_line(info.value)) and "fix the image_id" in str(info.value)


def test_coco_string_image_id_names_the_field_and_type(tmp_path):
    def stringify(data):
        for ann in data["annotations"]:
            ann["image_id"] = str(ann["image_id"])

    root = coco_root_with(tmp_path, "train", stringify)
    with pytest.raises(UserError) as info:
        curate_coco_traffic(root, "coco_traffic", SOURCE, min_box_size=1.0)
    assert ("instances_train2017.json: annotations[0] (id 1): field 'image_id' = '1000' is a str, expected an "
            "integer") in one_line(info.value)
