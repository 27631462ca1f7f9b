"""The KD baselines GKD-BMFI is compared with: mimic, FGD, FGFI, DeFeat (docs/method.md, 'Baselines').

Each loss is pinned on tiny hand-computed tensors; masks are checked to sit on the boxes (at
the border and in the centre) and to follow a horizontal flip; gradients reach the student
only; FGD's GcBlocks train; FGFI's threshold is relative to each box's best anchor IoU.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import plain_batch
from pipeline.distill import defeat, fgd, fgfi, mimic
from pipeline.distill.base import KDContext
from pipeline.distill.defeat import DeFeat
from pipeline.distill.fgd import FGD, attention
from pipeline.distill.fgfi import FGFI
from pipeline.distill.masks import (
    anchor_iou_masks,
    binary_box_mask,
    box_cell_ranges,
    fgd_scale_masks,
    roi_levels,
)
from pipeline.distill.mimic import Mimic
from pipeline.errors import UserError
from pipeline.structures import Batch

GFL_STRIDES = (8, 16, 32, 64, 128)
FRCNN_STRIDES = (4, 8, 16, 32, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(boxes: list[torch.Tensor], hw: tuple[int, int]) -> Batch:
    return plain_batch(torch.zeros(len(boxes), 3, *hw), boxes,
                       [torch.zeros(len(b), dtype=torch.long) for b in boxes])


def _feats(n: int, hw: tuple[int, int], strides: tuple[int, ...], channels: int, seed: int,
           requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, -(-hw[0] // s), -(-hw[1] // s), generator=g).requires_grad_(requires_grad)
            for s in strides]


def _methods(channels: int) -> list:
    """Every baseline, with the adaptation layers off where that makes the loss a pure distance."""
    return [Mimic(), FGD(channels=channels), FGFI(adapt=False, channels=channels),
            DeFeat(adapt=False, channels=channels)]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


# --------------------------------------------------------------------------- masks
def test_box_cells_at_border_and_centre() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],      # top-left border: cells 0..1
                          [20.0, 20.0, 32.0, 32.0],    # bottom-right border: cells 2..3
                          [12.0, 12.0, 20.0, 20.0],    # centre: cells 1..2
                          [16.0, 16.0, 16.0, 16.0]])   # degenerate: the cell it lies in
    r = box_cell_ranges(boxes, 8, (4, 4))
    assert r.tolist() == [[0, 0, 2, 2], [2, 2, 4, 4], [1, 1, 3, 3], [2, 2, 3, 3]]
    mask = binary_box_mask([boxes[1:2]], 8, (4, 4))[0, 0]
    assert mask.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_fgd_masks_on_a_wide_box_are_not_transposed() -> None:
    # a 3-cell-wide, 1-cell-high box on a 2x4 map: the released code's [x-range, y-range]
    # indexing of an H x W map would put it in a column
    fg, bg = fgd_scale_masks([torch.tensor([[8.0, 0.0, 32.0, 8.0]])], 8, (2, 4))
    third = 1.0 / 3.0
    assert torch.allclose(fg[0, 0], torch.tensor([[0.0, third, third, third], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(bg[0, 0], torch.tensor([[0.2, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2]]))


def test_fgd_masks_smallest_box_wins_and_background_sums_to_one() -> None:
    big = [0.0, 0.0, 32.0, 32.0]   # 4x4 cells -> 1/16
    small = [8.0, 8.0, 16.0, 16.0]  # 1 cell -> 1
    fg, bg = fgd_scale_masks([torch.tensor([big, small]), torch.zeros(0, 4)], 8, (4, 6))
    assert fg.shape == (2, 1, 4, 6)
    assert float(fg[0, 0, 1, 1]) == 1.0
    assert float(fg[0, 0, 0, 0]) == pytest.approx(1 / 16)
    assert float(fg[0, 0, 0, 4]) == 0.0
    assert float(bg[0].sum()) == pytest.approx(1.0) and float(bg[0, 0, :, :4].sum()) == 0.0
    assert float(fg[1].sum()) == 0.0 and torch.allclose(bg[1], torch.full((1, 4, 6), 1 / 24))


def test_box_masks_follow_a_horizontal_flip() -> None:
    width = 64
    boxes = torch.tensor([[3.0, 5.0, 21.0, 30.0], [40.0, 0.0, 64.0, 17.0]])
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    for stride in (8, 16):
        size = (48 // stride, width // stride)
        assert torch.equal(binary_box_mask([flipped], stride, size), binary_box_mask([boxes], stride, size).flip(-1))
        fg, bg = fgd_scale_masks([boxes], stride, size)
        fg_f, bg_f = fgd_scale_masks([flipped], stride, size)
        assert torch.equal(fg_f, fg.flip(-1)) and torch.equal(bg_f, bg.flip(-1))


def test_roi_levels_follow_mmdetection_mapping() -> None:
    boxes = torch.tensor([[0.0, 0.0, 111.0, 111.0], [0.0, 0.0, 112.0, 112.0], [0.0, 0.0, 224.0, 224.0],
                          [0.0, 0.0, 2000.0, 2000.0]])
    assert roi_levels(boxes, 5).tolist() == [0, 1, 2, 4]


# --------------------------------------------------------------------------- FGFI mask
def _gfl_anchor(x: int, y: int, stride: int = 8) -> tuple[float, ...]:
    cx, cy, half = x * stride, y * stride, 4 * stride
    return (cx - half, cy - half, cx + half, cy + half)


@pytest.mark.parametrize("box", [(0.0, 0.0, 64.0, 64.0), (16.0, 16.0, 48.0, 48.0)])
@pytest.mark.parametrize("psi", [0.5, 0.7])
def test_fgfi_mask_is_psi_times_best_iou(box: tuple[float, ...], psi: float) -> None:
    # GFL: one 64x64 anchor per cell of an 8x8 stride-8 map, centred on (8x, 8y)
    method = FGFI(psi=psi, adapt=False, num_levels=1, channels=1)
    feats = [torch.zeros(1, 1, 8, 8)]
    mask = method.imitation_masks(feats, _batch([torch.tensor([box])], (64, 64)), KDContext("gfl", (8,), {}))[0]
    ious = [[_iou(box, _gfl_anchor(x, y)) for x in range(8)] for y in range(8)]
    best = max(max(row) for row in ious)
    expected = torch.tensor([[iou > psi * best for iou in row] for row in ious])
    assert torch.equal(mask[0, 0].bool(), expected)
    if box[2] - box[0] == 64:  # the box is an anchor: best IoU 1, a diamond of radius 2 at psi 0.5
        assert best == 1.0
        radius = 2 if psi == 0.5 else 1
        diamond = [[abs(x - 4) + abs(y - 4) <= radius for x in range(8)] for y in range(8)]
        assert mask[0, 0].bool().tolist() == diamond
    else:  # best IoU 0.25 < psi: an absolute threshold would mask nothing
        assert best == 0.25 and int(mask.sum()) > 0


@pytest.mark.parametrize("detector", ["gfl", "faster_rcnn"])
def test_fgfi_mask_follows_a_horizontal_flip(detector: str) -> None:
    # anchors sit on cell corners (x * s), so the mirrored anchor of column j is column W - j:
    # the flipped box's mask is the mirrored mask shifted by one column
    width, stride = 128, 8
    box = torch.tensor([[30.0, 20.0, 70.0, 60.0]])
    flipped = torch.tensor([[width - 70.0, 20.0, width - 30.0, 60.0]])
    feats = [torch.zeros(1, 1, 10, width // stride)]
    anchors = fgfi.level_anchors(detector, (stride,), feats)
    mask = anchor_iou_masks(box, anchors, [(10, 16)], 0.5)[0]
    mask_f = anchor_iou_masks(flipped, anchors, [(10, 16)], 0.5)[0]
    assert int(mask.sum()) > 0 and not bool(mask[:, 0].any()) and not bool(mask[:, -1].any())
    assert torch.equal(mask_f, torch.roll(mask.flip(-1), 1, dims=-1))


def test_fgfi_mask_faster_rcnn_uses_the_ratio_anchors() -> None:
    # a tall box equal to the ratio-2 anchor (h/w = 2) of stride 4, scale 8, at cell (8, 8)
    side = 32.0
    w, h = side / math.sqrt(2.0), side * math.sqrt(2.0)
    box = torch.tensor([[32 - w / 2, 32 - h / 2, 32 + w / 2, 32 + h / 2]])
    sizes = [(16, 16)]
    anchors = fgfi.level_anchors("faster_rcnn", (4,), [torch.zeros(1, 1, 16, 16)])
    assert anchors[0].shape == (16 * 16 * 3, 4)
    mask = anchor_iou_masks(box, anchors, sizes, psi=0.6)[0]
    shapes = [(side / math.sqrt(r), side * math.sqrt(r)) for r in (0.5, 1.0, 2.0)]  # (w, h) per ratio h/w
    b = tuple(box[0].tolist())
    expected = [[any(_iou(b, (4 * x - aw / 2, 4 * y - ah / 2, 4 * x + aw / 2, 4 * y + ah / 2)) > 0.6
                     for aw, ah in shapes) for x in range(16)] for y in range(16)]
    assert mask.tolist() == expected
    # the tall anchors reach 2 cells up and down but 1 cell sideways; the square (IoU 0.55)
    # and wide (0.33) anchors at the box centre stay below 0.6
    rows, cols = mask.nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (6, 10, 7, 9)


def test_fgfi_mask_roi_assignment_keeps_each_box_on_one_level() -> None:
    feats = [torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8)]
    sizes = [(16, 16), (8, 8)]
    anchors = fgfi.level_anchors("gfl", (8, 16), feats)
    # sqrt(area) 90 -> RoI level 0; best IoU 0.506 (a 64 px anchor inside it), the 128 px
    # anchors of level 1 reach 0.494 > psi * best
    box = torch.tensor([[0.0, 0.0, 90.0, 90.0]])
    masks_roi = anchor_iou_masks(box, anchors, sizes, 0.5, level_assign="roi")
    masks_all = anchor_iou_masks(box, anchors, sizes, 0.5, level_assign="all")
    assert int(masks_roi[0].sum()) > 0 and int(masks_roi[1].sum()) == 0
    assert torch.equal(masks_roi[0], masks_all[0])
    assert int(masks_all[1].sum()) > 0


# --------------------------------------------------------------------------- losses, hand-computed
def test_mimic_value() -> None:
    s = [torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 1)]
    t = [torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[2.0]]]])]
    out = Mimic(weight=2.0)(s, t, _batch([torch.zeros(0, 4)], (8, 16)), KDContext("gfl", (8, 16), {}))
    # level means: (1 + 9) / 2 = 5 and 4; mean over levels 4.5; weight 2
    assert float(out["kd_mimic_mse"]) == pytest.approx(9.0)


def test_fgd_attention_value() -> None:
    t = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    a_s, a_c = attention(t, 0.5)
    e = math.e
    z = e**2 + 2 + e  # spatial logits mean|T| / 0.5 = 2, 0, 0, 1
    assert torch.allclose(a_s.flatten(), torch.tensor([4 * e**2 / z, 4 / z, 4 / z, 4 * e / z]))
    zc = e + e**0.5  # channel logits 0.5 / 0.5 = 1 and 0.25 / 0.5 = 0.5
    assert torch.allclose(a_c.flatten(), torch.tensor([2 * e / zc, 2 * e**0.5 / zc]))


def test_fgd_loss_value() -> None:
    t = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    s = torch.zeros_like(t)
    batch = _batch([torch.tensor([[0.0, 0.0, 8.0, 8.0]])], (16, 16))  # covers cell (0, 0) only
    method = FGD(temperature=0.5, alpha=1.0, beta=1.0, gamma=1.0, lam=1.0, num_levels=1, channels=2)
    out = method([s], [t], batch, KDContext("gfl", (8,), {}))
    e = math.e
    z, zc = e**2 + 2 + e, e + e**0.5
    a_s = [4 * e**2 / z, 4 / z, 4 / z, 4 * e / z]
    a_c = [2 * e / zc, 2 * e**0.5 / zc]
    # fg: cell (0,0), scale 1, both channels differ by 1: a_s00 * (a_c0 + a_c1) = 2 a_s00
    assert float(out["kd_fgd_fg"]) == pytest.approx(2 * a_s[0], rel=1e-5)
    # bg: cell (1,1), channel 0 differs by 1, background scale 1/3
    assert float(out["kd_fgd_bg"]) == pytest.approx(a_s[3] * a_c[0] / 3, rel=1e-5)
    # attention: the student's maps are all ones (flat logits)
    assert float(out["kd_fgd_attention"]) == pytest.approx(sum(abs(v - 1) for v in a_s + a_c), rel=1e-5)
    # relation: both GcBlocks start as the identity -> sum (T - S)^2 = 3
    assert float(out["kd_fgd_relation"].detach()) == pytest.approx(3.0, rel=1e-5)


def test_fgfi_loss_value() -> None:
    t = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8) / 10
    s = torch.zeros_like(t)
    batch = _batch([torch.tensor([[0.0, 0.0, 64.0, 64.0]])], (64, 64))  # diamond of 13 cells at psi 0.5
    out = FGFI(weight=0.5, psi=0.5, adapt=False, num_levels=1, channels=1)([s], [t], batch,
                                                                           KDContext("gfl", (8,), {}))
    cells = [(y, x) for y in range(8) for x in range(8) if abs(x - 4) + abs(y - 4) <= 2]
    assert len(cells) == 13
    expected = 0.5 * sum(float(t[0, 0, y, x]) ** 2 for y, x in cells) / (2 * 13)
    assert float(out["kd_fgfi_imitation"]) == pytest.approx(expected, rel=1e-5)


def test_defeat_loss_value() -> None:
    t = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    s = torch.zeros_like(t)
    batch = _batch([torch.tensor([[0.0, 0.0, 8.0, 8.0]])], (16, 16))
    method = DeFeat(fg_weight=3.0, bg_weight=12.0, adapt=False, num_levels=1, channels=1)
    out = method([s], [t], batch, KDContext("gfl", (8,), {}))
    assert float(out["kd_defeat_fg"]) == pytest.approx(3.0 * 1.0 / 2)        # 1^2 / (2 * 1)
    assert float(out["kd_defeat_bg"]) == pytest.approx(12.0 * 29.0 / 6)     # (4 + 9 + 16) / (2 * 3)


def test_defeat_roi_assignment_puts_small_boxes_on_the_finest_level() -> None:
    t = [torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]
    s = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    batch = _batch([torch.tensor([[0.0, 0.0, 8.0, 8.0]])], (16, 16))
    ctx = KDContext("gfl", (8, 16), {})
    roi = DeFeat(fg_weight=1.0, bg_weight=1.0, adapt=False, num_levels=2, channels=1)(s, t, batch, ctx)
    every = DeFeat(fg_weight=1.0, bg_weight=1.0, adapt=False, level_assign="all", num_levels=2, channels=1)(
        s, t, batch, ctx)
    # roi: level 0 fg 1/2, bg 3/6; level 1 has no box: fg 0, bg 1/2. "all": level 1 is all foreground.
    assert float(roi["kd_defeat_fg"]) == pytest.approx((0.5 + 0.0) / 2)
    assert float(roi["kd_defeat_bg"]) == pytest.approx((0.5 + 0.5) / 2)
    assert float(every["kd_defeat_fg"]) == pytest.approx((0.5 + 0.5) / 2)
    assert float(every["kd_defeat_bg"]) == pytest.approx((0.5 + 0.0) / 2)


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("detector,strides", [("gfl", GFL_STRIDES), ("faster_rcnn", FRCNN_STRIDES)])
def test_zero_loss_when_student_equals_teacher(detector: str, strides: tuple[int, ...]) -> None:
    hw = (64, 96)
    feats = _feats(2, hw, strides, 16, seed=0)
    batch = _batch([torch.tensor([[4.0, 6.0, 40.0, 50.0]]), torch.tensor([[60.0, 0.0, 96.0, 30.0]])], hw)
    ctx = KDContext(detector, strides, {})
    for method in _methods(16):
        out = method([f.clone() for f in feats], feats, batch, ctx)
        for key, value in out.items():
            assert float(value.detach()) == pytest.approx(0.0, abs=1e-6), key
    # with the (learnt) adaptation layers FGFI and DeFeat are not zero by construction
    for method in (FGFI(channels=16), DeFeat(channels=16)):
        assert float(sum(method([f.clone() for f in feats], feats, batch, ctx).values()).detach()) > 0


@pytest.mark.parametrize("detector,strides", [("gfl", GFL_STRIDES), ("faster_rcnn", FRCNN_STRIDES)])
def test_gradients_reach_student_not_teacher(detector: str, strides: tuple[int, ...]) -> None:
    hw = (64, 96)
    batch = _batch([torch.tensor([[4.0, 6.0, 40.0, 50.0]]), torch.zeros(0, 4)], hw)
    ctx = KDContext(detector, strides, {})
    for method in _methods(16) + [FGFI(channels=16), DeFeat(channels=16)]:
        student = _feats(2, hw, strides, 16, seed=1, requires_grad=True)
        teacher = _feats(2, hw, strides, 16, seed=2, requires_grad=True)
        out = method(student, teacher, batch, ctx)
        assert all(key.startswith(f"kd_{method.name}_") and value.ndim == 0 for key, value in out.items())
        sum(out.values()).backward()
        assert all(t.grad is None for t in teacher), method.name
        assert all(s.grad is not None and bool(torch.isfinite(s.grad).all()) for s in student), method.name
        assert float(student[0].grad.abs().sum()) > 0, method.name


def test_losses_are_per_image_so_a_duplicated_batch_gives_the_same_value() -> None:
    hw = (64, 96)
    one = _feats(1, hw, GFL_STRIDES, 16, seed=3)
    two = _feats(1, hw, GFL_STRIDES, 16, seed=4)
    box = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    ctx = KDContext("gfl", GFL_STRIDES, {})
    for method in _methods(16):
        single = method(one, two, _batch([box], hw), ctx)
        double = method([torch.cat([f, f]) for f in one], [torch.cat([f, f]) for f in two], _batch([box, box], hw),
                        ctx)
        for key in single:
            assert float(double[key].detach()) == pytest.approx(float(single[key].detach()), rel=1e-5), key


def test_fgd_gcblocks_receive_gradient_and_train() -> None:
    hw = (32, 32)
    method = FGD(lam=1.0, num_levels=2, channels=16)
    ctx = KDContext("gfl", (8, 16), {})
    batch = _batch([torch.tensor([[0.0, 0.0, 16.0, 16.0]])], hw)
    student = _feats(1, hw, (8, 16), 16, seed=5, requires_grad=True)
    teacher = _feats(1, hw, (8, 16), 16, seed=6)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    names = [name for name, _ in method.named_parameters()]
    assert any(n.startswith("student_gc.1.") for n in names) and any(n.startswith("teacher_gc.1.") for n in names)
    method(student, teacher, batch, ctx)["kd_fgd_relation"].backward()
    # the zero-initialised output convs get gradient first (both sides, every level)
    for side in ("student_gc", "teacher_gc"):
        for level in range(2):
            last = getattr(method, side)[level].transform[-1]
            assert float(last.weight.grad.abs().sum()) > 0
    opt.step()
    opt.zero_grad()
    method(student, teacher, batch, ctx)["kd_fgd_relation"].backward()
    for name, param in method.named_parameters():
        if name.endswith("context.bias"):  # a constant shift of softmax logits: zero gradient by design
            continue
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name


def test_adaptation_layers_are_trainable_parameters() -> None:
    assert len(list(FGFI(adapt=False).parameters())) == 0 and len(list(DeFeat(adapt=False).parameters())) == 0
    for method in (FGFI(channels=8), DeFeat(channels=8)):
        params = list(method.parameters())
        assert len(params) == 10  # a 3x3 conv (weight, bias) per level
        assert float(params[0].detach().abs().max()) <= 2e-4  # released init: N(0, 1e-4) truncated
    assert len(list(Mimic().parameters())) == 0


def test_defaults_are_the_published_weights_and_build() -> None:
    assert fgd.DEFAULTS["gfl"] == {"temperature": 0.5, "alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lam": 5e-6}
    assert fgd.DEFAULTS["faster_rcnn"] == {"temperature": 0.5, "alpha": 5e-5, "beta": 2.5e-5, "gamma": 5e-5,
                                           "lam": 5e-7}
    assert fgfi.DEFAULTS["gfl"]["psi"] == 0.5 and fgfi.DEFAULTS["faster_rcnn"]["psi"] == 0.5
    for module, cls in ((mimic, Mimic), (fgd, FGD), (fgfi, FGFI), (defeat, DeFeat)):
        assert set(module.DEFAULTS) == {"gfl", "faster_rcnn"}
        for detector in ("gfl", "faster_rcnn"):
            method = cls(**module.DEFAULTS[detector])
            for key, value in module.DEFAULTS[detector].items():
                assert getattr(method, key) == value


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_line() -> None:
    hw = (32, 32)
    batch = _batch([torch.zeros(0, 4)], hw)
    s = _feats(1, hw, (8, 16), 8, seed=0)
    t = _feats(1, hw, (8, 16), 16, seed=0)
    with pytest.raises(UserError, match="same FPN width"):
        Mimic()(s, t, batch, KDContext("gfl", (8, 16), {}))
    with pytest.raises(UserError, match="same detector type"):
        Mimic()(s, s[:1], batch, KDContext("gfl", (8, 16), {}))
    with pytest.raises(UserError, match="num_levels=2"):
        FGD(channels=8)(s, s, batch, KDContext("gfl", (8, 16), {}))
    with pytest.raises(UserError, match="unknown detector"):
        FGFI(adapt=False, num_levels=2)(s, s, batch, KDContext("retinanet", (8, 16), {}))

    # constructor arguments: ValueError naming the argument (the method builder wraps it in a
    # UserError naming params.yaml distill.baselines.<method>.<detector>)
    with pytest.raises(ValueError, match=r"^psi = 1\.5 must be in \(0, 1\]"):
        FGFI(psi=1.5)
    with pytest.raises(ValueError, match=r"^bg_weight = -1\.0 must be"):
        DeFeat(bg_weight=-1.0)
    with pytest.raises(ValueError, match=r"^weight = inf must be"):
        Mimic(weight=float("inf"))
    with pytest.raises(ValueError, match=r"^level_assign = 'nearest'; choose one of all, roi"):
        DeFeat(level_assign="nearest")
    with pytest.raises(ValueError, match=r"^temperature = 0\.0 must be > 0"):
        FGD(temperature=0.0)
