"""The built-in synthetic KITTI-format road scenes (pipeline/data/synthetic.py)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.synthetic import (
    FOCAL_PER_HEIGHT,
    KITTI_CLASSES,
    SceneObject,
    render_scene,
    write_synthetic_kitti,
)

W, H = 640, 192
VEHICLES = ("Car", "Van", "Truck", "Tram")


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, list[SceneObject]]]:
    """60 scenes at the default 640x192 (rendered once for the module)."""
    return [render_scene(np.random.default_rng(seed), W, H) for seed in range(60)]


@pytest.fixture(scope="module")
def kitti_size_scenes() -> list[tuple[np.ndarray, list[SceneObject]]]:
    """20 scenes at KITTI's 1242x375."""
    return [render_scene(np.random.default_rng(500 + seed), 1242, 375) for seed in range(20)]


def _objects(scenes: list[tuple[np.ndarray, list[SceneObject]]]) -> list[SceneObject]:
    return [o for _, objs in scenes for o in objs if o.type != "DontCare"]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    write_synthetic_kitti(tmp_path / "a", 3, 320, 96, seed=7)
    write_synthetic_kitti(tmp_path / "b", 3, 320, 96, seed=7)
    write_synthetic_kitti(tmp_path / "c", 3, 320, 96, seed=8)
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert sorted(a) == [f"{d}/00000{i}.{ext}" for d, ext in (("image_2", "png"), ("label_2", "txt"))
                         for i in range(3)]
    assert a == b
    assert a.keys() == c.keys()
    for name in a:
        assert a[name] != c[name], name


def test_written_files_are_kitti_layout_rgb_and_valid_label_lines(tmp_path: Path) -> None:
    write_synthetic_kitti(tmp_path, 4, W, H, seed=3)
    for i in range(4):
        with Image.open(tmp_path / "image_2" / f"{i:06d}.png") as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (W, H)
        lines = (tmp_path / "label_2" / f"{i:06d}.txt").read_text().splitlines()
        assert lines, "every synthetic frame has objects"
        for line in lines:
            fields = line.split(" ")
            assert len(fields) == 15, line
            kind = fields[0]
            assert kind in KITTI_CLASSES
            trunc, occ, alpha, x1, y1, x2, y2, h, w, l, x, y, z, ry = map(float, fields[1:])
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H, line
            assert re.fullmatch(r"-?\d", fields[2]), line
            assert all(re.fullmatch(r"-?\d+\.\d\d", f) for f in fields[1:2] + fields[3:]), line
            if kind == "DontCare":
                assert fields[1:4] == ["-1.00", "-1", "-10.00"], line
                assert (h, w, l, x, y, z, ry) == (-1, -1, -1, -1000, -1000, -1000, -10), line
            else:
                assert 0 <= trunc <= 1 and occ in (0, 1, 2), line
                assert min(h, w, l) > 0 and z > 0 and -math.pi <= ry <= math.pi, line
                assert alpha == pytest.approx(
                    (ry - math.atan2(x, z) + math.pi) % (2 * math.pi) - math.pi, abs=0.015
                ) or abs(abs(alpha) - math.pi) < 0.02, line


def test_scene_objects_have_known_classes_and_boxes_inside_the_image(scenes) -> None:
    for image, objects in scenes:
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        for o in objects:
            x1, y1, x2, y2 = o.box
            assert o.type in KITTI_CLASSES
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
            assert len(o.to_kitti_line().split(" ")) == 15


def test_truncated_exactly_for_boxes_touching_the_border(scenes) -> None:
    objects = _objects(scenes)
    touching = 0
    for o in objects:
        x1, y1, x2, y2 = o.box
        touches = x1 <= 0 or y1 <= 0 or x2 >= W or y2 >= H
        touching += touches
        assert 0.0 <= o.truncated <= 1.0
        assert (o.truncated > 0) == touches, o
        assert f"{o.truncated:.2f}" != "0.00" or not touches
    assert touching >= 0.03 * len(objects), "border truncation should be common enough"


