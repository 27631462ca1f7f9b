"""Box-derived masks on FPN levels, shared by the KD methods.

Every builder takes the augmented batch's ground-truth boxes (x1,y1,x2,y2 in input pixels,
after resize, flip and padding) and a level's stride, and returns a mask ``[N, 1, H_l, W_l]``
aligned with that level's features: feature cell ``(i, j)`` covers input pixels
``[j*s, (j+1)*s) x [i*s, (i+1)*s)``, so its centre is ``((j + 0.5) * s, (i + 0.5) * s)``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def boxes_on_level(boxes: Tensor, stride: int) -> Tensor:
    """``[K, 4]`` input-pixel boxes -> the same boxes in feature-cell units of a level."""
    return boxes / float(stride)


# ----------------------------------------------------------------------------------
# Baseline masks (FGD, FGFI, DeFeat): cells a box covers, per-box scales, anchor IoU
# ----------------------------------------------------------------------------------


def box_cell_ranges(boxes: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """The feature cells each box overlaps on one level.

    Args:
        boxes: ``[K, 4]`` x1,y1,x2,y2 in input pixels.
        stride: the level's stride ``s``.
        size: the level's ``(H, W)``.

    Returns:
        ``[K, 4]`` int64 ``(x_lo, y_lo, x_hi, y_hi)``, half-open cell ranges: cell ``(i, j)``
        belongs to box ``k`` when ``x_lo <= j < x_hi`` and ``y_lo <= i < y_hi``. These are the
        cells whose area ``[j*s, (j+1)*s) x [i*s, (i+1)*s)`` meets the box (``floor(x1/s)`` to
        ``ceil(x2/s) - 1``), clipped to the map; a degenerate box keeps the one cell it lies in.
        The rule is symmetric, so the ranges of a mirrored box are the mirrored ranges.
    """
    h, w = int(size[0]), int(size[1])
    cells = boxes_on_level(boxes.float(), stride)
    x_lo = cells[:, 0].floor().clamp(0, w - 1)
    y_lo = cells[:, 1].floor().clamp(0, h - 1)
    x_hi = torch.maximum(cells[:, 2].ceil().clamp(max=w), x_lo + 1)
    y_hi = torch.maximum(cells[:, 3].ceil().clamp(max=h), y_lo + 1)
    return torch.stack((x_lo, y_lo, x_hi, y_hi), dim=1).long()


def box_cell_masks(boxes: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """``[K, 4]`` input-pixel boxes -> ``[K, H, W]`` bool, the cells of each box
    (:func:`box_cell_ranges`)."""
    h, w = int(size[0]), int(size[1])
    r = box_cell_ranges(boxes, stride, size)
    xs = torch.arange(w, device=boxes.device)
    ys = torch.arange(h, device=boxes.device)
    in_x = (xs[None, :] >= r[:, 0:1]) & (xs[None, :] < r[:, 2:3])  # [K, W]
    in_y = (ys[None, :] >= r[:, 1:2]) & (ys[None, :] < r[:, 3:4])  # [K, H]
    return in_y[:, :, None] & in_x[:, None, :]


def binary_box_mask(boxes: list[Tensor], stride: int, size: tuple[int, int]) -> Tensor:
    """Union of the box cells per image: per image ``[K_i, 4]`` boxes -> ``[N, 1, H, W]``
    float, 1 on a cell any box covers, else 0 (DeFeat's ``M``; FGD's ``M``)."""
    h, w = int(size[0]), int(size[1])
    out = []
    for b in boxes:
        if b.numel() == 0:
            out.append(torch.zeros(h, w, device=b.device))
        else:
            out.append(box_cell_masks(b, stride, size).any(dim=0).float())
    return torch.stack(out)[:, None]


def fgd_scale_masks(boxes: list[Tensor], stride: int, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """FGD's masks (Yang et al., CVPR 2022, Eq. 2-3): per image ``[K_i, 4]`` boxes ->
    ``(fg, bg)``, each ``[N, 1, H, W]`` float.

    * ``fg = M * S``: ``1 / (H_r * W_r)`` on the cells of box ``r``, ``H_r * W_r`` its number of
      cells (:func:`box_cell_ranges`), so every box carries the same total weight 1; where
      boxes overlap the *smallest* box wins (the largest scale), as the paper says.
    * ``bg = (1 - M) / N_bg``, ``N_bg = sum (1 - M)``: sums to 1 over the background cells
      (all zeros when boxes cover the whole map).

    The released code indexes an ``H x W`` map with (x-range, y-range), transposing every
    box, and scales boxes by the unpadded image size instead of the stride; here boxes land
    on the cells they cover.
    """
    h, w = int(size[0]), int(size[1])
    fgs, bgs = [], []
    for b in boxes:
        if b.numel() == 0:
            fg = torch.zeros(h, w, device=b.device)
        else:
            cells = box_cell_masks(b, stride, size)  # [K, H, W]
            r = box_cell_ranges(b, stride, size)
            scale = 1.0 / ((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])).float()
            fg = (cells.float() * scale[:, None, None]).amax(dim=0)
        bg = (fg == 0).float()
        bg = bg / bg.sum().clamp(min=1.0)
        fgs.append(fg)
        bgs.append(bg)
    return torch.stack(fgs)[:, None], torch.stack(bgs)[:, None]


def roi_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """The FPN level each box belongs to, as MMDetection maps RoIs to levels (and DeFeat's
    released code maps ground-truth boxes): ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))``
    clamped to ``[0, num_levels - 1]``, level 0 the finest. ``[K, 4]`` -> ``[K]`` int64."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    scale = (wh[:, 0] * wh[:, 1]).sqrt()
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def anchor_iou_masks(boxes: Tensor, level_anchors: list[Tensor], sizes: list[tuple[int, int]], psi: float,
                     level_assign: str = "all", finest_scale: float = 56.0) -> list[Tensor]:
    """FGFI's imitation mask (Wang et al., CVPR 2019, Sec. 3.1) for one image.

    For each ground-truth box, ``m`` = its largest IoU with any anchor; the locations with an
    anchor whose IoU with the box exceeds ``psi * m`` are imitated; the union over the boxes
    and over the anchors of a location gives the mask.

    Args:
        boxes: ``[K, 4]`` x1,y1,x2,y2 input pixels.
        level_anchors: per level ``[H_l * W_l * A, 4]`` anchors in input pixels, ordered row,
            column, anchor (the detectors' own anchor generators).
        sizes: per level ``(H_l, W_l)``.
        psi: the threshold factor (0.5 in the paper).
        level_assign: ``"all"``: ``m`` is the maximum over the anchors of every level, so a
            box is imitated on the levels whose anchors fit it; ``"roi"``: each box only on its
            :func:`roi_levels` level with ``m`` over that level's anchors (the FPN variant in
            DeFeat's released code).

    Returns:
        per level ``[H_l, W_l]`` bool.
    """
    num = len(level_anchors)
    out = [torch.zeros(int(h), int(w), dtype=torch.bool, device=boxes.device) for h, w in sizes]
    if boxes.numel() == 0:
        return out
    ious = [box_iou(boxes.float(), a.float()) for a in level_anchors]  # [K, A_l]
    if level_assign == "all":
        best = torch.stack([iou.amax(dim=1) for iou in ious]).amax(dim=0)  # [K]
        keep = [torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)] * num
        thr = [psi * best] * num
    elif level_assign == "roi":
        levels = roi_levels(boxes, num, finest_scale)
        keep = [levels == lvl for lvl in range(num)]
        thr = [psi * iou.amax(dim=1) for iou in ious]
    else:
        raise ValueError(f"level_assign must be 'all' or 'roi', got {level_assign!r}")
    for lvl, (iou, (h, w)) in enumerate(zip(ious, sizes)):
        hit = (iou > thr[lvl][:, None]) & keep[lvl][:, None]  # [K, A_l]
        out[lvl] = hit.view(boxes.shape[0], int(h), int(w), -1).any(dim=3).any(dim=0)
    return out


