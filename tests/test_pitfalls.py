"""Regression tests for what the authors' released code gets wrong (docs/method.md, 'Pitfalls').

Each test fails on the released behaviour:

1. its gradient-guided loss compares two numpy maps: constants, the student gets no gradient;
2. its Gaussian mask is centred at ``2p - H/2`` instead of ``p``: off-centre boxes vanish;
3. its maps ignore random flips and padding: half the training images get mirrored maps;
4. it re-reads each image from disk and runs extra single-image passes per training image.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.data.dataset as dataset_module
from pipeline.config import DistillParams, InputParams
from pipeline.data.dataset import CuratedDataset, collate
from pipeline.distill.distiller import Distiller
from pipeline.distill.masks import gaussian_box_mask
from pipeline.distill.methods import build_method
from pipeline.engine.trainer import LoopConfig, train
from test_distiller import tiny_batch, tiny_detector


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_gkd_term_trains_the_student_where_numpy_maps_give_no_gradient():
    torch.manual_seed(0)
    teacher, student = tiny_detector(), tiny_detector()
    batch = tiny_batch()
    distiller = Distiller(student, teacher, build_method("gkd", "gfl", DistillParams()))

    def gkd_term() -> torch.Tensor:
        feats = student.features(batch.images)
        return distiller(feats, batch, student.losses(feats, batch))["kd_gkd_gkd"]

    # the released code: maps through numpy are constants
    released = torch.from_numpy(np.abs(student.features(batch.images)[0].detach().numpy()).mean(1))
    assert not released.requires_grad

    term = gkd_term()
    assert term.requires_grad and term.item() > 0
    term.backward()
    backbone_grad = sum(p.grad.abs().sum() for p in student.backbone.parameters() if p.grad is not None)
    assert backbone_grad > 0                                    # L_GKD reaches the student's backbone
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    first = term.item()
    for _ in range(3):                                         # L_GKD alone: the student's maps move to the teacher's
        optimizer.zero_grad()
        term = gkd_term()
        term.backward()
        optimizer.step()
    assert gkd_term().item() < first
    distiller.close()


@pytest.mark.parametrize("box", [
    [0.0, 0.0, 16.0, 16.0],            # top-left corner
    [104.0, 40.0, 128.0, 64.0],        # bottom-right corner
    [8.0, 40.0, 32.0, 56.0],           # left, low
    [56.0, 24.0, 72.0, 40.0],          # centre
])
def test_gaussian_mask_is_centred_on_the_box_wherever_it_is(box):
    """The released code centres the Gaussian at 2p - H/2: only a box at the image centre survives."""
    b = torch.tensor([box])
    mask = gaussian_box_mask([b], 8, (8, 16), area_normalize=False)[0, 0]
    ys, xs = torch.meshgrid(torch.arange(8.0) + 0.5, torch.arange(16.0) + 0.5, indexing="ij")
    inside = (mask == 1)
    cx, cy = (b[0, 0] + b[0, 2]) / 16, (b[0, 1] + b[0, 3]) / 16           # box centre in cells
    assert inside.any()
    assert (xs[inside].mean() - cx).abs() < 0.5 and (ys[inside].mean() - cy).abs() < 0.5
    w, h = (b[0, 2] - b[0, 0]) / 8, (b[0, 3] - b[0, 1]) / 8                  # box size in cells
    ring = (mask > 0) & (mask < 1)
    assert ((xs[mask > 0] - cx).abs() <= w + 0.5).all() and ((ys[mask > 0] - cy).abs() <= h + 0.5).all()
    assert ((xs[ring] - cx).abs() <= w).all() and ((ys[ring] - cy).abs() <= h).all()   # Gaussian about p
    on_map = (cx - w >= 0.5) and (cx + w <= 15.5) and (cy - h >= 0.5) and (cy + h <= 7.5)
    assert ring.any() and (not on_map or ring.sum() >= 8)     # the ring surrounds the box unless clipped


def _curated(tmp_path, count: int) -> dict:
    """``count`` 256x64 images, each with one car box left of centre."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 256, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 256, "height": 64})
        anns.append({"id": i + 1, "image_id": i, "category_id": 1, "bbox": [20.0 + 8 * i, 10.0, 60.0, 40.0],
                     "area": 2400.0, "iscrowd": 0, "ignore": 0})
    return {"info": {"image_root": str(tmp_path)}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]}


def test_masks_and_teacher_input_follow_the_flip_of_the_augmented_batch(tmp_path):
    coco = _curated(tmp_path, 1)
    plain = collate([CuratedDataset(coco, InputParams(width=128, height=32, flip_prob=0.0), train=True)[0]])
    flipped = collate([CuratedDataset(coco, InputParams(width=128, height=32, flip_prob=1.0), train=True)[0]])
    assert bool(flipped.flipped[0]) and not bool(plain.flipped[0])
    assert torch.equal(flipped.images, torch.flip(plain.images, dims=[-1]))   # width 128 = padded width
    for stride, size in zip((8, 16, 32, 64, 128), ((4, 16), (2, 8), (1, 4), (1, 2), (1, 1))):
        m = gaussian_box_mask(plain.boxes, stride, size)
        mf = gaussian_box_mask(flipped.boxes, stride, size)
        assert m.sum() > 0
        assert torch.allclose(mf, torch.flip(m, dims=[-1]), atol=1e-6), stride

    torch.manual_seed(0)
    teacher, student = tiny_detector(), tiny_detector()
    seen = []
    teacher.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    distiller = Distiller(student, teacher, build_method("gkd_bmfi", "gfl", DistillParams()))
    feats = student.features(flipped.images)
    distiller(feats, flipped, student.losses(feats, flipped))
    assert len(seen) == 1 and torch.equal(seen[0], flipped.images)   # the teacher sees the augmented pixels


@pytest.mark.slow
def test_one_teacher_pass_and_no_extra_student_passes_or_image_reads_per_step(tmp_path, monkeypatch):
    data = CuratedDataset(_curated(tmp_path, 4), InputParams(width=128, height=32, flip_prob=0.5), train=True)
    reads = []
    real_read = dataset_module.read_rgb
    monkeypatch.setattr(dataset_module, "read_rgb", lambda path: reads.append(path) or real_read(path))
    torch.manual_seed(0)
    teacher, student = tiny_detector(), tiny_detector()
    calls = {"teacher backbone": [], "teacher head": [], "student backbone": [], "student head": []}
    for name, module in (("teacher backbone", teacher.backbone), ("teacher head", teacher.head),
                         ("student backbone", student.backbone), ("student head", student.head)):
        module.register_forward_hook(lambda m, args, out, name=name: calls[name].append(len(args[0][0])
                                                                                         if name.endswith("head")
                                                                                         else len(args[0])))
    distiller = Distiller(student, teacher,
                          build_method("gkd_bmfi", "gfl", DistillParams()))
    cfg = LoopConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, num_workers=0, seed=0)
    train(student, data, cfg, tmp_path / "run", torch.device("cpu"), "fp", extra=distiller)
    assert len(reads) == 4                                     # each image read once, by the loader
    assert calls["teacher backbone"] == [2, 2]                 # one batched teacher forward per step
    assert calls["teacher head"] == [2, 2]                     # one teacher head pass (loss + gradient) per step
    assert calls["student backbone"] == [2, 2] and calls["student head"] == [2, 2]   # the training forward only