def test_occlusion_is_common_and_caused_by_a_nearer_object(scenes) -> None:
    per_scene = [[o for o in objs if o.type != "DontCare"] for _, objs in scenes[:40]]
    total = sum(len(objs) for objs in per_scene)
    occluded = 0
    for objects in per_scene:
        for o in objects:
            assert o.occluded in (0, 1, 2)
            expected = 0 if o.occluded_fraction < 0.1 else (1 if o.occluded_fraction < 0.5 else 2)
            assert o.occluded == expected and o.occluded_fraction <= 0.9
            if o.occluded:
                occluded += 1
                nearer = [n for n in objects if n.location[2] < o.location[2] and _overlap(n.box, o.box)]
                assert nearer, f"{o} is occluded but no nearer object overlaps it"
    assert 0.1 * total <= occluded <= 0.6 * total


def test_perspective_vehicle_height_grows_toward_the_bottom(scenes) -> None:
    vehicles = [o for o in _objects(scenes) if o.type in VEHICLES]
    heights = np.array([o.box[3] - o.box[1] for o in vehicles])
    bottoms = np.array([o.box[3] for o in vehicles])
    assert len(vehicles) > 100
    assert np.corrcoef(heights, bottoms)[0, 1] > 0.5


def test_box_height_matches_the_pinhole_projection_of_the_3d_size(scenes) -> None:
    f = FOCAL_PER_HEIGHT * H
    ratios = [(o.box[3] - o.box[1]) / (f * o.dims[0] / o.location[2])
              for o in _objects(scenes) if o.truncated == 0 and o.occluded == 0]
    assert len(ratios) > 100
    assert 0.95 <= float(np.median(ratios)) <= 1.15
    assert min(ratios) > 0.7 and max(ratios) < 1.6


def test_object_heights_span_about_10_to_150_px_at_kitti_size(kitti_size_scenes) -> None:
    heights = [o.box[3] - o.box[1] for o in _objects(kitti_size_scenes)]
    assert min(heights) <= 20
    assert max(heights) >= 110
    assert max(heights) <= 0.45 * 375


def test_class_mix_contains_every_kitti_class_with_cars_most_common(scenes) -> None:
    counts = {name: 0 for name in KITTI_CLASSES}
    for _, objects in scenes:
        for o in objects:
            counts[o.type] += 1
    assert all(n > 0 for n in counts.values()), counts
    assert counts["Car"] == max(counts.values())
    assert counts["Car"] > 2 * counts["Van"] and counts["Pedestrian"] > counts["Person_sitting"]


def test_images_are_textured_and_objects_stand_out_from_their_surroundings(scenes) -> None:
    contrasts = []
    for image, objects in scenes[:30]:
        assert image.std() > 10
        for o in objects:
            x1, y1, x2, y2 = (int(round(c)) for c in o.box)
            if o.type == "DontCare" or y2 - y1 < 12:
                continue
            ring = np.zeros(image.shape[:2], bool)
            ring[max(y1 - 4, 0):y2 + 4, max(x1 - 4, 0):x2 + 4] = True
            ring[y1:y2, x1:x2] = False
            inside = image[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
            contrasts.append(float(np.abs(inside - image[ring].mean(axis=0)).mean()))
    assert len(contrasts) > 50
    assert float(np.mean(contrasts)) > 10


@pytest.mark.parametrize("args, message", [
    ((0, 640, 192, 0), "num_images"),
    ((-3, 640, 192, 0), "num_images"),
    ((1, 32, 192, 0), "too small"),
    ((1, 640, 63, 0), "too small"),
    ((1, 640, 192, -1), "seed"),
])
def test_bad_arguments_raise_value_error(tmp_path: Path, args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_synthetic_kitti(tmp_path, *args)
    assert not (tmp_path / "image_2").exists()


def test_render_scene_rejects_tiny_images() -> None:
    with pytest.raises(ValueError, match="at least 64"):
        render_scene(np.random.default_rng(0), 640, 40)
