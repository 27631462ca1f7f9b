"""BMFI (paper Eq. 6-9) on tiny hand-computed tensors, the GKD-BMFI total (Eq. 10) and its ablations."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import DistillParams
from pipeline.distill.base import KDContext
from pipeline.distill.bmfi import (attention_loss, channel_attention, imitation_loss, spatial_attention, standardized,
                                   uniform_mask)
from pipeline.distill.gkd import gkd_loss, gradient_map
from pipeline.distill.masks import gaussian_box_mask
from pipeline.distill.methods import build_method

E = math.exp


pytestmark = pytest.mark.usefixtures("one_thread")


def test_gaussian_mask_is_one_on_the_box_gaussian_on_the_ring_zero_elsewhere():   # Eq. 6
    # box 16..32 on stride 8: cells 2-3 inside; grown box 8..40 holds cell centres 12..36 (cells 1-4)
    m = gaussian_box_mask([torch.tensor([[16.0, 16.0, 32.0, 32.0]])], 8, (6, 6), area_normalize=False)[0, 0]
    assert m.shape == (6, 6)
    assert torch.equal(m[2:4, 2:4], torch.ones(2, 2))
    # ring cell (1, 1): centre 12 -> dx = dy = (12 - 24) / 16 = -0.75
    assert m[1, 1].item() == pytest.approx(E(-0.5 * (0.75**2 + 0.75**2)))
    assert m[1, 2].item() == pytest.approx(E(-0.5 * (0.75**2 + 0.25**2)))       # (dy, dx) = (-0.75, -0.25)
    assert m[4, 3].item() == pytest.approx(E(-0.5 * (0.75**2 + 0.25**2)))
    outside = torch.ones(6, 6, dtype=torch.bool)
    outside[1:5, 1:5] = False
    assert m[outside].abs().sum() == 0


def test_area_normalisation_divides_each_patch_by_its_cell_count():
    raw = gaussian_box_mask([torch.tensor([[16.0, 16.0, 32.0, 32.0]])], 8, (6, 6), area_normalize=False)
    norm = gaussian_box_mask([torch.tensor([[16.0, 16.0, 32.0, 32.0]])], 8, (6, 6), area_normalize=True)
    assert torch.allclose(norm, raw / 16)                       # the 4x4 grown patch


def test_mask_sits_on_boxes_at_the_border_and_keeps_the_maximum_where_they_overlap():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 6.0],                 # top-left corner: cells (0, 0), (0, 1)
                          [40.0, 24.0, 48.0, 32.0]])             # bottom-right corner: cell (3, 5)
    m = gaussian_box_mask([boxes], 8, (4, 6), area_normalize=False)[0, 0]
    assert m[0, 0] == 1 and m[0, 1] == 1 and m[3, 5] == 1
    # the corner box's ring is clipped at the map border: only cells up and left of it exist
    assert m[2, 4].item() == pytest.approx(E(-1.0))             # (dy, dx) = (-1, -1)
    assert m[2, 5].item() == pytest.approx(E(-0.5)) and m[3, 4].item() == pytest.approx(E(-0.5))
    assert m.sum().item() == pytest.approx(3 + E(-1.0) + 2 * E(-0.5))
    both = gaussian_box_mask([torch.tensor([[16.0, 16.0, 32.0, 32.0], [24.0, 16.0, 40.0, 32.0]])], 8, (6, 6),
                             area_normalize=False)[0, 0]
    assert both[2, 4] == 1 and both[2, 1].item() == pytest.approx(E(-0.5 * (0.75**2 + 0.25**2)))


def test_mask_follows_a_horizontal_flip_of_the_boxes():
    boxes = torch.tensor([[3.0, 5.0, 30.0, 20.0], [50.0, 2.0, 90.0, 40.0]])
    width = 96                                                    # 12 cells of stride 8
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    m = gaussian_box_mask([boxes], 8, (6, 12))
    mf = gaussian_box_mask([flipped], 8, (6, 12))
    assert torch.allclose(mf, torch.flip(m, dims=[-1]), atol=1e-6)


# A [1, 2, 1, 2]: channel 0 = [[1, -3]], channel 1 = [[1, 1]]
A = torch.tensor([[[[1.0, -3.0]], [[1.0, 1.0]]]])


def test_spatial_and_channel_attention():                        # Eq. 7-8, T = 0.5
    s = spatial_attention(A, 0.5)                                 # mean_k |A| = [1, 2] -> softmax([2, 4]) * 2
    assert s.shape == (1, 1, 1, 2)
    assert torch.allclose(s.flatten(), 2 * torch.tensor([1.0, E(2.0)]) / (1 + E(2.0)))
    c = channel_attention(A, 0.5)                                 # mean_ij |A| = [2, 1] -> softmax([4, 2]) * 2
    assert c.shape == (1, 2, 1, 1)
    assert torch.allclose(c.flatten(), 2 * torch.tensor([E(2.0), 1.0]) / (1 + E(2.0)))


def test_imitation_term_weights_squared_error_by_mask_and_teacher_attention():      # Eq. 9, first term
    student = torch.zeros_like(A)
    mask = torch.tensor([[[[1.0, 0.0]]]])
    # only cell (0, 0): S_T[0] * (C_T[0] * 1^2 + C_T[1] * 1^2) = S_T[0] * 2
    expected = 2 * 2 / (1 + E(2.0))
    assert imitation_loss(student, A, mask, 0.5).item() == pytest.approx(expected)
    ones = torch.ones_like(A[:, :1])
    assert imitation_loss(student, A, ones, None).item() == pytest.approx(1 + 9 + 1 + 1)   # plain squared error
    assert imitation_loss(A.clone(), A, mask, 0.5).item() == 0


def test_attention_l1_term():                                     # Eq. 9, second term (without alpha)
    # a zero student has uniform attention (all ones)
    s_t = 2 * torch.tensor([1.0, E(2.0)]) / (1 + E(2.0))
    c_t = 2 * torch.tensor([E(2.0), 1.0]) / (1 + E(2.0))
    expected = (s_t - 1).abs().sum() + (c_t - 1).abs().sum()
    assert attention_loss(torch.zeros_like(A), A, 0.5).item() == pytest.approx(expected.item())


def _features():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 4, 6, 8, generator=g).requires_grad_(),
               torch.randn(2, 4, 3, 4, generator=g).requires_grad_()]
    teacher = [torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 3, 4, generator=g)]
    grads = [torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 3, 4, generator=g)]
    t_grads = [torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 3, 4, generator=g)]
    return student, teacher, grads, t_grads


class _Batch:
    boxes = [torch.tensor([[8.0, 8.0, 30.0, 40.0]]), torch.tensor([[0.0, 0.0, 64.0, 20.0]])]


def test_total_is_eq10_and_each_method_name_switches_the_table3_terms():
    student, teacher, s_grads, t_grads = _features()
    ctx = KDContext("gfl", (8, 16), {}, student_grads=s_grads, teacher_grads=t_grads)
    params = DistillParams()
    terms = {name: build_method(name, "gfl", params)(student, teacher, _Batch(), ctx)
             for name in ("gkd_bmfi", "bmfi", "mfi", "gkd")}
    assert set(terms["gkd_bmfi"]) == {"kd_gkd_bmfi_gkd", "kd_gkd_bmfi_imitation", "kd_gkd_bmfi_attention"}
    assert set(terms["bmfi"]) == {"kd_bmfi_imitation", "kd_bmfi_attention"}
    assert set(terms["mfi"]) == {"kd_mfi_imitation", "kd_mfi_attention"}
    assert set(terms["gkd"]) == {"kd_gkd_gkd"}

    w = params.gkd.gfl                                           # gkd_weight 0.1, beta 1e-3, alpha 0.5
    l_gkd = gkd_loss([gradient_map(t, g) for t, g in zip(teacher, t_grads)],
                     [gradient_map(s, g) for s, g in zip(student, s_grads)])
    masks = [gaussian_box_mask(_Batch.boxes, st, tuple(s.shape[-2:])) for st, s in zip((8, 16), student)]
    imit = sum(imitation_loss(s, t, m, 0.5) for s, t, m in zip(student, teacher, masks))
    att = sum(attention_loss(s, t, 0.5) for s, t in zip(student, teacher))
    total = sum(terms["gkd_bmfi"].values())
    assert total.item() == pytest.approx((w.gkd_weight * l_gkd + w.beta * (imit + w.alpha * att)).item(), rel=1e-5)
    assert terms["gkd"]["kd_gkd_gkd"].item() == pytest.approx(w.gkd_weight * l_gkd.item(), rel=1e-6)
    unmasked = sum(imitation_loss(s, t, uniform_mask(s), 0.5) for s, t in zip(student, teacher))
    assert terms["mfi"]["kd_mfi_imitation"].item() == pytest.approx(w.beta * unmasked.item(), rel=1e-5)
    total.backward()
    assert all(s.grad.abs().sum() > 0 for s in student)


def test_descent_sign_reaches_the_gkd_term():
    """distill.gkd.sign: descent builds both models' maps from the negated channel weights."""
    student, teacher, s_grads, t_grads = _features()
    ctx = KDContext("gfl", (8, 16), {}, student_grads=s_grads, teacher_grads=t_grads)
    params = DistillParams(gkd={"sign": "descent"})
    got = build_method("gkd", "gfl", params)(student, teacher, _Batch(), ctx)["kd_gkd_gkd"]
    l_gkd = gkd_loss([gradient_map(t, -g) for t, g in zip(teacher, t_grads)],
                     [gradient_map(s, -g) for s, g in zip(student, s_grads)])
    assert got.item() == pytest.approx(params.gkd.gfl.gkd_weight * l_gkd.item(), rel=1e-6)
    ascent = build_method("gkd", "gfl", DistillParams())(student, teacher, _Batch(), ctx)["kd_gkd_gkd"]
    assert ascent.item() != pytest.approx(got.item(), rel=1e-3)


