"""The GFL detection head (Li et al., "Generalized Focal Loss", NeurIPS 2020), a
re-implementation that reproduces MMDetection 3.3's ``GFLHead`` (config
``gfl_r50_fpn_1x_coco``): same parameter names (its state dict loads strictly), same
raw outputs, same training losses and same detections.

Architecture (shared across the FPN levels P3-P7):

* ``cls_convs`` / ``reg_convs``: ``stacked_convs`` x (3x3 conv without bias ->
  GroupNorm(32) -> ReLU), names ``cls_convs.{i}.conv`` / ``cls_convs.{i}.gn``;
* ``gfl_cls``: 3x3 conv -> ``num_classes`` sigmoid logits (the joint
  classification-IoU score of the paper);
* ``gfl_reg``: 3x3 conv -> ``4 * (reg_max + 1)`` logits of the general distribution
  of the distances left, top, right, bottom (in stride units), multiplied by the
  per-level learnable ``scales.{l}.scale``;
* ``integral.project``: the fixed buffer ``[0, 1, ..., reg_max]`` (kept for
  state-dict compatibility).

Anchors: one square anchor per feature location, side ``8 * stride``
(``octave_base_scale=8``, ``scales_per_octave=1``, ratio 1), centred on the
*top-left corner* of the cell ``(x * stride, y * stride)`` (MMDetection's
``AnchorGenerator`` with ``center_offset=0``), flattened row-major per level.

Training (MMDetection 3.3 behaviour, per image then pooled over the batch):

* anchors are valid where the feature location lies inside the image's pad shape
  (``ceil(image_size / pad_size_divisor) * pad_size_divisor``, clipped to the batch's
  input shape); ``allowed_border=-1`` so every valid anchor is used;
* ATSS assignment (top 9 per level, :mod:`pipeline.models.atss`); ignore boxes are
  *not* used (MMDetection's GFL default ``ignore_iof_thr=-1``);
* ``loss_cls`` = QFL over all valid anchors, IoU targets = IoU(decoded prediction
  (detached), gt) at positives, divided by ``N_pos`` (number of positives in the
  batch, averaged over processes);
* ``loss_bbox`` = 2.0 * sum_pos w * (1 - GIoU) and ``loss_dfl`` = 0.25 * sum_pos w *
  (sum over the 4 sides of DFL) / 4, both divided by ``sum_pos w``, where ``w`` is the
  largest sigmoid class score of the anchor (detached). Boxes are compared in stride
  units (scale-invariant apart from the eps guards), DFL targets are the gt distances
  in stride units clamped to ``[0, reg_max - 0.1]``.

Inference: per level, the (location, class) pairs with score > ``score_thr``, the top
``nms_pre`` of them; integral decode, boxes clipped to the image; boxes with zero width
or height dropped (``min_bbox_size=0``); class-aware NMS; top ``max_per_img``.

Box format everywhere: ``x1, y1, x2, y2`` input pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from pipeline.models.atss import ATSSAssigner
from pipeline.models.gfl_losses import (
    AVG_EPS,
    aligned_iou,
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
)
from pipeline.structures import Batch, Detections


class Scale(nn.Module):
    """A learnable scalar multiplier (MMCV ``Scale``), parameter name ``scale``."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ConvGNReLU(nn.Module):
    """3x3 conv (no bias) -> GroupNorm -> ReLU, parameter names ``conv`` and ``gn``
    as MMCV's ``ConvModule`` with ``norm_cfg=dict(type='GN', num_groups=32)``."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.gn(self.conv(x)))


class Integral(nn.Module):
    """Expectation of the discretised distance distribution, GFL paper Eq. (5):
    ``y_hat = sum_i softmax(logits)_i * i``.

    Input ``[..., 4 * (reg_max + 1)]``, output ``[..., 4]`` (stride units).
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[:-1]
        prob = F.softmax(x.reshape(-1, self.reg_max + 1), dim=1)
        return F.linear(prob, self.project.type_as(prob)).reshape(*shape, 4)