def gaussian_box_mask(boxes: list[Tensor], stride: int, size: tuple[int, int],
                      area_normalize: bool = True) -> Tensor:
    """BMFI's top-flattened Gaussian box mask ``M_box`` of one FPN level (paper Eq. 6, docs/method.md BMFI).

    For each box (x1,y1,x2,y2 in input pixels, width ``w``, height ``h``, centre ``cx, cy``):

    * a cell that overlaps the box gets 1 (:func:`box_cell_masks`, so a box smaller than a cell
      still marks the cell it lies in);
    * a cell whose centre ``(x, y)`` lies in the box grown to ``2w x 2h`` about its centre gets
      ``exp(-0.5 * (((x - cx) / w)^2 + ((y - cy) / h)^2))`` (between exp(-1) and exp(-1/8));
    * every other cell gets 0.

    With ``area_normalize`` each box's patch is divided by the number of cells it covers (its
    grown area ``2w * 2h`` measured on the level's grid, at least one cell), so that small objects
    are not drowned by large ones. Where patches overlap the maximum is kept. Cells exist only
    inside the feature map, so boxes at the border are clipped by construction; boxes already
    carry the batch's flip, resize and padding, so the mask sits where the features are.

    Args:
        boxes: per image ``[K_i, 4]`` boxes in input pixels.
        stride: the level's stride in input pixels.
        size: ``(H_l, W_l)`` of the level's feature map.
        area_normalize: divide each patch by its cell count.

    Returns:
        ``[N, 1, H_l, W_l]`` float32 mask, on the boxes' device.
    """
    height, width = size
    device = boxes[0].device if boxes else torch.device("cpu")
    out = torch.zeros((len(boxes), 1, height, width), device=device)
    s = float(stride)
    xc = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * s    # cell centres
    yc = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * s
    for i, b in enumerate(boxes):
        if b.numel() == 0:
            continue
        b = b.float().to(device)
        inside = box_cell_masks(b, stride, size)                                # [K, H, W]
        x1, y1, x2, y2 = (b[:, k:k + 1] for k in range(4))                     # [K, 1] each
        bw, bh = (x2 - x1).clamp(min=1e-6), (y2 - y1).clamp(min=1e-6)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        dx, dy = (xc - cx) / bw, (yc - cy) / bh                                 # [K, W], [K, H]
        grown = (dy.abs() <= 1)[:, :, None] & (dx.abs() <= 1)[:, None, :]
        gauss = torch.exp(-0.5 * (dy[:, :, None] ** 2 + dx[:, None, :] ** 2))
        patch = torch.where(inside, torch.ones_like(gauss), torch.where(grown, gauss, torch.zeros_like(gauss)))
        if area_normalize:
            cells = (patch > 0).flatten(1).sum(dim=1).clamp(min=1).to(patch.dtype)
            patch = patch / cells[:, None, None]
        out[i, 0] = patch.amax(dim=0)
    return out