def test_mask_off_ablation_has_the_masked_scale_on_an_all_ones_mask():
    """Table 3's MFI row (mask off) must weigh the map like the box mask does for one box that
    covers the whole map, not H*W times more (the unnormalised all-ones mask did)."""
    student, teacher, _, _ = _features()
    sizes = [tuple(s.shape[-2:]) for s in student]
    whole = [torch.tensor([[0.0, 0.0, 64.0, 48.0]])] * 2                 # 8x6 cells at stride 8
    full = [gaussian_box_mask(whole, st, size) for st, size in zip((8, 16), sizes)]
    assert torch.equal(full[0], uniform_mask(student[0]))                 # the box covers every cell
    ctx = KDContext("gfl", (8, 16), {})
    mfi = build_method("mfi", "gfl", DistillParams())(student, teacher, _Batch(), ctx)["kd_mfi_imitation"]
    masked = sum(imitation_loss(s, t, m, 0.5) for s, t, m in zip(student, teacher, full))
    assert mfi.item() == pytest.approx(DistillParams().gkd.gfl.beta * masked.item(), rel=1e-6)
    cells = student[0].shape[-1] * student[0].shape[-2]
    assert uniform_mask(student[0], area_normalize=False).sum().item() == 2 * cells


def test_terms_vanish_when_student_equals_teacher():
    _, teacher, _, t_grads = _features()
    student = [t.clone().requires_grad_() for t in teacher]
    ctx = KDContext("gfl", (8, 16), {}, student_grads=t_grads, teacher_grads=t_grads)
    terms = build_method("gkd_bmfi", "gfl", DistillParams())(student, teacher, _Batch(), ctx)
    assert all(v.item() == pytest.approx(0.0, abs=1e-7) for v in terms.values())