def distance2bbox(points: Tensor, distances: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """Decode ``[N, 4]`` distances (left, top, right, bottom) from ``[N, 2]`` points
    ``(x, y)`` into ``[N, 4]`` x1,y1,x2,y2 boxes, optionally clipped to ``(h, w)``."""
    x1 = points[:, 0] - distances[:, 0]
    y1 = points[:, 1] - distances[:, 1]
    x2 = points[:, 0] + distances[:, 2]
    y2 = points[:, 1] + distances[:, 3]
    if max_shape is not None:
        h, w = max_shape
        x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
        y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def bbox2distance(points: Tensor, boxes: Tensor, max_dis: float | None = None, eps: float = 0.1) -> Tensor:
    """Encode ``[N, 4]`` x1,y1,x2,y2 boxes as distances (left, top, right, bottom) from
    ``[N, 2]`` points, clamped to ``[0, max_dis - eps]`` when ``max_dis`` is given."""
    d = torch.stack(
        (points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1], boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]),
        dim=-1,
    )
    if max_dis is not None:
        d = d.clamp(min=0, max=max_dis - eps)
    return d


def _world_size() -> int:
    """Number of data-parallel processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _reduce_mean(t: Tensor) -> Tensor:
    """Mean over processes (identity when not distributed), as MMDetection's."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    dist.all_reduce(t.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return t


#: MMDetection's GFL anchor scale (``octave_base_scale``), the head's default.
OCTAVE_BASE_SCALE = 8.0


@dataclass(frozen=True)
class GFLTestConfig:
    """GFL's test-time settings (MMDetection's ``test_cfg`` of gfl_r50_fpn_1x), an attribute of the
    head as in torchvision's FCOS, so that evaluation and export read the same values.

    ``score_thr``: minimum class score; ``nms_pre``: candidates per level kept before NMS;
    ``nms_iou``: class-aware NMS IoU; ``max_per_img``: detections kept per image.
    """

    score_thr: float = 0.05
    nms_iou: float = 0.6
    max_per_img: int = 100
    nms_pre: int = 1000


