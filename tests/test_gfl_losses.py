"""Hand-checked GFL losses, integral decode, ATSS and gradient flow."""
from __future__ import annotations

import math

import torch

from conftest import plain_batch
from pipeline.models.atss import ATSSAssigner
from pipeline.models.gfl_head import GFLHead
from pipeline.models.gfl_losses import distribution_focal_loss, giou_loss, integral, quality_focal_loss
from pipeline.structures import Batch


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _batch(boxes: list[torch.Tensor], labels: list[torch.Tensor], hw: tuple[int, int]) -> Batch:
    return plain_batch(torch.zeros(len(boxes), 3, *hw), boxes, labels)


def _small_head(num_classes: int = 2) -> GFLHead:
    torch.manual_seed(0)
    return GFLHead(num_classes, in_channels=32, feat_channels=32, stacked_convs=2, num_groups=8)


def _feats(n: int, hw: tuple[int, int], channels: int = 32, requires_grad: bool = False) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [
        torch.randn(n, channels, -(-hw[0] // s), -(-hw[1] // s), requires_grad=requires_grad)
        for s in (8, 16, 32, 64, 128)
    ]


# --------------------------------------------------------------------------- QFL
def test_qfl_positive_is_bce_scaled() -> None:
    logit, y = 0.7, 0.4
    sigma = _sigmoid(logit)
    bce = -((1 - y) * math.log(1 - sigma) + y * math.log(sigma))
    expected = abs(y - sigma) ** 2 * bce
    out = quality_focal_loss(torch.tensor([[logit]]), torch.tensor([0]), torch.tensor([y]), beta=2.0)
    assert math.isclose(float(out[0]), expected, rel_tol=1e-5)


def test_qfl_negatives_and_other_classes() -> None:
    # anchor 0 positive for class 1 (y = 0.8); class 0 of it and anchor 1 (background) are y = 0
    logits = torch.tensor([[-1.0, 2.0], [0.5, -0.3]])
    out = quality_focal_loss(logits, torch.tensor([1, 2]), torch.tensor([0.8, 0.0]))

    def neg(x: float) -> float:
        s = _sigmoid(x)
        return s**2 * -math.log(1 - s)

    s = _sigmoid(2.0)
    pos = abs(0.8 - s) ** 2 * -(0.2 * math.log(1 - s) + 0.8 * math.log(s))
    assert math.isclose(float(out[0]), neg(-1.0) + pos, rel_tol=1e-5)
    assert math.isclose(float(out[1]), neg(0.5) + neg(-0.3), rel_tol=1e-5)


def test_qfl_zero_when_sigma_equals_target() -> None:
    logit = torch.tensor([[0.3]])
    y = torch.sigmoid(logit)[:, 0]
    out = quality_focal_loss(logit, torch.tensor([0]), y)
    assert float(out[0]) == 0.0


# --------------------------------------------------------------------------- DFL
def test_dfl_known_distribution() -> None:
    probs = torch.tensor([0.05, 0.1, 0.4, 0.3, 0.15])
    logits = probs.log()[None]  # softmax(log p) = p
    out = distribution_focal_loss(logits, torch.tensor([2.3]))
    expected = -(0.7 * math.log(0.4) + 0.3 * math.log(0.3))
    assert math.isclose(float(out[0]), expected, rel_tol=1e-5)


def test_dfl_integer_target_uses_one_bin() -> None:
    probs = torch.tensor([0.2, 0.5, 0.3])
    out = distribution_focal_loss(probs.log()[None], torch.tensor([1.0]))
    assert math.isclose(float(out[0]), -math.log(0.5), rel_tol=1e-5)


# --------------------------------------------------------------------------- GIoU
def test_giou_loss_by_hand() -> None:
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    # iou = 1 / 7, enclosing area 9, union 7: giou = 1/7 - 2/9
    out = giou_loss(pred, target)
    assert math.isclose(float(out[0]), 1 - (1 / 7 - 2 / 9), rel_tol=1e-5)
    assert abs(float(out[1])) < 1e-6


# --------------------------------------------------------------------------- integral decode
def test_integral_one_hot_is_bin_index() -> None:
    reg_max = 16
    for k in (0, 3, 16):
        logits = torch.zeros(1, 4 * (reg_max + 1))
        for side in range(4):
            logits[0, side * (reg_max + 1) + k] = 60.0
        torch.testing.assert_close(integral(logits, reg_max), torch.full((1, 4), float(k)))


def test_decode_one_hot_gives_k_times_stride() -> None:
    head = GFLHead(1, in_channels=32, feat_channels=32, stacked_convs=1, strides=(8,))
    n_bins = head.reg_max + 1
    cls = torch.full((1, 4, 4), -10.0)
    cls[0, 1, 2] = 5.0  # one confident location: row 1, column 2 -> anchor centre (16, 8)
    reg = torch.zeros(4 * n_bins, 4, 4)
    for side, k in enumerate((2, 3, 1, 4)):  # left, top, right, bottom in bins
        reg[side * n_bins + k] = 60.0
    anchors = head.get_anchors([(4, 4)], "cpu")
    det = head.predict_single([cls], [reg], anchors, (32, 32), 0.05, 0.6, 100, 1000)
    assert len(det) == 1
    # (16 - 2*8, 8 - 3*8, 16 + 1*8, 8 + 4*8) clipped to the 32x32 image
    torch.testing.assert_close(det.boxes[0], torch.tensor([0.0, 0.0, 24.0, 32.0]))
    assert int(det.labels[0]) == 0
    assert math.isclose(float(det.scores[0]), _sigmoid(5.0), rel_tol=1e-6)


# --------------------------------------------------------------------------- ATSS
def _square(cx: float, cy: float, side: float = 8.0) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def test_atss_hand_built_case() -> None:
    gt = torch.tensor([[0.0, 0.0, 40.0, 4.0]])  # thin box, centre (20, 2)
    anchors = torch.tensor(
        [
            _square(20, 2),  # 0: IoU 32/192 = 1/6, centre inside -> positive
            [16.0, -5.0, 24.0, 4.6],  # 1: IoU 32/204.8 = 0.156, centre y=-0.2 outside the gt
            _square(60, 2),  # 2-5: candidates without overlap
            _square(-20, 2),
            _square(20, 30),
            _square(20, -30),
            _square(100, 100),  # 6: not among the 6 nearest
        ]
    )
    # candidates (topk 6): IoUs [1/6, 0.15625, 0, 0, 0, 0]
    ious = [1 / 6, 32 / 204.8, 0, 0, 0, 0]
    mean = sum(ious) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in ious) / 5)
    assert ious[0] >= mean + std and ious[1] >= mean + std  # both pass the IoU threshold ...
    res = ATSSAssigner(topk=6).assign(anchors, [7], gt, torch.tensor([2]))
    # ... but anchor 1's centre lies outside the gt: only anchor 0 is positive.
    assert res.gt_inds.tolist() == [0, -1, -1, -1, -1, -1, -1]
    assert res.labels.tolist() == [2, -1, -1, -1, -1, -1, -1]


