"""FGFI: Fine-Grained Feature Imitation (Wang et al., "Distilling Object Detectors with
Fine-grained Feature Imitation", CVPR 2019), on every FPN level.

Imitation mask (Sec. 3.1, :func:`~pipeline.distill.masks.anchor_iou_masks`): for each
ground-truth box of the augmented batch (x1,y1,x2,y2 input pixels), ``m`` = its largest IoU
with any anchor; the locations with an anchor whose IoU with it exceeds ``psi * m``
(``psi = 0.5``) are kept; the union over boxes and over the anchors of a location gives
``I`` (``[N, 1, H_l, W_l]``). The anchors are the detector's own:

* GFL: one square anchor of side ``8 * stride`` per location, centred on ``(x*s, y*s)``
  (:meth:`pipeline.models.gfl_head.GFLHead.get_anchors`);
* Faster R-CNN: the RPN's three anchors per location, ratios 0.5, 1, 2 and scale 8
  (:class:`pipeline.models.faster_rcnn.MMDetAnchorGenerator`).

Both layouts centre anchors on cell corners (MMDetection's ``center_offset=0``), so under a
horizontal flip the mask follows the box up to that one-cell shift of the anchor grid.

With ``level_assign="all"`` (default) ``m`` is taken over the anchors of every level, so each
box is imitated on the levels whose anchors fit it; ``"roi"`` puts each box only on its
RoI-mapped level, as the FPN variant in DeFeat's released code does.

Loss (the paper's imitation loss, Sec. 3), per level, summed over the levels::

    L_imitation = weight * sum_l 1 / (2 N_p) sum_{n,i,j} I_ij sum_c (f_adap(s)_ijc - t_ijc)^2

``N_p = sum I`` over the batch's positions (not channels), as paper and released code; a
level without imitated positions contributes 0. ``f_adap`` is the paper's adaptation layer,
one 3x3 conv per level (no ReLU: FPN outputs are signed, DeFeat's FPN port drops it too),
weights from a normal with std 1e-4 truncated at 2 std, as released; ``adapt=False`` imitates
the raw student features. ``weight = 0.01`` is the released default (``--ilw``); no GFL value
was published, the same is used.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.distill.base import KDContext, KDMethod
from pipeline.distill.masks import anchor_iou_masks
from pipeline.distill.mimic import check_levels, check_weight
from pipeline.errors import UserError
from pipeline.models.faster_rcnn import MMDetAnchorGenerator
from pipeline.models.gfl_head import OCTAVE_BASE_SCALE, GFLHead
from pipeline.structures import Batch

DEFAULTS: dict[str, dict[str, float]] = {
    "gfl": {"weight": 0.01, "psi": 0.5},
    "faster_rcnn": {"weight": 0.01, "psi": 0.5},
}

LEVEL_ASSIGN = ("all", "roi")


def adaptation_convs(num_levels: int, channels: int) -> nn.ModuleList:
    """One 3x3 conv ``channels -> channels`` per level, weights ~ N(0, 1e-4) truncated at
    +-2e-4, default bias, as FGFI's and DeFeat's released adaptation layers."""
    convs = nn.ModuleList(nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in range(num_levels))
    for conv in convs:
        nn.init.trunc_normal_(conv.weight, mean=0.0, std=1e-4, a=-2e-4, b=2e-4)
    return convs


class _GFLAnchors:
    """The two attributes :meth:`GFLHead.get_anchors` reads, so FGFI reuses the head's anchor
    layout without building a head; the anchor scale is the head's default, as the factory."""

    get_anchors = GFLHead.get_anchors

    def __init__(self, strides: tuple[int, ...]) -> None:
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = OCTAVE_BASE_SCALE


def level_anchors(detector: str, strides: tuple[int, ...], feats: list[Tensor]) -> list[Tensor]:
    """The detector's anchors per level, ``[H_l * W_l * A, 4]`` x1,y1,x2,y2 input pixels,
    row, column, anchor order (GFL ``A = 1``, Faster R-CNN ``A = 3``)."""
    sizes = [tuple(int(v) for v in f.shape[-2:]) for f in feats]
    if detector == "gfl":
        return _GFLAnchors(strides).get_anchors(sizes, feats[0].device)
    if detector == "faster_rcnn":
        return MMDetAnchorGenerator(strides)(feats)
    raise UserError(f"fgfi: unknown detector {detector!r}; choose gfl or faster_rcnn")


class FGFI(KDMethod):
    """FGFI on every FPN level (equations in the module docstring).

    Args:
        weight: the imitation loss weight ``lambda``.
        psi: threshold factor in ``(0, 1]``.
        adapt: use the per-level adaptation conv (trainable, in :meth:`parameters`).
        level_assign: ``"all"`` or ``"roi"`` (module docstring).
        num_levels, channels: FPN levels and width (for the adaptation convs).

    Returns from :meth:`forward`: ``{"kd_fgfi_imitation": ...}``, already weighted. With
    ``adapt=False`` and identical features it is zero; with the adaptation layer it is not
    zero by construction (the adaptation is learnt).
    """

    name = "fgfi"
    WEIGHTS = ("weight",)

    def __init__(self, weight: float = 0.01, psi: float = 0.5, adapt: bool = True, level_assign: str = "all",
                 num_levels: int = 5, channels: int = 256) -> None:
        super().__init__()
        self.weight = check_weight("weight", weight)
        if not 0.0 < float(psi) <= 1.0:
            raise ValueError(f"psi = {psi} must be in (0, 1] (the paper uses 0.5)")
        if level_assign not in LEVEL_ASSIGN:
            raise ValueError(f"level_assign = {level_assign!r}; choose one of {', '.join(LEVEL_ASSIGN)}")
        self.psi = float(psi)
        self.level_assign = level_assign
        self.num_levels = int(num_levels)
        self.adapt = adaptation_convs(num_levels, channels) if adapt else None

    def imitation_masks(self, feats: list[Tensor], batch: Batch, context: KDContext) -> list[Tensor]:
        """Per level ``[N, 1, H_l, W_l]`` float: FGFI's ``I`` for each image of the batch."""
        anchors = level_anchors(context.detector, context.strides, feats)
        sizes = [tuple(int(v) for v in f.shape[-2:]) for f in feats]
        per_image = [anchor_iou_masks(b.to(feats[0].device), anchors, sizes, self.psi, self.level_assign)
                     for b in batch.boxes]
        return [torch.stack([m[level] for m in per_image])[:, None].float() for level in range(len(feats))]

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], batch: Batch,
                context: KDContext) -> dict[str, Tensor]:
        """Per level ``[N, C, H_l, W_l]`` student (in the graph) and teacher features, the batch's
        boxes, ``context.detector`` and ``context.strides`` -> the weighted imitation term."""
        check_levels(self.name, student_feats, teacher_feats, context, self.num_levels)
        masks = self.imitation_masks(student_feats, batch, context)
        total = student_feats[0].new_zeros(())
        for level, (s, t, mask) in enumerate(zip(student_feats, teacher_feats, masks)):
            if self.adapt is not None:
                s = self.adapt[level](s)
            sq = (s - t.detach()).pow(2) * mask
            total = total + sq.sum() / (2.0 * mask.sum().clamp(min=1.0))
        return {"kd_fgfi_imitation": self.weight * total}