def test_standardized_imitation_does_not_depend_on_the_features_scale():
    """distill.gkd.standardize: the imitation of per-channel standardised features is the same for
    features of any scale and offset per channel (the raw term grows with the square of the scale);
    the teacher's attention still weighs it."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g)
    mask = torch.rand(2, 1, 6, 8, generator=g)
    base = imitation_loss(s, t, mask, 0.5, standardize=True)
    assert imitation_loss(3 * s + 1, t, mask, 0.5, standardize=True) == pytest.approx(float(base), rel=1e-4)
    assert imitation_loss(3 * s, t, mask, 0.5) > 2 * imitation_loss(s, t, mask, 0.5)
    assert float(imitation_loss(t * 2 - 5, t, mask, 0.5, standardize=True)) == pytest.approx(0.0, abs=1e-4)
    method = build_method("gkd_bmfi", "gfl", DistillParams(gkd={"standardize": True}), 4, 1)
    assert method.standardize


def _direct_standardized(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """PKD's normalisation written out: per channel over N x H x W, population variance."""
    mean = torch.mean(x, dim=(0, 2, 3), keepdim=True)
    var = torch.var(x, dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def test_standardisation_is_per_channel_over_batch_and_space_of_each_level():
    """Each level's channel statistics span the batch and the map (PKD), not one image's map: an
    offset and scale per image stays in the standardised features."""
    g = torch.Generator().manual_seed(1)
    levels = [torch.randn(2, 4, 6, 8, generator=g), torch.randn(3, 4, 3, 4, generator=g),
              torch.randn(2, 5, 1, 2, generator=g)]
    for x in levels:
        x = x * torch.arange(1.0, x.shape[0] + 1).view(-1, 1, 1, 1) + torch.randn(x.shape[0], 1, 1, 1, generator=g)
        got = standardized(x)
        assert got.dtype == torch.float32 and got.shape == x.shape
        torch.testing.assert_close(got, _direct_standardized(x), rtol=1e-5, atol=1e-5)
        assert got.var(dim=(0, 2, 3), unbiased=False).sub(1).abs().max() < 1e-3
        per_image = (x - x.mean((2, 3), keepdim=True)) / x.var((2, 3), keepdim=True, unbiased=False).add(1e-5).sqrt()
        assert not torch.allclose(got, per_image, atol=1e-2)


def test_standardisation_runs_in_float32_under_autocast():
    x = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(2)).mul(40).add(300).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = standardized(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _direct_standardized(x.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2])
