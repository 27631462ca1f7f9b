"""Gradient-map pictures (the paper's Fig. 4): where the detection loss says the features matter.

For a few val images, the GKD map ``Norm(ReLU(sum_k w_k A_k))`` (Eq. 2-4) of the teacher and of
the student at the start and at the end of distillation, per FPN level, overlaid on the image.
One PNG per image: a row per map (teacher, student start, student end), a column per level.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import Tensor

from pipeline.data.dataset import CuratedDataset, collate
from pipeline.distill.gkd import detector_gradient_maps
from pipeline.structures import Batch

LABEL_HEIGHT = 14
MIN_TILE_WIDTH = 320


def gradmap_batch(val: CuratedDataset, count: int) -> Batch | None:
    """The first ``count`` val images (no flip) as one batch, or ``None`` for ``count == 0``."""
    count = min(count, len(val))
    return collate([val[i] for i in range(count)]) if count else None


def maps_of(detector, batch: Batch, signed: bool = True, targets: str = "gt") -> list[Tensor]:
    """A detector's GKD maps on ``batch`` in eval mode, per level ``[N, 1, H_l, W_l]`` on CPU;
    the detector's train/eval mode is restored afterwards."""
    was_training = detector.training
    detector.eval()
    try:
        maps = detector_gradient_maps(detector, batch, signed, targets)
    finally:
        detector.train(was_training)
    return [m.cpu() for m in maps]


def _image_rgb(batch: Batch, index: int, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo normalisation and padding: ``[h, w, 3]`` uint8 of the resized image."""
    h, w = batch.image_sizes[index]
    chw = batch.images[index, :, :h, :w].cpu().numpy()
    rgb = chw.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def overlay(rgb: np.ndarray, level_map: Tensor, stride: int, alpha: float = 0.5) -> np.ndarray:
    """Blend one level's map ``[1, H_l, W_l]`` (values in [0, 1]) over ``rgb`` ``[h, w, 3]``: cell
    ``(i, j)`` covers input pixels ``[j*s, (j+1)*s) x [i*s, (i+1)*s)``; the part over the padding
    is cropped."""
    h, w = rgb.shape[:2]
    big = level_map.float().repeat_interleave(stride, dim=-2).repeat_interleave(stride, dim=-1)[0]
    heat = colormaps["jet"](big[:h, :w].clamp(0, 1).numpy())[..., :3] * 255
    return (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)


def render(batch: Batch, rows: dict[str, list[Tensor]], strides: tuple[int, ...], out_dir: Path,
           mean: tuple[float, ...], std: tuple[float, ...]) -> list[Path]:
    """Write ``<image id>.png`` per image of ``batch`` into ``out_dir``.

    Args:
        rows: row label -> per-level maps ``[N, 1, H_l, W_l]`` (e.g. teacher, student start/end).
        strides: each level's stride (column titles ``P<log2 s>``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(len(batch)):
        rgb = _image_rgb(batch, i, mean, std)
        h, w = rgb.shape[:2]
        zoom = max(1, -(-MIN_TILE_WIDTH // w))
        tile_w, tile_h = w * zoom, h * zoom
        canvas = Image.new("RGB", (tile_w * len(strides), (tile_h + LABEL_HEIGHT) * len(rows)), "white")
        draw = ImageDraw.Draw(canvas)
        for r, (label, maps) in enumerate(rows.items()):
            y = r * (tile_h + LABEL_HEIGHT)
            for c, (level_maps, stride) in enumerate(zip(maps, strides)):
                tile = Image.fromarray(overlay(rgb, level_maps[i], stride))
                canvas.paste(tile.resize((tile_w, tile_h), Image.NEAREST), (c * tile_w, y + LABEL_HEIGHT))
                draw.text((c * tile_w + 3, y + 1), f"{label}: P{int(np.log2(stride))}", fill=(0, 0, 0))
        path = out_dir / f"{batch.image_ids[i]}.png"
        canvas.save(path)
        written.append(path)
    return written
