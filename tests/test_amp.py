"""Mixed precision on the CPU (``train.amp: true``): bfloat16 autocast for the forward, float32
losses, KD maps and parameters."""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import BalanceParams, DistillParams
from pipeline.distill.balance import calibrate, calibration_batches
from pipeline.distill.bmfi import channel_attention, spatial_attention
from pipeline.distill.distiller import Distiller
from pipeline.distill.gkd import gradient_map, head_gradients
from pipeline.distill.masks import gaussian_box_mask
from pipeline.distill.methods import build_method
from pipeline.engine.trainer import LoopConfig, autocast_dtype, train
from test_distiller import TinyScenes, tiny_batch, tiny_detector

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
CFG = LoopConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, num_workers=0, seed=0, grad_clip=35.0)


@pytest.fixture(scope="module")
def pair():
    """A tiny GFL teacher and student, built once (copied by each test that trains)."""
    torch.manual_seed(0)
    return tiny_detector(), tiny_detector()


def test_amp_means_bfloat16_on_the_cpu_float16_on_cuda_and_off_means_float32():
    assert autocast_dtype(True, CPU) is torch.bfloat16
    assert autocast_dtype(True, torch.device("cuda")) is torch.float16
    assert autocast_dtype(False, CPU) is None and autocast_dtype(False, torch.device("cuda")) is None


def test_a_bfloat16_forward_gives_float32_finite_losses(pair):
    student = copy.deepcopy(pair[1])
    batch = tiny_batch()
    with torch.autocast("cpu", dtype=autocast_dtype(True, CPU)):
        feats = student.features(batch.images)
        losses = student.losses(feats, batch)
    assert feats[0].dtype is torch.bfloat16                  # autocast is really on
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    for name, value in losses.items():
        assert value.dtype is torch.float32 and torch.isfinite(value), name
    sum(losses.values()).backward()
    assert all(p.grad is None or (p.grad.dtype is torch.float32 and torch.isfinite(p.grad).all())
               for p in student.parameters())


def test_training_under_amp_on_the_cpu_keeps_float32_weights_and_changes_the_arithmetic(tmp_path, pair):
    runs = {}
    for amp in (False, True):
        student = copy.deepcopy(pair[1])
        result = train(student, TinyScenes(), CFG if not amp else LoopConfig(**{**CFG.__dict__, "amp": True}),
                       tmp_path / str(amp), CPU, "fp")
        assert all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())
        assert all(p.dtype is torch.float32 for p in student.parameters())
        runs[amp] = torch.cat([p.detach().flatten() for p in student.parameters()])
    # the same two steps from the same weights: close, but not bit-equal (bfloat16 did the convolutions)
    assert not torch.equal(runs[False], runs[True])
    assert torch.allclose(runs[False], runs[True], atol=5e-3)


def test_gkd_bmfi_terms_and_maps_are_float32_and_finite_under_bfloat16(pair):
    teacher, student = (copy.deepcopy(m) for m in pair)
    distiller = Distiller(student, teacher, build_method("gkd_bmfi", "gfl", DistillParams()))
    batch = tiny_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = student.features(batch.images)
        losses = student.losses(feats, batch)
        terms = distiller(feats, batch, losses)
        t_feats = teacher.features(batch.images)
        _, _, t_grads = head_gradients(teacher, t_feats, batch)
        maps = [gradient_map(f, g) for f, g in zip(t_feats, t_grads)]
        attention = [spatial_attention(f, 0.5) for f in t_feats] + [channel_attention(f, 0.5) for f in t_feats]
        masks = [gaussian_box_mask(batch.boxes, s, tuple(f.shape[-2:])) for f, s in zip(t_feats, student.strides)]
    assert {"kd_gkd_bmfi_gkd", "kd_gkd_bmfi_imitation", "kd_gkd_bmfi_attention"} <= set(terms)
    for name, value in terms.items():
        assert value.dtype is torch.float32 and torch.isfinite(value), name
    assert t_feats[0].dtype is torch.bfloat16
    for tensor in [*t_grads, *maps, *attention, *masks]:
        assert tensor.dtype is torch.float32 and torch.isfinite(tensor).all()
    # maps with content, not underflowed zeros (a one-cell level normalises to 0 in any precision)
    assert all(float(m.max()) > 0 for m in maps if m[0].numel() > 1)
    sum({**losses, **terms}.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())


def test_balanced_gkd_bmfi_trains_under_amp_on_the_cpu(tmp_path, pair):
    teacher, student = (copy.deepcopy(m) for m in pair)
    distiller = Distiller(student, teacher, build_method("gkd_bmfi", "gfl", DistillParams()))
    batches = calibration_batches(TinyScenes(), batch_size=2, count=2, seed=0)
    record = calibrate(distiller, batches, CPU, BalanceParams(mode="auto", ratio=0.5, batches=2))
    assert record["ratio"] == pytest.approx(0.5, rel=0.05)
    cfg = LoopConfig(**{**CFG.__dict__, "amp": True})
    result = train(student, TinyScenes(), cfg, tmp_path, CPU, "fp", extra=distiller, extra_module=distiller.method)
    first = result.history[0]
    assert {"kd_gkd_bmfi_gkd", "kd_gkd_bmfi_imitation", "kd_gkd_bmfi_attention"} <= set(first)
    assert all(torch.isfinite(torch.tensor(v)) for v in first.values())
    assert distiller.nonfinite.take() == 0                  # no gradient value had to be replaced