def test_standardised_imitation_is_finite_on_a_1x1_level(n):
    """N*H*W = 1 (every cell its own mean): zeros, loss 0; N*H*W = 2: finite. Gradients finite."""
    g = torch.Generator().manual_seed(3)
    student = (100 * torch.randn(n, 4, 1, 1, generator=g)).requires_grad_()
    teacher = 100 * torch.randn(n, 4, 1, 1, generator=g)
    z = standardized(student)
    assert torch.isfinite(z).all()
    if n == 1:
        assert not z.any()
    else:                                                         # two cells: +-d / sqrt(d^2 + eps) ~ +-1
        assert torch.allclose(z.abs(), torch.ones_like(z), atol=1e-3)
    loss = imitation_loss(student, teacher, torch.ones(n, 1, 1, 1), 0.5, standardize=True)
    assert torch.isfinite(loss)
    assert loss.item() == 0.0 if n == 1 else loss.item() >= 0.0
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_standardised_imitation_gradients_are_finite_on_every_level():
    student, teacher, _, _ = _features()
    loss = sum(imitation_loss(s, t, torch.rand(s.shape[0], 1, *s.shape[2:]), 0.5, standardize=True)
               for s, t in zip(student, teacher))
    loss.backward()
    assert all(torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0 for s in student)


def test_standardize_changes_what_is_imitated_not_where_nor_the_attention_term():
    """The imitation weights S_T * C_T come from the teacher's raw features, and the attention L1
    stays on raw features, with or without distill.gkd.standardize."""
    student, teacher, _, _ = _features()
    s, t = student[0].detach(), 5 * teacher[0] + 2
    mask = torch.rand(2, 1, 6, 8, generator=torch.Generator().manual_seed(4))
    weight = mask * spatial_attention(t, 0.5) * channel_attention(t, 0.5)
    expected = (weight * (_direct_standardized(t) - _direct_standardized(s)) ** 2).sum() / 2
    assert imitation_loss(s, t, mask, 0.5, standardize=True).item() == pytest.approx(expected.item(), rel=1e-5)

    ctx = KDContext("gfl", (8, 16), {})
    raw = build_method("bmfi", "gfl", DistillParams())(student, teacher, _Batch(), ctx)
    std = build_method("bmfi", "gfl", DistillParams(gkd={"standardize": True}))(student, teacher, _Batch(), ctx)
    assert std["kd_bmfi_attention"].item() == raw["kd_bmfi_attention"].item()
    assert std["kd_bmfi_imitation"].item() != pytest.approx(raw["kd_bmfi_imitation"].item(), rel=1e-2)