class GFLHead(nn.Module):
    """GFL head.

    Args:
        num_classes: number of foreground classes ``C`` (sigmoid, no background logit).
        in_channels: channels of the FPN features.
        feat_channels: channels of the towers.
        stacked_convs: convs per tower.
        reg_max: ``n``, the distance distribution has ``n + 1`` bins ``0..n``.
        strides: strides of the FPN levels.
        octave_base_scale, scales_per_octave: anchor side ``= stride * octave_base_scale``
            (only ``scales_per_octave=1`` is supported: one anchor per location).
        num_groups: GroupNorm groups.
        topk: ATSS candidates per level.
        qfl_beta: QFL exponent.
        loss_cls_weight, loss_bbox_weight, loss_dfl_weight: loss weights (1, 2, 0.25).
        pad_size_divisor: the per-image pad shape MMDetection uses for the anchors' valid
            flags is the image size rounded up to this; ``None``: the batch input shape.
        prior_prob: initial foreground probability of ``gfl_cls`` (bias init).
        test_cfg: the test-time settings (:class:`GFLTestConfig`), kept as ``self.test_cfg``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        reg_max: int = 16,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = OCTAVE_BASE_SCALE,
        scales_per_octave: int = 1,
        num_groups: int = 32,
        topk: int = 9,
        qfl_beta: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25,
        pad_size_divisor: int | None = 32,
        prior_prob: float = 0.01,
        test_cfg: GFLTestConfig | None = None,
    ) -> None:
        super().__init__()
        if scales_per_octave != 1:
            raise ValueError("GFLHead supports one anchor per location (scales_per_octave=1)")
        self.num_classes = num_classes
        self.test_cfg = test_cfg or GFLTestConfig()
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.stacked_convs = stacked_convs
        self.reg_max = reg_max
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = float(octave_base_scale)
        self.qfl_beta = qfl_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_dfl_weight = loss_dfl_weight
        self.pad_size_divisor = pad_size_divisor
        self.prior_prob = prior_prob
        self.assigner = ATSSAssigner(topk=topk)

        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(ConvGNReLU(chn, feat_channels, num_groups))
            self.reg_convs.append(ConvGNReLU(chn, feat_channels, num_groups))
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.integral = Integral(reg_max)
        self.init_weights()

    # ------------------------------------------------------------------ init / forward
    def init_weights(self) -> None:
        """MMDetection's init: every conv ``N(0, 0.01)`` with zero bias, GroupNorm
        ``(1, 0)``, ``gfl_cls`` bias ``-log((1 - p) / p)`` with ``p = prior_prob``
        (focal-loss prior), scales 1."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - self.prior_prob) / self.prior_prob))
        for s in self.scales:
            nn.init.constant_(s.scale, 1.0)

    def forward_single(self, x: Tensor, scale: Scale) -> tuple[Tensor, Tensor]:
        """One level: ``[N, in_channels, H, W]`` -> cls ``[N, C, H, W]`` logits and
        bbox ``[N, 4 * (reg_max + 1)], H, W]`` distribution logits (scaled)."""
        cls_feat = x
        reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        cls_score = self.gfl_cls(cls_feat)
        bbox_pred = scale(self.gfl_reg(reg_feat)).float()
        return cls_score, bbox_pred

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw outputs per level (see :meth:`forward_single`)."""
        if len(feats) != len(self.strides):
            raise ValueError(f"GFLHead expects {len(self.strides)} feature levels, got {len(feats)}")
        cls_scores, bbox_preds = [], []
        for x, scale in zip(feats, self.scales):
            c, b = self.forward_single(x, scale)
            cls_scores.append(c)
            bbox_preds.append(b)
        return cls_scores, bbox_preds

    # ------------------------------------------------------------------ anchors
    def get_anchors(
        self, feat_sizes: Sequence[tuple[int, int]], device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> list[Tensor]:
        """Anchors per level, ``[H_l * W_l, 4]`` x1,y1,x2,y2, row-major (y then x),
        centred at ``(x * s, y * s)`` with side ``octave_base_scale * s``."""
        anchors = []
        for (h, w), s in zip(feat_sizes, self.strides):
            half = 0.5 * self.octave_base_scale * s
            xs = torch.arange(int(w), device=device).to(dtype) * s
            ys = torch.arange(int(h), device=device).to(dtype) * s
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            cx, cy = xx.reshape(-1), yy.reshape(-1)
            anchors.append(torch.stack((cx - half, cy - half, cx + half, cy + half), dim=1))
        return anchors

    def valid_flags(
        self, feat_sizes: Sequence[tuple[int, int]], pad_shape: tuple[int, int], device: torch.device | str
    ) -> list[Tensor]:
        """Per level ``[H_l * W_l]`` bool: the location lies within
        ``ceil(pad_shape / stride)`` (MMDetection's ``AnchorGenerator.valid_flags``)."""
        flags = []
        for (h, w), s in zip(feat_sizes, self.strides):
            vh = min(int(math.ceil(pad_shape[0] / s)), int(h))
            vw = min(int(math.ceil(pad_shape[1] / s)), int(w))
            valid_y = torch.arange(int(h), device=device) < vh
            valid_x = torch.arange(int(w), device=device) < vw
            flags.append((valid_y[:, None] & valid_x[None, :]).reshape(-1))
        return flags

    def pad_shape(self, batch: Batch, index: int) -> tuple[int, int]:
        """Pad shape of image ``index`` as MMDetection's data preprocessor records it."""
        H, W = batch.input_shape
        if self.pad_size_divisor is None:
            return H, W
        d = self.pad_size_divisor
        h, w = batch.image_sizes[index]
        return min(-(-int(h) // d) * d, H), min(-(-int(w) // d) * d, W)

    @staticmethod
    def anchor_centers(anchors: Tensor) -> Tensor:
        """``[N, 4]`` anchors -> ``[N, 2]`` centres."""
        return torch.stack(((anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2), dim=-1)

    # ------------------------------------------------------------------ targets
    def get_targets_single(
        self, anchors: Tensor, valid: Tensor, num_level_anchors: list[int], gt_boxes: Tensor, gt_labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Training targets of one image.

        Args:
            anchors: ``[A, 4]`` all anchors, levels concatenated.
            valid: ``[A]`` bool valid flags.
            num_level_anchors: anchors per level (before the valid mask).
            gt_boxes: ``[G, 4]`` x1,y1,x2,y2 input pixels; gt_labels: ``[G]`` int64.

        Returns:
            labels ``[A]`` int64 (``num_classes`` = background), label_weights ``[A]``
            float (1 on valid anchors, 0 elsewhere), bbox_targets ``[A, 4]`` (gt box at
            positives, 0 elsewhere).
        """
        level_ids = torch.repeat_interleave(
            torch.arange(len(num_level_anchors), device=anchors.device),
            torch.tensor(num_level_anchors, device=anchors.device),
        )
        num_inside = torch.bincount(level_ids[valid], minlength=len(num_level_anchors)).tolist()
        inside_anchors = anchors[valid]
        result = self.assigner.assign(inside_anchors, num_inside, gt_boxes.to(anchors), gt_labels)

        num_anchors = anchors.shape[0]
        labels = torch.full((num_anchors,), self.num_classes, dtype=torch.long, device=anchors.device)
        label_weights = valid.to(anchors.dtype)
        bbox_targets = torch.zeros_like(anchors)
        inside_idx = valid.nonzero().squeeze(1)
        pos = result.pos_mask
        if bool(pos.any()):
            pos_idx = inside_idx[pos]
            labels[pos_idx] = result.labels[pos]
            bbox_targets[pos_idx] = gt_boxes.to(anchors)[result.gt_inds[pos]]
        return labels, label_weights, bbox_targets

    # ------------------------------------------------------------------ losses
    def flatten_outputs(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-level ``[N, C, H, W]`` / ``[N, 4(n+1), H, W]`` -> ``[N, A, C]`` /
        ``[N, A, 4(n+1)]`` with levels concatenated, locations row-major."""
        n = cls_scores[0].shape[0]
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, self.num_classes) for c in cls_scores], dim=1)
        reg = torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4 * (self.reg_max + 1)) for b in bbox_preds], dim=1)
        return cls, reg

    def loss(self, feats: Sequence[Tensor], batch: Batch) -> dict[str, Tensor]:
        """Forward and training losses; see :meth:`loss_by_outputs`."""
        cls_scores, bbox_preds = self(feats)
        return self.loss_by_outputs(cls_scores, bbox_preds, batch)

    def loss_by_outputs(
        self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], batch: Batch
    ) -> dict[str, Tensor]:
        """Losses from raw outputs, summed over levels as MMDetection reports them.

        Returns:
            ``{"loss_cls", "loss_bbox", "loss_dfl"}`` scalar tensors.
        """
        device = cls_scores[0].device
        feat_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        level_anchors = self.get_anchors(feat_sizes, device)
        num_level_anchors = [a.shape[0] for a in level_anchors]
        anchors = torch.cat(level_anchors)  # [A, 4]
        strides = torch.cat(
            [torch.full((n,), float(s), device=device) for n, s in zip(num_level_anchors, self.strides)]
        )  # [A]

        labels, label_weights, bbox_targets = [], [], []
        for i in range(len(batch)):
            valid = torch.cat(self.valid_flags(feat_sizes, self.pad_shape(batch, i), device))
            lab, lw, bt = self.get_targets_single(
                anchors, valid, num_level_anchors, batch.boxes[i].to(device), batch.labels[i].to(device)
            )
            labels.append(lab)
            label_weights.append(lw)
            bbox_targets.append(bt)
        labels_t = torch.cat(labels)  # [N*A]
        label_weights_t = torch.cat(label_weights)  # [N*A]
        bbox_targets_t = torch.cat(bbox_targets)  # [N*A, 4]
        num_imgs = len(batch)
        anchors_t = anchors.repeat(num_imgs, 1)
        strides_t = strides.repeat(num_imgs)

        cls_flat, reg_flat = self.flatten_outputs(cls_scores, bbox_preds)
        cls_flat = cls_flat.reshape(-1, self.num_classes)
        reg_flat = reg_flat.reshape(-1, 4 * (self.reg_max + 1))
        return self.compute_losses(cls_flat, reg_flat, anchors_t, strides_t, labels_t, label_weights_t, bbox_targets_t)

    def compute_losses(
        self,
        cls_flat: Tensor,
        reg_flat: Tensor,
        anchors: Tensor,
        strides: Tensor,
        labels: Tensor,
        label_weights: Tensor,
        bbox_targets: Tensor,
    ) -> dict[str, Tensor]:
        """QFL, GIoU and DFL over flattened anchors of the whole batch.

        Args:
            cls_flat: ``[M, C]`` logits; reg_flat: ``[M, 4(n+1)]`` distribution logits.
            anchors: ``[M, 4]``; strides: ``[M]`` stride of each anchor's level.
            labels: ``[M]`` (``C`` = background); label_weights: ``[M]``;
            bbox_targets: ``[M, 4]`` gt boxes in input pixels at positives.
        """
        # the losses in float32 also under autocast: QFL's IoU targets and the sums over every
        # anchor of the batch lose too much in bfloat16's 8-bit mantissa
        cls_flat, reg_flat = cls_flat.float(), reg_flat.float()
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        num_pos = _reduce_mean(torch.tensor(float(pos.numel()), device=cls_flat.device)).item()
        # MMDetection 3.3 divides by (num_pos + eps) unclamped; we clamp so a batch without
        # any gt box gives a finite loss (identical whenever the batch has a positive). Both
        # clamps below act on the per-process mean, so their floor is 1 / processes: then W
        # processes divide by exactly what one process would on the global batch (MMDetection's
        # clamp(min=1) of the mean makes the early-training step depend on the GPU count).
        floor = 1.0 / _world_size()
        num_pos = max(num_pos, floor)

        scores = cls_flat.new_zeros(labels.shape, dtype=torch.float32)
        if pos.numel() > 0:
            pos_strides = strides[pos][:, None]
            centers = self.anchor_centers(anchors[pos]) / pos_strides  # stride units
            weight = cls_flat.detach().sigmoid().max(dim=1).values[pos]  # [P]
            pos_reg = reg_flat[pos]  # [P, 4(n+1)]
            pred_dist = self.integral(pos_reg)  # [P, 4]
            pred_boxes = distance2bbox(centers, pred_dist)
            target_boxes = bbox_targets[pos] / pos_strides
            scores[pos] = aligned_iou(pred_boxes.detach(), target_boxes)
            target_dist = bbox2distance(centers, target_boxes, max_dis=self.reg_max).reshape(-1)
            loss_bbox = (giou_loss(pred_boxes, target_boxes) * weight).sum() / (1.0 + AVG_EPS)
            loss_dfl = (
                distribution_focal_loss(pos_reg.reshape(-1, self.reg_max + 1), target_dist)
                * weight[:, None].expand(-1, 4).reshape(-1)
            ).sum() / (4.0 + AVG_EPS)
            weight_sum = weight.sum()
        else:
            loss_bbox = reg_flat.sum() * 0
            loss_dfl = reg_flat.sum() * 0
            weight_sum = reg_flat.new_tensor(0.0)
        weight_avg = _reduce_mean(weight_sum).clamp(min=floor).item()

        qfl = quality_focal_loss(cls_flat, labels, scores, beta=self.qfl_beta)
        loss_cls = (qfl * label_weights).sum() / (num_pos + AVG_EPS)
        return {
            "loss_cls": self.loss_cls_weight * loss_cls,
            "loss_bbox": self.loss_bbox_weight * loss_bbox / weight_avg,
            "loss_dfl": self.loss_dfl_weight * loss_dfl / weight_avg,
        }

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(
        self,
        feats: Sequence[Tensor],
        batch: Batch,
    ) -> list[Detections]:
        """Forward and detections per image, boxes in input pixels (no rescale), with ``self.test_cfg``."""
        cls_scores, bbox_preds = self(feats)
        return self.predict_by_outputs(cls_scores, bbox_preds, batch)

    @torch.no_grad()
    def predict_by_outputs(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        batch: Batch,
    ) -> list[Detections]:
        """Detections from raw outputs with ``self.test_cfg``; see the module docstring for the steps."""
        cfg = self.test_cfg
        device = cls_scores[0].device
        feat_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        level_anchors = self.get_anchors(feat_sizes, device, cls_scores[0].dtype)
        results = []
        for i in range(cls_scores[0].shape[0]):
            results.append(
                self.predict_single(
                    [c[i] for c in cls_scores],
                    [b[i] for b in bbox_preds],
                    level_anchors,
                    tuple(batch.image_sizes[i]),
                    cfg.score_thr,
                    cfg.nms_iou,
                    cfg.max_per_img,
                    cfg.nms_pre,
                )
            )
        return results

    def predict_single(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        level_anchors: Sequence[Tensor],
        image_size: tuple[int, int],
        score_thr: float,
        nms_iou: float,
        max_per_img: int,
        nms_pre: int,
    ) -> Detections:
        """One image: ``cls_scores[l]`` ``[C, H, W]``, ``bbox_preds[l]``
        ``[4(n+1), H, W]``, ``level_anchors[l]`` ``[H*W, 4]``, ``image_size`` ``(h, w)``."""
        boxes_l, scores_l, labels_l = [], [], []
        for cls, reg, anchors, stride in zip(cls_scores, bbox_preds, level_anchors, self.strides):
            scores = cls.permute(1, 2, 0).reshape(-1, self.num_classes).sigmoid()  # [HW, C]
            dists = self.integral(reg.permute(1, 2, 0).reshape(-1, 4 * (self.reg_max + 1))) * stride
            scores, labels, keep = filter_scores_and_topk(scores, score_thr, nms_pre)
            boxes = distance2bbox(self.anchor_centers(anchors[keep]), dists[keep], max_shape=image_size)
            boxes_l.append(boxes)
            scores_l.append(scores)
            labels_l.append(labels)
        boxes = torch.cat(boxes_l)
        scores = torch.cat(scores_l)
        labels = torch.cat(labels_l)
        # min_bbox_size=0: drop boxes of zero width or height.
        wh = boxes[:, 2:] - boxes[:, :2]
        ok = (wh[:, 0] > 0) & (wh[:, 1] > 0)
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        if boxes.numel() == 0:
            return Detections.empty(boxes.device)
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
        return Detections(boxes=boxes[keep].float(), scores=scores[keep].float(), labels=labels[keep].long())


def filter_scores_and_topk(scores: Tensor, score_thr: float, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the (location, class) pairs with ``score > score_thr``, then the ``topk``
    highest (MMDetection's ``filter_scores_and_topk``).

    Args:
        scores: ``[L, C]``.

    Returns:
        scores ``[K]`` descending, labels ``[K]`` class index, locations ``[K]``.
    """
    valid = scores > score_thr
    kept = scores[valid]
    idxs = valid.nonzero()  # [V, 2] (location, class)
    k = min(topk, idxs.shape[0]) if topk > 0 else idxs.shape[0]
    kept, order = kept.sort(descending=True)
    top = idxs[order[:k]]
    return kept[:k], top[:, 1], top[:, 0]
