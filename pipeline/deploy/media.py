"""What ``gkd-bmfi detect`` reads: still images (Pillow, EXIF orientation applied) and video files
(OpenCV, frame by frame; imported only when a video comes, so images need no OpenCV).

Each picture is yielded as ``(frame index or None, [H, W, 3] uint8 RGB)``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.data.images import read_rgb
from pipeline.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def media_files(target: Path) -> list[Path]:
    """``target`` itself, or the images and videos of the folder ``target`` (sorted); one line
    saying why not."""
    if target.is_file():
        return [target]
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not files:
            raise UserError(f"{target}: no images ({', '.join(IMAGE_SUFFIXES)}) or videos "
                            f"({', '.join(VIDEO_SUFFIXES)}) in this folder")
        return files
    raise UserError(f"{target}: no such image, video or folder")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UserError("reading videos needs OpenCV: pip install 'gkd-bmfi[video]' (opencv-python-headless), "
                        "or give the frames as images") from None
    return cv2


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of the video ``path`` in order, as RGB; one line when OpenCV cannot open it or it
    has no frame."""
    cv2 = _cv2()
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UserError(f"{path}: OpenCV cannot open this video (unknown codec or not a video); convert it, "
                            "e.g. ffmpeg -i in.mov -c:v mjpeg out.avi, or give the frames as images")
        count = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            count += 1
            yield np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if count == 0:
            raise UserError(f"{path}: OpenCV read no frame from this video (empty, truncated or an unsupported "
                            "codec); give the frames as images")
    finally:
        capture.release()


def pictures(path: Path) -> Iterator[tuple[int | None, np.ndarray]]:
    """``(None, rgb)`` for an image, ``(frame index, rgb)`` for each frame of a video."""
    if is_video(path):
        yield from enumerate(video_frames(path))
    else:
        yield None, read_rgb(path)
