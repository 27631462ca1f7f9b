"""Faster R-CNN heads (RPN + RoI box head) on FPN features P2-P6, configured like
MMDetection 3.3's ``faster-rcnn_r50_fpn_1x_coco``.

The backbone and neck live elsewhere; this module takes the five FPN maps
``P2..P6`` (``[N, 256, H/4, W/4] .. [N, 256, H/64, W/64]``, ``H, W`` the padded input
size of the :class:`~pipeline.structures.Batch`) and offers

* :meth:`FasterRCNNHeads.loss` -> ``{"loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
  "loss_bbox"}`` (scalars; their sum is the training loss),
* :meth:`FasterRCNNHeads.predict` -> one :class:`~pipeline.structures.Detections` per
  image, boxes ``x1, y1, x2, y2`` in input pixels clipped to ``batch.image_sizes[i]``,
  labels ``0..C-1``.

It is built from torchvision's detection parts (``RPNHead``, ``RegionProposalNetwork``,
``AnchorGenerator``, ``MultiScaleRoIAlign``, ``RoIHeads``, ``TwoMLPHead``, ``BoxCoder``,
``BalancedPositiveNegativeSampler``) with small subclasses where torchvision's defaults
differ from MMDetection:

* anchors: torchvision rounds the base shapes to integers and infers each level's
  stride as ``input // feature`` (wrong for P6 when ``H/32`` is odd); here the shapes
  are float and the strides fixed ``4, 8, 16, 32, 64`` (:class:`MMDetAnchorGenerator`).
* assignment: torchvision's ``Matcher`` low-quality matching ignores ``min_pos_iou``
  and gives such an anchor its own argmax GT; here mmdet's ``MaxIoUAssigner``
  (:func:`max_iou_assign`): low-quality only if IoU >= 0.3, the anchor goes to the GT it
  is the best anchor for (last GT wins).
* box losses: torchvision smooth L1 (beta 1/9); here L1 (weight 1.0) for RPN and RoI.
* RoI classes: torchvision puts background at index 0 and regresses ``4 * (C + 1)``
  deltas; here background is the LAST logit (index ``C``), labels ``0..C-1``, and
  ``fc_reg`` has ``4 * C`` outputs indexed by the label (:class:`MMDetBoxPredictor`).
* delta decoding: torchvision clamps ``dw, dh`` from above only; here to
  ``+-log(1000/16)`` (:class:`MMDetBoxCoder`).
* RoIAlign: torchvision uses ``aligned=False``, infers scales from shapes and maps levels
  with ``floor(4 + log2(s/224) + eps)``; here ``aligned=True`` (mmcv default), fixed
  strides and ``floor(log2(s/56 + eps))`` (:class:`MMDetRoIAlign`).
* test post-processing: torchvision also drops boxes under 0.01 px; here exactly mmdet's
  ``multiclass_nms`` (``score > 0.05``, class-wise NMS 0.5, top 100).
* init: shared FCs Xavier-uniform, ``fc_cls`` N(0, 0.01), ``fc_reg`` N(0, 0.001), biases
  0 (torchvision: ``nn.Linear`` default); RPN convs N(0, 0.01) in both.

(The RPN objectness is already one sigmoid logit per anchor in torchvision, as in mmdet:
``rpn_cls`` has 3 output channels. The output layouts also agree: anchor ``a`` (ratio
order 0.5, 1, 2) is ``rpn_cls`` channel ``a`` and ``rpn_reg`` channels ``4a..4a+3``,
anchors run row, column, anchor; RoI features flatten as ``C, 7, 7``. So mmdet weights
load by renaming only, see :data:`pipeline.models.mmdet_names.DETECTOR_RULES`.)

The two level mappings are the same function up to the epsilon: torchvision's
``floor(4 + log2(s / 224))`` minus its ``k_min = 2`` equals ``floor(log2(s / 56))``.
We use mmdet's form.

Remaining deviations from MMDetection (all minor):

1. Random sampling (RPN 256 anchors, RoI 512 proposals) draws from torch's global RNG
   through torchvision's sampler, so the chosen samples differ from mmdet's for the same
   seed (same distribution). GT boxes are appended after the proposals (mmdet prepends
   them); with uniform random sampling this changes only which random draw picks what.
2. RPN proposals narrower/shorter than 1e-3 px are dropped (torchvision ``min_size``);
   mmdet (``min_bbox_size=0``) drops only ``w <= 0`` or ``h <= 0``.
3. ``loss_rpn_cls``/``loss_rpn_bbox`` are single scalars; mmdet logs per-level lists,
   whose sum (each term uses the global ``avg_factor`` = number of sampled anchors)
   equals our scalar.
4. Ignore regions (``batch.ignore_boxes``) are not used, as in mmdet's default
   (``ignore_iof_thr=-1``): anchors/proposals on them are ordinary negatives.
5. Boxes are returned in input pixels; mmdet's ``rescale=True`` maps them to the original
   image in the head - here :meth:`Batch.to_original` does that afterwards (same clip
   then divide order).
6. No mmdet zero-valued dummy term for FPN levels that receive no RoI (mmdet adds it
   for DDP); the RoI extractor has no parameters and every level feeds the RPN, so all
   parameters still take part in the loss.
7. Score ties in top-k / NMS may be broken in a different order.
8. Anchors, box coding, IoU, RoIAlign and the losses run in float32 also under AMP
   (mmdet builds anchors in the feature dtype).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import MultiScaleRoIAlign, boxes as box_ops, roi_align

from pipeline.structures import Batch, Detections

__all__ = [
    "FasterRCNNHeads",
    "MMDetAnchorGenerator",
    "MMDetBoxCoder",
    "MMDetBoxPredictor",
    "MMDetRoIAlign",
    "MMDetRoIHeads",
    "MMDetRPN",
    "max_iou_assign",
]

#: mmdet's ``DeltaXYWHBBoxCoder`` clamp of ``dw, dh``: ``|log(16 / 1000)|``.
_DELTA_CLIP = math.log(1000.0 / 16)


# ----------------------------------------------------------------------------------
# Assignment and box coding
# ----------------------------------------------------------------------------------


def max_iou_assign(
    iou: Tensor,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float,
    match_low_quality: bool,
) -> Tensor:
    """mmdet ``MaxIoUAssigner`` (``gt_max_assign_all=True``, no ignore regions).

    Args:
        iou: ``[G, A]`` IoU of ``G`` GT boxes with ``A`` anchors/proposals.
        pos_iou_thr: a box whose best IoU is ``>=`` this is positive for its argmax GT.
        neg_iou_thr: a box whose best IoU is in ``[0, neg_iou_thr)`` is negative.
        min_pos_iou: low-quality matches need at least this IoU.
        match_low_quality: every GT also takes the boxes with its own maximum IoU
            (all ties; where several GTs claim a box the last GT wins).

    Returns:
        ``[A]`` int64: ``-1`` ignore, ``0`` negative, ``k + 1`` matched to GT ``k``.
    """
    num_gts, num_boxes = iou.shape
    if num_gts == 0:
        return torch.zeros((num_boxes,), dtype=torch.int64, device=iou.device)
    assigned = torch.full((num_boxes,), -1, dtype=torch.int64, device=iou.device)
    if num_boxes == 0:
        return assigned
    max_iou, argmax_iou = iou.max(dim=0)
    assigned[(max_iou >= 0) & (max_iou < neg_iou_thr)] = 0
    pos = max_iou >= pos_iou_thr
    assigned[pos] = argmax_iou[pos] + 1
    if match_low_quality:
        gt_max = iou.max(dim=1).values  # [G]
        claims = (iou == gt_max[:, None]) & (gt_max[:, None] >= min_pos_iou)  # [G, A]
        gt_ids = torch.arange(1, num_gts + 1, device=iou.device)[:, None]
        last_claim = (claims.long() * gt_ids).max(dim=0).values  # [A], 0 = unclaimed
        claimed = last_claim > 0
        assigned[claimed] = last_claim[claimed]
    return assigned


def _to_sampler_labels(assigned: Tensor) -> Tensor:
    """``[A]`` assignment (-1/0/k+1) -> torchvision sampler labels (-1 / 0 / 1)."""
    return assigned.clamp(max=1)


class MMDetBoxCoder(det_utils.BoxCoder):
    """torchvision ``BoxCoder`` (``weights = 1 / target_stds``, means 0) with mmdet's
    two-sided clamp of ``dw, dh`` to ``+-log(1000/16)`` when decoding.

    Boxes are ``x1, y1, x2, y2``; widths are ``x2 - x1`` (no +1), as in mmdet.
    """

    def __init__(self, target_stds: Sequence[float]) -> None:
        weights = tuple(1.0 / float(s) for s in target_stds)
        super().__init__(weights, bbox_xform_clip=_DELTA_CLIP)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """``[K, 4k]`` deltas, ``[K, 4]`` reference boxes -> ``[K, 4k]`` boxes."""
        _, _, ww, wh = self.weights
        codes = rel_codes.clone()
        codes[:, 2::4] = codes[:, 2::4].clamp(min=-self.bbox_xform_clip * ww)
        codes[:, 3::4] = codes[:, 3::4].clamp(min=-self.bbox_xform_clip * wh)
        return super().decode_single(codes, boxes)


# ----------------------------------------------------------------------------------
# RPN
# ----------------------------------------------------------------------------------


class MMDetAnchorGenerator(AnchorGenerator):
    """mmdet ``AnchorGenerator`` (``center_offset=0``) on torchvision's.

    Level ``l`` has stride ``strides[l]`` and anchors of side ``stride * scale`` for each
    ratio ``h / w`` (area preserved), centred on ``(x * stride, y * stride)``. The base
    shapes are not rounded and the strides are fixed, not inferred from shapes.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scales: Sequence[float] = (8.0,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        sizes = tuple(tuple(float(stride * s) for s in scales) for stride in strides)
        super().__init__(sizes, tuple(tuple(float(r) for r in ratios) for _ in strides))
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        """``[len(ratios) * len(scales), 4]`` zero-centred anchors, ratio-major."""
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios_t = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios_t)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales_t[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales_t[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, feature_maps: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        """Per level ``[H_l * W_l * A, 4]`` float32 anchors x1,y1,x2,y2 in input pixels.

        Order within a level: row, then column, then anchor (ratio), matching the
        channel layout of :class:`RPNHead` outputs. Always float32 (also under AMP).
        """
        device, dtype = feature_maps[0].device, torch.float32
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        self.set_cell_anchors(dtype, device)
        return self.grid_anchors(grid_sizes, strides)


class MMDetRPN(RegionProposalNetwork):
    """torchvision ``RegionProposalNetwork`` with mmdet's assigner, L1 box loss, fixed
    anchor strides and an explicit train/test proposal config (not ``self.training``).

    Objectness is one sigmoid logit per anchor (BCE), as in both libraries.
    """

    def __init__(
        self,
        anchor_generator: MMDetAnchorGenerator,
        head: RPNHead,
        *,
        pos_iou_thr: float = 0.7,
        neg_iou_thr: float = 0.3,
        min_pos_iou: float = 0.3,
        num_samples: int = 256,
        pos_fraction: float = 0.5,
        pre_nms_top_n: dict[str, int] | None = None,
        post_nms_top_n: dict[str, int] | None = None,
        nms_thresh: float = 0.7,
    ) -> None:
        super().__init__(
            anchor_generator,
            head,
            fg_iou_thresh=pos_iou_thr,
            bg_iou_thresh=neg_iou_thr,
            batch_size_per_image=num_samples,
            positive_fraction=pos_fraction,
            pre_nms_top_n=pre_nms_top_n or {"training": 2000, "testing": 1000},
            post_nms_top_n=post_nms_top_n or {"training": 1000, "testing": 1000},
            nms_thresh=nms_thresh,
        )
        self.box_coder = MMDetBoxCoder((1.0, 1.0, 1.0, 1.0))
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self._phase = "testing"

    def pre_nms_top_n(self) -> int:
        """Proposals kept per level before NMS (``nms_pre``) for the current phase."""
        return self._pre_nms_top_n[self._phase]

    def post_nms_top_n(self) -> int:
        """Proposals kept per image after NMS (``max_per_img``) for the current phase."""
        return self._post_nms_top_n[self._phase]

    def assign_targets_to_anchors(  # type: ignore[override]
        self, anchors: list[Tensor], gt_boxes: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: sampler labels ``[A]`` float (1 pos, 0 neg, -1 ignore) and the
        matched GT box ``[A, 4]`` of every anchor (zeros where unmatched)."""
        labels, matched = [], []
        for anchors_i, gt_i in zip(anchors, gt_boxes):
            iou = box_ops.box_iou(gt_i, anchors_i)
            assigned = max_iou_assign(iou, self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou, True)
            labels.append(_to_sampler_labels(assigned).to(torch.float32))
            if gt_i.numel() == 0:
                matched.append(torch.zeros_like(anchors_i))
            else:
                matched.append(gt_i[(assigned - 1).clamp(min=0)])
        return labels, matched

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """BCE over the sampled anchors and L1 over the positive ones, both divided by
        the number of sampled anchors in the batch (mmdet's ``avg_factor``).

        Args:
            objectness: ``[N * A_total, 1]`` logits.
            pred_bbox_deltas: ``[N * A_total, 4]``.
            labels: per image ``[A_total]`` (1 / 0 / -1).
            regression_targets: per image ``[A_total, 4]`` deltas (stds 1).
        """
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos_masks))[0]
        neg = torch.where(torch.cat(neg_masks))[0]
        sampled = torch.cat([pos, neg])
        num_sampled = max(sampled.numel(), 1)
        labels_cat = torch.cat(labels)
        targets = torch.cat(regression_targets)
        loss_cls = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled].float(), labels_cat[sampled], reduction="sum"
        ) / num_sampled
        loss_bbox = F.l1_loss(pred_bbox_deltas[pos].float(), targets[pos], reduction="sum") / num_sampled
        return loss_cls, loss_bbox

    def forward(  # type: ignore[override]
        self,
        features: list[Tensor],
        image_sizes: list[tuple[int, int]],
        gt_boxes: list[Tensor] | None = None,
        training: bool = False,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals (and losses when ``training``).

        Args:
            features: ``P2..P6``, ``[N, C, H_l, W_l]``.
            image_sizes: per image ``(h, w)`` before padding; proposals are clipped to it.
            gt_boxes: per image ``[K_i, 4]`` x1,y1,x2,y2 input pixels (needed for training).
            training: use the training proposal config and compute losses.

        Returns:
            per image ``[P_i, 4]`` detached proposals (score-sorted), and
            ``{"loss_rpn_cls", "loss_rpn_bbox"}`` (empty when not training).
        """
        self._phase = "training" if training else "testing"
        objectness, deltas = self.head(features)
        level_anchors = self.anchor_generator(features)
        anchors_one = torch.cat(level_anchors)
        num_images = features[0].shape[0]
        anchors = [anchors_one] * num_images
        num_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        # box maths in float32 also under AMP (coordinates up to ~2000 px)
        proposals = self.box_coder.decode(deltas.detach().float(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness.detach().float(), image_sizes, num_per_level)
        losses: dict[str, Tensor] = {}
        if training:
            if gt_boxes is None:
                raise ValueError("gt_boxes are required for training")
            labels, matched = self.assign_targets_to_anchors(anchors, gt_boxes)
            targets = self.box_coder.encode(matched, anchors)
            loss_cls, loss_bbox = self.compute_loss(objectness, deltas, labels, targets)
            losses = {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}
        return boxes, losses


# ----------------------------------------------------------------------------------
# RoI head
# ----------------------------------------------------------------------------------


class MMDetRoIAlign(MultiScaleRoIAlign):
    """mmdet ``SingleRoIExtractor``: RoIAlign (``aligned=True``) on the level
    ``clamp(floor(log2(sqrt(w * h) / finest_scale + 1e-6)), 0, L - 1)``."""

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 0,
        finest_scale: float = 56.0,
    ) -> None:
        super().__init__([str(i) for i in range(len(strides))], output_size, sampling_ratio)
        self.strides = tuple(int(s) for s in strides)
        self.finest_scale = float(finest_scale)

    def map_roi_levels(self, boxes: Tensor) -> Tensor:
        """``[K, 4]`` boxes -> ``[K]`` int64 level index into ``strides``."""
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=len(self.strides) - 1).long()

    def forward(self, x: list[Tensor], boxes: list[Tensor]) -> Tensor:  # type: ignore[override]
        """Pool RoIs.

        Args:
            x: ``P2..P5`` (at least ``len(strides)`` maps), ``[N, C, H_l, W_l]``.
            boxes: per image ``[K_i, 4]`` x1,y1,x2,y2 in input pixels.

        Returns:
            ``[sum K_i, C, S, S]`` features, RoIs in image-then-box order.
        """
        rois = torch.cat(
            [torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
        )
        feats = x[: len(self.strides)]
        size = self.output_size
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *size))
        if rois.shape[0] == 0:
            return out
        levels = self.map_roi_levels(rois[:, 1:])
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(levels == level)[0]
            if idx.numel() == 0:
                continue
            pooled = roi_align(
                feat.float(), rois[idx].float(), size, 1.0 / stride, self.sampling_ratio, aligned=True
            )
            out[idx] = pooled.to(out.dtype)
        return out


class MMDetBoxPredictor(nn.Module):
    """mmdet ``fc_cls`` (``C + 1`` logits, background LAST) and class-specific ``fc_reg``
    (``4 * C`` deltas, no background row; class ``c`` uses ``[4c:4c+4]``)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[K, D]`` -> logits ``[K, C + 1]``, deltas ``[K, 4C]``."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def _init_shared_fcs(box_head: TwoMLPHead) -> None:
    """mmdet's ``Xavier(distribution='uniform')`` init of ``shared_fcs`` (bias 0)."""
    for fc in (box_head.fc6, box_head.fc7):
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)


#: At most this many (box, class) candidates per image enter the second-stage NMS: the most
#: TensorRT's NMS layer considers (its documented limit), so PyTorch, ONNX Runtime and TensorRT
#: agree. MMDetection has no cap; at 1000 proposals it binds only above 5 classes, and only when
#: more than 5000 candidates clear ``score_thr`` (the lowest-scoring ones are dropped).
MAX_NMS_CANDIDATES = 5000


class MMDetRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` with mmdet's label convention (background = ``C``),
    assigner, L1 class-specific box loss and ``multiclass_nms`` post-processing (with the
    candidates capped at ``max_candidates``, :data:`MAX_NMS_CANDIDATES`)."""

    def __init__(
        self,
        box_roi_pool: MMDetRoIAlign,
        box_head: TwoMLPHead,
        box_predictor: MMDetBoxPredictor,
        *,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.5,
        min_pos_iou: float = 0.5,
        num_samples: int = 512,
        pos_fraction: float = 0.25,
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
        max_candidates: int = MAX_NMS_CANDIDATES,
    ) -> None:
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            fg_iou_thresh=pos_iou_thr,
            bg_iou_thresh=neg_iou_thr,
            batch_size_per_image=num_samples,
            positive_fraction=pos_fraction,
            bbox_reg_weights=None,
            score_thresh=score_thr,
            nms_thresh=nms_iou,
            detections_per_img=max_per_img,
        )
        self.box_coder = MMDetBoxCoder(target_stds)
        self.num_classes = box_predictor.num_classes
        self.max_candidates = int(max_candidates)
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou

    def assign_targets_to_proposals(  # type: ignore[override]
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: matched GT index ``[P]`` (clamped to >= 0) and class label ``[P]``
        int64 (``0..C-1`` fg, ``C`` background, ``-1`` ignored)."""
        matched_idxs, labels = [], []
        for props, gts, gt_labels_i in zip(proposals, gt_boxes, gt_labels):
            iou = box_ops.box_iou(gts, props)
            assigned = max_iou_assign(iou, self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou, False)
            idx = (assigned - 1).clamp(min=0)
            lab = torch.full_like(assigned, self.num_classes)
            fg = assigned > 0
            lab[fg] = gt_labels_i.to(torch.int64)[idx[fg]]
            lab[assigned < 0] = -1
            matched_idxs.append(idx)
            labels.append(lab)
        return matched_idxs, labels

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        """Sampled proposal indices per image (``num_samples``, ``pos_fraction``)."""
        sampler_labels = [
            torch.where(lab == self.num_classes, torch.zeros_like(lab), torch.where(lab >= 0, 1, -1))
            for lab in labels
        ]
        return super().subsample(sampler_labels)

    def box_loss(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """CE over all sampled RoIs and L1 on the positive RoIs' own-class deltas, both
        averaged over the number of sampled RoIs (mmdet ``BBoxHead.loss``).

        Args:
            class_logits: ``[R, C + 1]``; box_regression: ``[R, 4C]``;
            labels: per image ``[R_i]`` (``C`` = background);
            regression_targets: per image ``[R_i, 4]`` normalised deltas.
        """
        labels_cat = torch.cat(labels)
        targets = torch.cat(regression_targets)
        num_rois = labels_cat.numel()
        if num_rois == 0:
            zero = class_logits.sum() * 0 + box_regression.sum() * 0
            return zero, zero
        loss_cls = F.cross_entropy(class_logits.float(), labels_cat)
        pos = torch.where(labels_cat < self.num_classes)[0]
        deltas = box_regression.float().reshape(num_rois, self.num_classes, 4)[pos, labels_cat[pos]]
        loss_bbox = F.l1_loss(deltas, targets[pos], reduction="sum") / num_rois
        return loss_cls, loss_bbox

    def postprocess_detections(  # type: ignore[override]
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """mmdet ``multiclass_nms``: softmax, class-specific decode clipped to the image,
        drop background, keep ``score > score_thr``, the ``max_candidates`` highest-scoring of
        them, class-wise NMS, top ``max_per_img``.

        Returns per image boxes ``[K, 4]``, scores ``[K]``, labels ``[K]`` (0..C-1),
        sorted by decreasing score.
        """
        num_classes = self.num_classes
        counts = [p.shape[0] for p in proposals]
        scores_all = F.softmax(class_logits.float(), dim=-1)[:, :num_classes]
        boxes_all = self.box_coder.decode(box_regression.float(), proposals)  # [R, C, 4]
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(boxes_all.split(counts), scores_all.split(counts), image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape).reshape(-1, 4)
            labels = torch.arange(num_classes, device=scores.device).expand_as(scores).reshape(-1)
            scores = scores.reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            if keep.numel() > self.max_candidates:
                keep = keep[scores[keep].topk(self.max_candidates).indices]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels

    def _box_outputs(self, features: list[Tensor], proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """RoIAlign + shared FCs + predictor: logits ``[R, C+1]``, deltas ``[R, 4C]``."""
        pooled = self.box_roi_pool(features, proposals)
        return self.box_predictor(self.box_head(pooled))

    def forward(  # type: ignore[override]
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        gt_boxes: list[Tensor] | None = None,
        gt_labels: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[Detections]:
        """Losses ``{"loss_cls", "loss_bbox"}`` when GT is given, else detections.

        Args:
            features: ``P2..P5`` (extra maps are ignored).
            proposals: per image ``[P_i, 4]`` x1,y1,x2,y2 input pixels (detached).
            image_sizes: per image ``(h, w)`` before padding (detections are clipped).
            gt_boxes / gt_labels: per image ``[K_i, 4]`` / ``[K_i]`` (labels 0..C-1).
        """
        if gt_boxes is not None:
            if gt_labels is None:
                raise ValueError("gt_labels are required with gt_boxes")
            targets = [{"boxes": b, "labels": lab} for b, lab in zip(gt_boxes, gt_labels)]
            rois, _, labels, reg_targets = self.select_training_samples(list(proposals), targets)
            class_logits, box_regression = self._box_outputs(features, rois)
            loss_cls, loss_bbox = self.box_loss(class_logits, box_regression, labels, reg_targets)
            return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
        class_logits, box_regression = self._box_outputs(features, proposals)
        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_sizes
        )
        return [Detections(b, s, lab) for b, s, lab in zip(boxes, scores, labels)]


# ----------------------------------------------------------------------------------
# Public heads module
# ----------------------------------------------------------------------------------


class FasterRCNNHeads(nn.Module):
    """RPN + Shared2FC RoI box head of mmdet's ``faster-rcnn_r50_fpn_1x`` on P2-P6.

    Args:
        num_classes: foreground classes ``C``.
        in_channels: FPN channels.
        anchor_strides / anchor_scales / anchor_ratios: anchors of side
            ``stride * scale`` (32..512 px) with ratios ``h / w``.
        rpn_*: RPN assigner (0.7 / 0.3 / min 0.3), sampler (256, 0.5), proposal config
            (``nms_pre`` 2000 train / 1000 test per level, ``max_per_img`` 1000, NMS 0.7).
        roi_*: RoI assigner (0.5 / 0.5), sampler (512, 0.25), RoIAlign (7, ratio 0,
            P2-P5 strides, finest scale 56), ``fc_out_channels`` (1024).
        test_*: ``score_thr`` 0.05, NMS IoU 0.5, at most 100 detections per image.

    ``state_dict`` keys map to mmdet's with :data:`pipeline.models.mmdet_names.DETECTOR_RULES`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        *,
        anchor_strides: Sequence[int] = (4, 8, 16, 32, 64),
        anchor_scales: Sequence[float] = (8.0,),
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pos_iou_thr: float = 0.7,
        rpn_neg_iou_thr: float = 0.3,
        rpn_min_pos_iou: float = 0.3,
        rpn_num_samples: int = 256,
        rpn_pos_fraction: float = 0.5,
        rpn_nms_pre: tuple[int, int] = (2000, 1000),
        rpn_max_per_img: tuple[int, int] = (1000, 1000),
        rpn_nms_iou: float = 0.7,
        roi_strides: Sequence[int] = (4, 8, 16, 32),
        roi_output_size: int = 7,
        roi_sampling_ratio: int = 0,
        roi_finest_scale: float = 56.0,
        roi_pos_iou_thr: float = 0.5,
        roi_neg_iou_thr: float = 0.5,
        roi_num_samples: int = 512,
        roi_pos_fraction: float = 0.25,
        roi_target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        fc_out_channels: int = 1024,
        test_score_thr: float = 0.05,
        test_nms_iou: float = 0.5,
        test_max_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_levels = len(anchor_strides)
        anchor_gen = MMDetAnchorGenerator(anchor_strides, anchor_scales, anchor_ratios)
        rpn_head = RPNHead(in_channels, anchor_gen.num_anchors_per_location()[0])
        self.rpn = MMDetRPN(
            anchor_gen,
            rpn_head,
            pos_iou_thr=rpn_pos_iou_thr,
            neg_iou_thr=rpn_neg_iou_thr,
            min_pos_iou=rpn_min_pos_iou,
            num_samples=rpn_num_samples,
            pos_fraction=rpn_pos_fraction,
            pre_nms_top_n={"training": rpn_nms_pre[0], "testing": rpn_nms_pre[1]},
            post_nms_top_n={"training": rpn_max_per_img[0], "testing": rpn_max_per_img[1]},
            nms_thresh=rpn_nms_iou,
        )
        box_head = TwoMLPHead(in_channels * roi_output_size**2, fc_out_channels)
        _init_shared_fcs(box_head)
        self.roi_head = MMDetRoIHeads(
            MMDetRoIAlign(roi_strides, roi_output_size, roi_sampling_ratio, roi_finest_scale),
            box_head,
            MMDetBoxPredictor(fc_out_channels, num_classes),
            pos_iou_thr=roi_pos_iou_thr,
            neg_iou_thr=roi_neg_iou_thr,
            min_pos_iou=roi_pos_iou_thr,
            num_samples=roi_num_samples,
            pos_fraction=roi_pos_fraction,
            target_stds=roi_target_stds,
            score_thr=test_score_thr,
            nms_iou=test_nms_iou,
            max_per_img=test_max_per_img,
        )

    def _check_feats(self, feats: Sequence[Tensor], batch: Batch) -> list[Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} FPN maps (P2..P6), got {len(feats)}")
        if feats[0].shape[0] != len(batch):
            raise ValueError(f"features hold {feats[0].shape[0]} images, batch has {len(batch)}")
        return list(feats)

    def loss(self, feats: Sequence[Tensor], batch: Batch) -> dict[str, Tensor]:
        """Training losses.

        Args:
            feats: ``P2..P6``, ``[N, C, H/4, W/4] .. [N, C, H/64, W/64]``.
            batch: GT ``boxes`` (x1,y1,x2,y2 input pixels) and 0-based ``labels``;
                ``image_sizes`` clip the proposals. ``ignore_boxes`` are not used.

        Returns:
            ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox`` scalars.
        """
        feats = self._check_feats(feats, batch)
        gt_boxes = [b.float() for b in batch.boxes]
        proposals, losses = self.rpn(feats, batch.image_sizes, gt_boxes, training=True)
        roi_losses = self.roi_head(feats, proposals, batch.image_sizes, gt_boxes, list(batch.labels))
        losses.update(roi_losses)
        return losses

    @torch.no_grad()
    def predict(self, feats: Sequence[Tensor], batch: Batch) -> list[Detections]:
        """Detections per image: boxes ``[K, 4]`` x1,y1,x2,y2 in input pixels clipped to
        ``batch.image_sizes[i]``, scores ``[K]``, labels ``[K]`` in ``0..C-1``,
        ``K <= test_max_per_img``."""
        feats = self._check_feats(feats, batch)
        proposals, _ = self.rpn(feats, batch.image_sizes, training=False)
        return self.roi_head(feats, proposals, batch.image_sizes)

    def forward(self, feats: Sequence[Tensor], batch: Batch) -> dict[str, Tensor] | list[Detections]:
        """:meth:`loss` in training mode, :meth:`predict` in eval mode."""
        return self.loss(feats, batch) if self.training else self.predict(feats, batch)