def test_atss_each_gt_gets_its_own_anchor() -> None:
    gts = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 10.0, 10.0]])
    anchors = torch.tensor([_square(4, 4), _square(6, 6), _square(50, 50)])
    # gt 0: IoUs [1, 36/92, 0] -> threshold mean + std = 0.968: only anchor 0; gt 1 alike.
    res = ATSSAssigner(topk=3).assign(anchors, [3], gts, torch.tensor([0, 1]))
    assert res.gt_inds.tolist() == [0, 1, -1]
    assert res.labels.tolist() == [0, 1, -1]


def test_atss_anchor_positive_for_two_gts_takes_highest_iou() -> None:
    gts = torch.tensor([[0.0, 0.0, 8.0, 9.0], [0.0, 0.0, 8.0, 8.0]])
    anchors = torch.tensor([_square(4, 4), _square(50, 50), _square(80, 80)])
    # anchor 0 passes for both gts (IoU 64/72 and 1, thresholds 0.81 and 0.91): gt 1 wins.
    res = ATSSAssigner(topk=3).assign(anchors, [3], gts, torch.tensor([0, 1]))
    assert res.gt_inds.tolist() == [1, -1, -1]
    assert res.labels.tolist() == [1, -1, -1]


def test_atss_no_gt_all_background() -> None:
    anchors = torch.tensor([_square(4, 4), _square(6, 6)])
    res = ATSSAssigner().assign(anchors, [2], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert res.gt_inds.tolist() == [-1, -1] and res.labels.tolist() == [-1, -1]


# --------------------------------------------------------------------------- head losses
def test_gt_free_image_all_background_finite_loss() -> None:
    head = _small_head()
    hw = (64, 96)
    feats = _feats(1, hw)
    sizes = [tuple(f.shape[-2:]) for f in feats]
    anchors = torch.cat(head.get_anchors(sizes, "cpu"))
    valid = torch.cat(head.valid_flags(sizes, hw, "cpu"))
    labels, weights, targets = head.get_targets_single(
        anchors, valid, [h * w for h, w in sizes], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    )
    assert bool((labels == head.num_classes).all()) and bool((targets == 0).all())
    losses = head.loss(feats, _batch([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], hw))
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert losses["loss_cls"].item() > 0
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_dfl"].item() == 0.0


def test_gradients_reach_features() -> None:
    head = _small_head()
    hw = (64, 96)
    feats = _feats(2, hw, requires_grad=True)
    batch = _batch(
        [torch.tensor([[10.0, 8.0, 50.0, 40.0]]), torch.zeros(0, 4)],
        [torch.tensor([1]), torch.zeros(0, dtype=torch.long)],
        hw,
    )
    losses = head.loss(feats, batch)
    assert losses["loss_bbox"].item() > 0 and losses["loss_dfl"].item() > 0
    sum(losses.values()).backward()
    for f in feats[:3]:
        assert f.grad is not None and float(f.grad.abs().sum()) > 0


@torch.no_grad()
def test_init_like_mmdet() -> None:
    head = _small_head()
    assert math.isclose(float(head.gfl_cls.bias[0]), -math.log(0.99 / 0.01), rel_tol=1e-6)
    assert float(head.gfl_reg.bias.abs().max()) == 0.0
    assert 0.005 < float(head.gfl_reg.weight.std()) < 0.02
    assert head.cls_convs[0].conv.bias is None
    assert all(float(s.scale) == 1.0 for s in head.scales)


def test_valid_flags_follow_per_image_pad_shape() -> None:
    head = _small_head()
    hw = (64, 96)
    batch = _batch([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], hw)
    batch.image_sizes = [(30, 40)]  # padded to (32, 64) by the divisor 32
    assert head.pad_shape(batch, 0) == (32, 64)
    flags = head.valid_flags([(8, 12)], head.pad_shape(batch, 0), "cpu")[0].reshape(8, 12)
    assert bool(flags[:4, :8].all()) and not bool(flags[4:].any()) and not bool(flags[:, 8:].any())
