"""Read a KITTI object ``training/`` folder (``image_2/*.png`` + ``label_2/*.txt``).

Label lines have KITTI's 15 fields::

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y

with the 2D box ``x1 y1 x2 y2`` in original-image pixels, ``truncated`` in [0, 1] and
``occluded`` one of 0 (fully visible), 1 (partly occluded), 2 (largely occluded), 3 (unknown),
as in KITTI's devkit readme; its DontCare lines carry -1 for both, which the ignore classes
(DontCare, Misc) may. Every problem with the files raises :class:`~pipeline.errors.UserError`
naming the file, the line and the field.

Labels are in the stored pixel frame: KITTI's tools ignore EXIF (real KITTI PNGs carry none),
while the pipeline reads every image as displayed (EXIF orientation applied). The two agree only
for an image without an EXIF orientation, so one with an orientation other than 1 is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.images import read_header
from pipeline.errors import UserError

RAW_CLASSES = ("Car", "Van", "Truck", "Tram", "Pedestrian", "Person_sitting", "Cyclist", "Misc", "DontCare")
#: Raw KITTI class -> grouped class (docs/method.md, 'Protocol'). Misc and DontCare map to None:
#: they become ignore regions.
GROUPS: dict[str, str | None] = {
    "Car": "Car",
    "Van": "Car",
    "Truck": "Car",
    "Tram": "Car",
    "Pedestrian": "Pedestrian",
    "Person_sitting": "Pedestrian",
    "Cyclist": "Cyclist",
    "Misc": None,
    "DontCare": None,
}
GROUPED_CLASSES = ("Car", "Pedestrian", "Cyclist")
FIELDS = ("type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2",
          "h", "w", "l", "x", "y", "z", "rotation_y")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OCCLUSION_LEVELS = (0, 1, 2, 3)
#: KITTI's "not labelled" value of truncated and occluded, on DontCare lines.
UNLABELLED = -1


@dataclass(frozen=True)
class KittiObject:
    """One label line. ``box`` is x1,y1,x2,y2 in original-image pixels."""

    type: str
    truncated: float
    occluded: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class KittiFrame:
    """One image and its objects."""

    frame_id: int
    image_path: Path
    width: int
    height: int
    objects: tuple[KittiObject, ...]


def parse_label_line(line: str, where: str) -> KittiObject:
    """Parse one 15-field label line; ``where`` (``file line N``) prefixes errors."""
    parts = line.split()
    if len(parts) != len(FIELDS):
        raise UserError(
            f"{where}: expected {len(FIELDS)} fields ({' '.join(FIELDS)}), got {len(parts)}; "
            "fix the label line"
        )
    kind = parts[0]
    if kind not in GROUPS:
        raise UserError(f"{where}: unknown class {kind!r}; KITTI classes are {', '.join(RAW_CLASSES)}")
    values: list[float] = []
    for name, text in zip(FIELDS[1:], parts[1:]):
        try:
            values.append(float(text))
        except ValueError:
            raise UserError(f"{where}: field {name!r} = {text!r} is not a number") from None
        if name in ("truncated", "occluded", "x1", "y1", "x2", "y2") and not math.isfinite(values[-1]):
            raise UserError(f"{where}: field {name!r} = {text!r} is not a finite number; fix the value or "
                            "remove the line")
    truncated, occluded, _alpha, x1, y1, x2, y2 = values[:7]
    if x2 < x1 or y2 < y1:
        raise UserError(
            f"{where}: box has x1,y1,x2,y2 = {x1:g},{y1:g},{x2:g},{y2:g} with x2 < x1 or y2 < y1; "
            "KITTI boxes are left, top, right, bottom"
        )
    _check_difficulty_inputs(kind, truncated, occluded, parts, where)
    return KittiObject(type=kind, truncated=truncated, occluded=int(occluded), box=(x1, y1, x2, y2))


def _check_difficulty_inputs(kind: str, truncated: float, occluded: float, parts: list[str], where: str) -> None:
    """``truncated`` in [0, 1] and ``occluded`` in 0..3 (they set KITTI's difficulty levels);
    the ignore classes (DontCare, Misc) may carry KITTI's -1 ("not labelled") instead."""
    unlabelled = (UNLABELLED,) if GROUPS[kind] is None else ()
    if not (0.0 <= truncated <= 1.0 or truncated in unlabelled):
        raise UserError(f"{where}: field 'truncated' = {parts[1]!r} is outside [0, 1] (the fraction of the object "
                        "leaving the image; -1 on DontCare/Misc lines only); fix the value")
    if occluded not in OCCLUSION_LEVELS + unlabelled:
        raise UserError(f"{where}: field 'occluded' = {parts[2]!r} is not one of 0, 1, 2, 3 (fully visible, partly "
                        "occluded, largely occluded, unknown; -1 on DontCare/Misc lines only); fix the value")


def read_labels(path: Path) -> tuple[KittiObject, ...]:
    """All objects of one label file (blank lines and a UTF-8 byte-order mark skipped)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: byte 0x{raw[err.start]:02x} is not UTF-8 text; KITTI label files are "
                        "plain ASCII: fix or re-download the file") from None
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            objects.append(parse_label_line(line, f"{path} line {number}"))
    return tuple(objects)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header; unreadable, non-8-bit, too large or EXIF-rotated
    files raise UserError (see the module docstring for the last).

    Only the header is read (curation of 7,481 KITTI frames stays I/O-light); pixel data
    that is corrupt past the header is reported by the data loader when it decodes it.
    """
    header = read_header(path)
    if header.orientation != 1:
        raise UserError(f"{path}: EXIF orientation {header.orientation} (shown turned or mirrored), but KITTI labels "
                        "refer to the stored pixels and the pipeline reads images as displayed: save the image "
                        "upright without the tag (labels drawn on the displayed image) or just drop the tag "
                        "(labels drawn on the stored pixels)")
    return header.width, header.height


def _frame_id(stem: str, path: Path) -> int:
    if not stem.isdigit():
        raise UserError(f"{path}: KITTI frames are named by number (000123.png); rename the file")
    return int(stem)


def _images_by_stem(image_dir: Path) -> dict[str, Path]:
    """The images of ``image_dir`` by file stem; two images of one stem (``000001.png`` and
    ``000001.jpg``) are refused, as either could be the one the label file describes."""
    images: dict[str, Path] = {}
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem in images:
            raise UserError(f"{images[path.stem]} and {path.name} are both images of frame {path.stem}; one image "
                            "per frame: remove or rename one of them")
        images[path.stem] = path
    return images


def read_kitti_folder(root: Path) -> list[KittiFrame]:
    """Read every frame of a KITTI ``training/`` folder, sorted by frame id.

    Raises UserError for a missing folder, a label without its image, an image without
    its label, an unreadable image and any malformed label line.
    """
    root = Path(root)
    image_dir, label_dir = root / "image_2", root / "label_2"
    for folder in (root, image_dir, label_dir):
        if not folder.is_dir():
            raise UserError(
                f"{folder}: dataset folder not found; {root} must hold KITTI's training/ "
                "layout (image_2/ and label_2/), e.g. a symlink to your download"
            )
    images = _images_by_stem(image_dir)
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix == ".txt"}
    for stem, label in sorted(labels.items()):
        if stem not in images:
            raise UserError(f"{label}: label file has no image {image_dir}/{stem}.png; add the image or remove the label")
    for stem, image in sorted(images.items()):
        if stem not in labels:
            raise UserError(f"{image}: image has no label file {label_dir}/{stem}.txt; add an empty label file or remove the image")
    if not images:
        raise UserError(f"{image_dir}: no images found (expected *.png); check the dataset folder")
    owner: dict[int, Path] = {}
    for stem, image in sorted(images.items()):
        frame_id = _frame_id(stem, image)
        if frame_id in owner:
            raise UserError(f"{image}: frame id {frame_id} is also {owner[frame_id]}; one frame per number: "
                            "rename or remove one of them (and its label file)")
        owner[frame_id] = image
    frames = []
    for stem in sorted(images, key=lambda s: _frame_id(s, images[s])):
        width, height = image_size(images[stem])
        frames.append(KittiFrame(
            frame_id=_frame_id(stem, images[stem]),
            image_path=images[stem],
            width=width,
            height=height,
            objects=read_labels(labels[stem]),
        ))
    return frames
