"""DeFeat: decoupled feature distillation (Guo et al., "Distilling Object Detectors via
Decoupled Features", CVPR 2021), the neck (FPN) part, on every level.

Foreground and background regions are imitated with separate weights, each normalised by its
own element count (the paper's decoupled neck-feature loss, Sec. 3, with the FPN levels of
the released code). For level ``l`` with binary ground-truth mask ``M`` (``[N, 1, H_l, W_l]``,
1 on the cells a box covers, :func:`~pipeline.distill.masks.binary_box_mask`, boxes
x1,y1,x2,y2 input pixels) repeated over the ``C`` channels::

    L_fg = 1/L sum_l sum M (f_adap(S) - T)^2 / (2 * sum_{n,c,i,j} M)
    L_bg = 1/L sum_l sum (1 - M) (f_adap(S) - T)^2 / (2 * sum_{n,c,i,j} (1 - M))
    L_DeFeat = fg_weight * L_fg + bg_weight * L_bg

(each denominator at least 1, so an empty region contributes 0). Box-to-level assignment
``level_assign``: ``"roi"`` (default, the released code's ``mask-neck-gt``) puts each box only
on the level MMDetection's RoI mapping gives it (``floor(log2(sqrt(wh) / 56))``,
:func:`~pipeline.distill.masks.roi_levels`); ``"all"`` puts every box on every level.

Weights: ``fg_weight = 3``, ``bg_weight = 12`` (``hint_neck_w`` / ``hint_neck_back_w`` of the
released Faster R-CNN FPN config; the background gets the larger weight, the paper's point).
No one-stage FPN config was released; GFL uses the same values. ``f_adap`` is the released
per-level 3x3 adaptation conv (weights ~ N(0, 1e-4), truncated), trainable;
``adapt=False`` imitates raw student features. The released code's decoupled RoI-head
(proposal) distillation and its linear decay of the KD weights over epochs are not part of this
feature-level baseline.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.distill.base import KDContext, KDMethod
from pipeline.distill.fgfi import LEVEL_ASSIGN, adaptation_convs
from pipeline.distill.masks import binary_box_mask, roi_levels
from pipeline.distill.mimic import check_levels, check_weight
from pipeline.structures import Batch

DEFAULTS: dict[str, dict[str, float]] = {
    "gfl": {"fg_weight": 3.0, "bg_weight": 12.0},
    "faster_rcnn": {"fg_weight": 3.0, "bg_weight": 12.0},
}


class DeFeat(KDMethod):
    """DeFeat neck distillation on every FPN level (equations in the module docstring).

    Args:
        fg_weight, bg_weight: weights of the foreground and background terms.
        adapt: use the per-level adaptation conv (trainable, in :meth:`parameters`).
        level_assign: ``"roi"`` or ``"all"`` (module docstring).
        finest_scale: the RoI mapping's scale of level 0 (56, MMDetection's).
        num_levels, channels: FPN levels and width (for the adaptation convs).

    Returns from :meth:`forward`: ``kd_defeat_fg`` and ``kd_defeat_bg``, already weighted.
    With ``adapt=False`` and identical features both are zero; with the adaptation layer they
    are not zero by construction.
    """

    name = "defeat"
    WEIGHTS = ("fg_weight", "bg_weight")

    def __init__(self, fg_weight: float = 3.0, bg_weight: float = 12.0, adapt: bool = True,
                 level_assign: str = "roi", finest_scale: float = 56.0, num_levels: int = 5,
                 channels: int = 256) -> None:
        super().__init__()
        self.fg_weight = check_weight("fg_weight", fg_weight)
        self.bg_weight = check_weight("bg_weight", bg_weight)
        if level_assign not in LEVEL_ASSIGN:
            raise ValueError(f"level_assign = {level_assign!r}; choose one of {', '.join(LEVEL_ASSIGN)}")
        if not float(finest_scale) > 0:
            raise ValueError(f"finest_scale = {finest_scale} must be > 0 (MMDetection uses 56)")
        self.level_assign = level_assign
        self.finest_scale = float(finest_scale)
        self.num_levels = int(num_levels)
        self.adapt = adaptation_convs(num_levels, channels) if adapt else None

    def foreground_masks(self, feats: list[Tensor], batch: Batch, strides: tuple[int, ...]) -> list[Tensor]:
        """Per level ``[N, 1, H_l, W_l]`` float: 1 on the cells of the boxes assigned to it."""
        boxes = [b.to(feats[0].device) for b in batch.boxes]
        if self.level_assign == "roi":
            levels = [roi_levels(b, len(feats), self.finest_scale) for b in boxes]
        masks = []
        for level, f in enumerate(feats):
            level_boxes = boxes if self.level_assign == "all" else [b[lv == level] for b, lv in zip(boxes, levels)]
            masks.append(binary_box_mask(level_boxes, strides[level], f.shape[-2:]))
        return masks

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], batch: Batch,
                context: KDContext) -> dict[str, Tensor]:
        """Per level ``[N, C, H_l, W_l]`` student (in the graph) and teacher features, the batch's
        boxes and ``context.strides`` -> the two weighted terms."""
        check_levels(self.name, student_feats, teacher_feats, context, self.num_levels)
        masks = self.foreground_masks(student_feats, batch, context.strides)
        fg_loss = bg_loss = student_feats[0].new_zeros(())
        for level, (s, t, mask) in enumerate(zip(student_feats, teacher_feats, masks)):
            if self.adapt is not None:
                s = self.adapt[level](s)
            sq = (s - t.detach()).pow(2)
            channels = s.shape[1]
            fg_count = mask.sum() * channels
            bg_count = (1.0 - mask).sum() * channels
            fg_loss = fg_loss + (sq * mask).sum() / torch.clamp(2.0 * fg_count, min=1.0)
            bg_loss = bg_loss + (sq * (1.0 - mask)).sum() / torch.clamp(2.0 * bg_count, min=1.0)
        num = len(student_feats)
        return {"kd_defeat_fg": self.fg_weight * fg_loss / num, "kd_defeat_bg": self.bg_weight * bg_loss / num}
