"""GKD (paper Eq. 1-5) on tiny hand-computed tensors, and the teacher-side gradient."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import plain_batch
from pipeline.distill.gkd import (channel_weights, gkd_loss, gradient_map, head_gradients, minmax_normalize,
                                  pseudo_targets)
from pipeline.models.factory import build_detector
from pipeline.structures import Batch, Detections

EPS = 1e-7


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_batch(n: int = 2, h: int = 64, w: int = 128) -> Batch:
    g = torch.Generator().manual_seed(0)
    boxes = [torch.tensor([[8.0, 8.0, 48.0, 40.0], [70.0, 16.0, 120.0, 60.0]])] * n
    return plain_batch(torch.randn(n, 3, h, w, generator=g), boxes, [torch.tensor([0, 1])] * n)


# A [1, 2, 2, 2]: channel 0 = [[1, 2], [3, 4]], channel 1 = [[1, 0], [1, 0]]
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [1.0, 0.0]]]])
# dL/dA: channel 0 all 0.5 (w0 = 0.5), channel 1 = [[-1, -1], [-1, -3]] (w1 = -1.5, mean |g| = 1.5)
G = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[-1.0, -1.0], [-1.0, -3.0]]]])


def test_channel_weights_are_the_spatial_mean_of_the_gradient():        # Eq. 1
    assert channel_weights(G).flatten().tolist() == [0.5, -1.5]
    assert channel_weights(G, signed=False).flatten().tolist() == [0.5, 1.5]
    assert channel_weights(G).shape == (1, 2, 1, 1)


def test_gradient_map_is_min_max_normalised_relu_of_weighted_sum():     # Eq. 2-4
    # 0.5*A0 - 1.5*A1 = [[-1, 1], [0, 2]] -> ReLU [[0, 1], [0, 2]] -> / (2 + eps)
    m = gradient_map(A, G)
    assert m.shape == (1, 1, 2, 2)
    assert torch.allclose(m[0, 0], torch.tensor([[0.0, 1.0], [0.0, 2.0]]) / (2 + EPS))


def test_descent_sign_keeps_the_cells_whose_growth_lowers_the_loss():
    # -(0.5*A0 - 1.5*A1) = [[1, -1], [0, -2]] -> ReLU [[1, 0], [0, 0]]: the one cell where raising the
    # features lowers the loss, which Eq. 1 as printed (ascent) maps to 0
    assert channel_weights(G, sign="descent").flatten().tolist() == [-0.5, 1.5]
    m = gradient_map(A, G, sign="descent")
    assert torch.allclose(m[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]) / (1 + EPS))
    assert gradient_map(A, G)[0, 0, 0, 0] == 0.0
    # the sign has no meaning for maps from |grad| and |A|
    assert torch.equal(gradient_map(A, G, signed=False, sign="descent"), gradient_map(A, G, signed=False))
    with pytest.raises(ValueError, match="sign"):
        channel_weights(G, sign="down")


def test_unsigned_map_uses_absolute_gradient_and_features():
    # 0.5*|A0| + 1.5*|A1| = [[2, 1], [3, 2]] -> (M - 1) / (2 + eps)
    m = gradient_map(-A, G, signed=False)
    assert torch.allclose(m[0, 0], torch.tensor([[1.0, 0.0], [2.0, 1.0]]) / (2 + EPS))


def test_min_max_is_per_image_and_a_flat_map_is_zero():
    maps = torch.stack([torch.full((1, 2, 2), 3.0), torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])])
    out = minmax_normalize(maps)
    assert torch.equal(out[0], torch.zeros(1, 2, 2))
    assert torch.allclose(out[1, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]), atol=1e-6)


def test_gkd_loss_sums_levels_of_batch_mean_l1():                          # Eq. 5
    t1 = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    s1 = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).view(2, 1, 1, 2)          # per image 0.5, 0.5
    t2 = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    s2 = torch.tensor([0.25, 0.0]).view(2, 1, 1, 1)                       # per image 0.75, 0
    assert gkd_loss([t1, t2], [s1, s2]).item() == pytest.approx(0.5 + 0.375)


def test_gkd_trains_student_activations_but_not_channel_weights():
    a_s = A.clone().requires_grad_()
    g = G.clone().requires_grad_()
    teacher_map = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    gkd_loss([teacher_map], [gradient_map(a_s, g)]).backward()
    assert a_s.grad is not None and a_s.grad.abs().sum() > 0
    assert g.grad is None                                    # w is detached (Eq. 1 weights carry no gradient)


class LinearHeadDetector(nn.Module):
    """losses = sum_l sum(c_l * feats_l): dL/dfeats_l = c_l exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.c = [torch.full((1, 2, 2, 2), 3.0), torch.arange(4.0).view(1, 1, 2, 2).expand(1, 2, 2, 2)]

    def losses(self, feats, batch):
        return {"a": (self.c[0] * feats[0]).sum(), "b": (self.c[1] * feats[1]).sum()}


def test_head_gradients_are_the_exact_loss_gradient_at_detached_leaves():
    feats = [torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)]
    det = LinearHeadDetector()
    losses, leaves, grads = head_gradients(det, feats, tiny_batch(1))
    assert torch.equal(grads[0], det.c[0]) and torch.equal(grads[1], det.c[1].contiguous())
    assert all(leaf.is_leaf and leaf.requires_grad for leaf in leaves)
    assert not any(v.requires_grad for v in losses.values())


def test_teacher_side_backward_stops_at_the_fpn():
    torch.manual_seed(0)
    teacher = build_detector("gfl", "resnet18", 2).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    batch = tiny_batch()
    with torch.no_grad():
        feats = teacher.features(batch.images)
    entered = []
    hooks = [m.register_forward_hook(lambda *a: entered.append(1)) for m in (teacher.backbone, teacher.neck)]
    losses, _, grads = head_gradients(teacher, feats, batch)
    for h in hooks:
        h.remove()
    assert entered == []                                      # backbone and neck never re-run
    assert all(p.grad is None for p in teacher.parameters())   # no parameter gradient
    assert [g.shape for g in grads] == [f.shape for f in feats]
    assert all(g.abs().sum() > 0 for g in grads)               # every level gets a loss gradient
    assert math.isfinite(sum(float(v) for v in losses.values()))


class FixedPredictor:
    def __init__(self, dets):
        self.dets = dets

    def predict(self, feats, batch):
        return self.dets


def test_pseudo_targets_are_the_top_k_confident_detections():
    boxes = torch.arange(20.0).view(5, 4)
    det = Detections(boxes=boxes, scores=torch.tensor([0.9, 0.2, 0.5, 0.31, 0.95]),
                     labels=torch.tensor([0, 1, 2, 0, 1]))
    out = pseudo_targets(FixedPredictor([det]), [torch.zeros(1)], tiny_batch(1), top_k=2, score_thr=0.3)
    assert torch.equal(out.boxes[0], boxes[[4, 0]]) and out.labels[0].tolist() == [1, 0]
    out = pseudo_targets(FixedPredictor([det]), [torch.zeros(1)], tiny_batch(1), top_k=10, score_thr=0.3)
    assert out.labels[0].tolist() == [1, 0, 2, 0]                # 0.2 is below the threshold
