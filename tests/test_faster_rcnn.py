"""Faster R-CNN heads: mmdet parity of names/shapes, losses, prediction, class-specific
regression, determinism."""
from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline.models.faster_rcnn import (
    FasterRCNNHeads,
    MMDetAnchorGenerator,
    MMDetRoIAlign,
    max_iou_assign,
)
from pipeline.models.mmdet_names import to_mmdet_name
from pipeline.structures import Batch, Detections

from conftest import reference_fixture

INPUT_HW = (128, 256)
STRIDES = (4, 8, 16, 32, 64)
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
# Narrow FPN/FC widths and fewer samples keep the CPU training tests fast (the 3x3 RPN
# conv backward dominates at 256 channels); the layout is unchanged.
FAST_CHANNELS = 64
FAST = dict(
    in_channels=FAST_CHANNELS,
    fc_out_channels=64,
    roi_num_samples=128,
    rpn_nms_pre=(500, 300),
    rpn_max_per_img=(300, 300),
)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(
    boxes: list[list[list[float]]],
    labels: list[list[int]],
    image_sizes: list[tuple[int, int]] | None = None,
) -> Batch:
    n = len(boxes)
    sizes = image_sizes or [INPUT_HW] * n
    return Batch(
        images=torch.zeros(n, 3, *INPUT_HW),
        boxes=[torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        labels=[torch.tensor(lab, dtype=torch.int64) for lab in labels],
        ignore_boxes=[torch.zeros(0, 4) for _ in range(n)],
        image_ids=list(range(n)),
        scale_factors=torch.ones(n, 2),
        flipped=torch.zeros(n, dtype=torch.bool),
        image_sizes=sizes,
        orig_sizes=sizes,
    )


def make_feats(n: int, requires_grad: bool = False, channels: int = 256) -> list[torch.Tensor]:
    """Random ``P2..P6`` for an ``INPUT_HW`` input: ``[n, channels, H/s, W/s]``."""
    h, w = INPUT_HW
    return [torch.randn(n, channels, h // s, w // s, requires_grad=requires_grad) for s in STRIDES]


GT_BOXES = [[10.0, 20.0, 60.0, 90.0], [100.0, 30.0, 220.0, 120.0], [150.0, 10.0, 190.0, 50.0]]


def two_image_batch() -> Batch:
    return make_batch([GT_BOXES, GT_BOXES[:1]], [[0, 1, 2], [2]], [(128, 256), (120, 200)])


def test_state_dict_matches_mmdet_fixture() -> None:
    models = json.loads(reference_fixture("mmdet/mmdet330_models_3cls.json").read_text())["models"]
    fixture = models["faster_rcnn_r18"]["state_dict"]
    expected = {k: list(v) for k, v in fixture.items() if k.startswith(("rpn_head.", "roi_head."))}
    heads = FasterRCNNHeads(num_classes=3)
    ours = {}
    for key, tensor in heads.state_dict().items():
        name = to_mmdet_name(f"head.{key}", "faster_rcnn")
        assert name is not None, f"no mmdet rule for {key}"
        ours[name] = list(tensor.shape)
    assert ours == expected
    n_params = sum(p.numel() for p in heads.parameters())
    assert n_params == sum(math.prod(s) for s in expected.values()) == 14_506_015
    assert heads.roi_head.box_predictor.bbox_pred.out_features == 4 * 3


def test_anchors_fixed_strides_and_sizes() -> None:
    gen = MMDetAnchorGenerator()
    # 96 x 160 input: P5 is 3 x 5 and P6 2 x 3, so "input // grid" would give stride 48/53.
    feats = [torch.zeros(1, 1, -(-96 // s), -(-160 // s)) for s in STRIDES]
    anchors = gen(feats)
    for level, (a, s) in enumerate(zip(anchors, STRIDES)):
        h, w = feats[level].shape[-2:]
        assert a.shape == (h * w * 3, 4)
        side = torch.sqrt((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))
        torch.testing.assert_close(side, torch.full_like(side, 8.0 * s))
        centres = (a[:, :2] + a[:, 2:]) / 2
        assert float(centres[-1, 0]) == (w - 1) * s and float(centres[-1, 1]) == (h - 1) * s
    # ratio h/w = 0.5 first, not rounded: w = 32 / sqrt(0.5)
    torch.testing.assert_close(anchors[0][0, 2] - anchors[0][0, 0], torch.tensor(32 / math.sqrt(0.5)))


def test_roi_level_mapping_is_mmdet_finest_scale() -> None:
    pool = MMDetRoIAlign()
    sides = torch.tensor([10.0, 56.0, 111.0, 112.0, 224.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    assert pool.map_roi_levels(boxes).tolist() == [0, 0, 0, 1, 2, 3, 3]


def test_max_iou_assign_low_quality_needs_min_pos_iou() -> None:
    iou = torch.tensor([[0.5, 0.2, 0.0, 0.8], [0.1, 0.25, 0.5, 0.0]])
    out = max_iou_assign(iou, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
    # box 0: in between thresholds -> ignore; box 1: neg; box 2: GT1's best (0.5 >= 0.3);
    # box 3: >= 0.7 -> GT0.
    assert out.tolist() == [-1, 0, 2, 1]
    weak = max_iou_assign(iou * 0.5, 0.7, 0.3, 0.3, True)  # GT maxima 0.4 / 0.25
    assert weak.tolist() == [0, 0, 0, 1]
    assert max_iou_assign(torch.zeros(0, 3), 0.7, 0.3, 0.3, True).tolist() == [0, 0, 0]


def test_losses_finite_and_backprop_into_features() -> None:
    torch.manual_seed(0)
    heads = FasterRCNNHeads(num_classes=3, **FAST)
    feats = make_feats(2, requires_grad=True, channels=FAST_CHANNELS)
    losses = heads.loss(feats, two_image_batch())
    assert set(losses) == LOSS_KEYS
    for key, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), key
        assert float(value.detach()) > 0, key
    sum(losses.values()).backward()
    # P2-P5 feed the RPN and RoIAlign; P6 only the RPN, so it gets a gradient only when
    # one of its 24 anchors per image is among the 256 sampled (random): check wiring.
    for level, f in enumerate(feats[:4]):
        assert f.grad is not None and float(f.grad.abs().sum()) > 0, f"P{level + 2}"
    assert feats[4].grad is not None


def test_no_gt_images_train() -> None:
    torch.manual_seed(0)
    heads = FasterRCNNHeads(num_classes=3, **FAST)
    for batch in (make_batch([[], GT_BOXES], [[], [0, 1, 2]]), make_batch([[]], [[]])):
        feats = make_feats(len(batch), requires_grad=True, channels=FAST_CHANNELS)
        losses = heads.loss(feats, batch)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert float(feats[0].grad.abs().sum()) > 0
    assert float(losses["loss_rpn_bbox"].detach()) == 0.0 and float(losses["loss_bbox"].detach()) == 0.0


def test_predict_boxes_inside_image() -> None:
    torch.manual_seed(0)
    heads = FasterRCNNHeads(
        num_classes=3, in_channels=FAST_CHANNELS, fc_out_channels=64, rpn_nms_pre=(500, 500)
    ).eval()
    # fresh fc_cls (std 0.01): all 4 softmax scores ~0.25 > score_thr, so the top-100 cap binds
    batch = two_image_batch()
    dets = heads.predict(make_feats(2, channels=FAST_CHANNELS), batch)
    assert len(dets) == 2
    for det, (h, w) in zip(dets, batch.image_sizes):
        assert isinstance(det, Detections)
        assert 0 < len(det) <= 100
        b = det.boxes
        assert bool((b[:, 0] >= 0).all() and (b[:, 1] >= 0).all())
        assert bool((b[:, 2] <= w).all() and (b[:, 3] <= h).all())
        assert bool((b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all())
        assert det.labels.dtype == torch.int64 and bool(((det.labels >= 0) & (det.labels < 3)).all())
        assert bool(((det.scores > 0.05) & (det.scores <= 1)).all())
        assert bool((det.scores[:-1] >= det.scores[1:]).all())
    assert len(dets[0]) == 100


def test_regression_uses_deltas_of_the_detected_class() -> None:
    torch.manual_seed(0)
    # NMS disabled (IoU 1.0) and no cap: every proposal yields one detection per class.
    heads = FasterRCNNHeads(
        num_classes=3,
        in_channels=FAST_CHANNELS,
        fc_out_channels=32,
        rpn_nms_pre=(100, 100),
        test_nms_iou=1.0,
        test_max_per_img=10**6,
    ).eval()
    fc_reg = heads.roi_head.box_predictor.bbox_pred
    torch.nn.init.zeros_(fc_reg.weight)
    torch.nn.init.zeros_(fc_reg.bias)
    batch = make_batch([[]], [[]])
    feats = make_feats(1, channels=FAST_CHANNELS)
    (before,) = heads.predict(feats, batch)
    with torch.no_grad():
        fc_reg.bias[4] = 1.0  # class 1, dx = 1.0 * std 0.1 -> shift right by 0.1 * width
    (after,) = heads.predict(feats, batch)
    assert len(before) == len(after) > 0
    assert torch.equal(before.labels, after.labels) and torch.equal(before.scores, after.scores)
    moved = before.labels == 1
    assert 0 < int(moved.sum()) < len(before)
    torch.testing.assert_close(after.boxes[~moved], before.boxes[~moved])
    b = before.boxes[moved]
    shift = 0.1 * (b[:, 2] - b[:, 0])
    expected = torch.stack([b[:, 0] + shift, b[:, 1], b[:, 2] + shift, b[:, 3]], dim=1)
    expected[:, 0::2] = expected[:, 0::2].clamp(max=INPUT_HW[1])
    torch.testing.assert_close(after.boxes[moved], expected, atol=1e-3, rtol=0)
    assert float((after.boxes[moved] - b).abs().max()) > 1.0


@pytest.mark.parametrize("seed", [0])
def test_same_seed_same_losses(seed: int) -> None:
    def run() -> dict[str, float]:
        torch.manual_seed(seed)
        heads = FasterRCNNHeads(num_classes=3, **FAST)
        losses = heads.loss(make_feats(2, channels=FAST_CHANNELS), two_image_batch())
        return {k: float(v.detach()) for k, v in losses.items()}

    assert run() == run()
