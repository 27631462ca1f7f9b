"""Gradient-map pictures (the paper's Fig. 4): where the detection loss says the features matter.

For a few val images, the GKD map ``Norm(ReLU(sum_k w_k A_k))`` (Eq. 2-4) of the teacher and of
the student at the start and at the end of distillation, per FPN level, overlaid on the image.
One PNG per image: a row per map (teacher, student start, student end), a column per level, a
colour bar for the map's value and a title naming the model.

Each map is already scaled to [0, 1] per image and level (min-max, Eq. 4), so the colours of two
levels are not comparable in size, only in shape; a map that is 0 everywhere (no cell where the
weighted features are positive) is marked "all 0". Levels fewer than :data:`MIN_LEVEL_ROWS` cells
high are not drawn (at the default 96x320 input P5-P7 are 3x10, 2x5 and 1x3 cells: a few blocks
that show no place in the image); the picture says which were left out. Only methods with a KD
term draw these pictures (the distill stage skips ``inherit_only``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from pipeline.data.dataset import CuratedDataset, collate
from pipeline.distill.gkd import detector_gradient_maps
from pipeline.structures import Batch

#: Levels with fewer rows of cells than this are left out of the pictures.
MIN_LEVEL_ROWS = 4
COLOURMAP = "jet"
ALPHA = 0.5


def gradmap_batch(val: CuratedDataset, count: int) -> Batch | None:
    """The first ``count`` val images (no flip) as one batch, or ``None`` for ``count == 0``."""
    count = min(count, len(val))
    return collate([val[i] for i in range(count)]) if count else None


def maps_of(detector, batch: Batch, signed: bool = True, targets: str = "gt", sign: str = "ascent") -> list[Tensor]:
    """A detector's GKD maps on ``batch`` in eval mode, per level ``[N, 1, H_l, W_l]`` on CPU;
    the detector's train/eval mode is restored afterwards."""
    was_training = detector.training
    detector.eval()
    try:
        maps = detector_gradient_maps(detector, batch, signed, targets, sign=sign)
    finally:
        detector.train(was_training)
    return [m.cpu() for m in maps]


def _image_rgb(batch: Batch, index: int, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo normalisation and padding: ``[h, w, 3]`` uint8 of the resized image."""
    h, w = batch.image_sizes[index]
    chw = batch.images[index, :, :h, :w].cpu().numpy()
    rgb = chw.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def drawn_levels(maps: list[Tensor]) -> list[int]:
    """Indices of the levels (maps ``[N, 1, H_l, W_l]``) at least :data:`MIN_LEVEL_ROWS` cells
    high; the finest level always."""
    return [k for k, m in enumerate(maps) if k == 0 or m.shape[-2] >= MIN_LEVEL_ROWS]


def render(batch: Batch, rows: dict[str, list[Tensor]], strides: tuple[int, ...], out_dir: Path,
           mean: tuple[float, ...], std: tuple[float, ...], title: str = "") -> list[Path]:
    """Write ``<image id>.png`` per image of ``batch`` into ``out_dir``.

    Args:
        rows: row label -> per-level maps ``[N, 1, H_l, W_l]`` with values in [0, 1] (e.g. teacher,
            student start, student end).
        strides: each level's stride (column titles ``P<log2 s>``).
        title: what the pictures are of, e.g. ``synthetic/gfl/gkd_bmfi-resnet18``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    levels = drawn_levels(next(iter(rows.values())))
    left_out = [f"P{int(np.log2(s))}" for k, s in enumerate(strides) if k not in levels]
    written = []
    for i in range(len(batch)):
        rgb = _image_rgb(batch, i, mean, std)
        h, w = rgb.shape[:2]
        tile_w = 3.6   # inches
        fig, axes = plt.subplots(len(rows), len(levels), squeeze=False, layout="constrained",
                                 figsize=(1.2 + tile_w * len(levels), 0.8 + len(rows) * (tile_w * h / w + 0.35)))
        shown = None
        for r, (label, maps) in enumerate(rows.items()):
            for c, k in enumerate(levels):
                ax, level_map = axes[r][c], maps[k][i, 0].float()
                cells_h, cells_w = level_map.shape
                stride = strides[k]
                ax.imshow(rgb)
                # cell (y, x) covers input pixels [x*s, (x+1)*s) x [y*s, (y+1)*s); the padding is cropped
                shown = ax.imshow(level_map.numpy(), cmap=COLOURMAP, vmin=0.0, vmax=1.0, alpha=ALPHA,
                                  extent=(0, cells_w * stride, cells_h * stride, 0), interpolation="nearest")
                ax.set_xlim(0, w)
                ax.set_ylim(h, 0)
                ax.set_xticks([])
                ax.set_yticks([])
                flat = " (all 0)" if float(level_map.max()) <= 0.0 else ""
                ax.set_title(f"{label}, P{int(np.log2(stride))} ({cells_h}x{cells_w} cells){flat}", fontsize=9)
        bar = fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.9)
        bar.set_label("map value, 0-1 per image and level\n(1: where the features matter most to the loss)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
        heading = f"{title}: gradient maps (GKD Eq. 2-4), val image {batch.image_ids[i]}" if title \
            else f"Gradient maps (GKD Eq. 2-4), val image {batch.image_ids[i]}"
        fig.suptitle(heading, fontsize=10)
        if left_out:
            fig.supxlabel(f"{', '.join(left_out)} not drawn: fewer than {MIN_LEVEL_ROWS} cells high at this "
                          f"{h}x{w} input", fontsize=8, color="0.3")
        path = out_dir / f"{batch.image_ids[i]}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
