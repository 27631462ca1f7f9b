"""Benchmark: the cost of a GKD-BMFI training step against a plain and a mimic step.

In one process, on the same batch, with the same teacher and the same student initialisation,
times one training step (forward, KD terms, backward, SGD step) of

* ``plain``: the student alone (a baseline run's step);
* ``mimic``: + teacher forward + MSE on the FPN outputs (what every KD method pays);
* ``gkd_bmfi``: + teacher head loss and backward to its FPN, the student's gradient maps
  (``fused``: one student head backward, the default) and the BMFI terms;
* ``gkd_bmfi_separate``: the same with a second student head backward (``student_grad: separate``),

interleaved round-robin so that load changes on a shared machine hit every variant alike, and
prints the median step times, the ratios GKD-BMFI / mimic (target <= 1.3) and GKD-BMFI / plain,
and where a KD step's time goes: ``teacher_forward`` (backbone + neck, no grad),
``teacher_gradients`` (teacher head loss and its backward to the FPN: what GKD adds),
``student_gradients`` (with ``fused``, the student head's backward, moved out of the loop's
backward, not added), ``kd_terms`` (maps, masks, attention: forward only) and the rest (student
forward, the remaining backward, the optimiser). Run from the repository root::

    .venv/bin/python benchmarks/bench_distill_step.py                  # R101 -> R18 GFL, 4 x 96x320
    .venv/bin/python benchmarks/bench_distill_step.py --detector faster_rcnn --student resnet50
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import DistillParams  # noqa: E402
from pipeline.distill.distiller import Distiller  # noqa: E402
from pipeline.distill.methods import build_method  # noqa: E402
from pipeline.models.factory import build_detector  # noqa: E402
from pipeline.structures import Batch  # noqa: E402


def make_batch(n: int, height: int, width: int, seed: int = 0) -> Batch:
    """Random images with 3-6 boxes each (x1,y1,x2,y2 input pixels), 3 classes."""
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for _ in range(n):
        k = int(torch.randint(3, 7, (1,), generator=g))
        wh = torch.rand(k, 2, generator=g) * torch.tensor([width * 0.3, height * 0.5]) + 8
        xy = torch.rand(k, 2, generator=g) * (torch.tensor([width, height]) - wh)
        boxes.append(torch.cat([xy, xy + wh], dim=1))
        labels.append(torch.randint(0, 3, (k,), generator=g))
    return Batch(images=torch.randn(n, 3, height, width, generator=g), boxes=boxes, labels=labels,
                 ignore_boxes=[torch.zeros(0, 4)] * n, image_ids=list(range(n)), scale_factors=torch.ones(n, 2),
                 flipped=torch.zeros(n, dtype=torch.bool), image_sizes=[(height, width)] * n,
                 orig_sizes=[(height, width)] * n)


class Variant:
    """One student (copied from the same initialisation) with its optimiser and KD hook."""

    def __init__(self, name: str, student, teacher, method_name: str | None, detector: str, student_grad: str,
                 device: torch.device) -> None:
        self.name = name
        self.student = copy.deepcopy(student).to(device).train()
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=1e-4, momentum=0.9)
        self.distiller = None
        if method_name is not None:
            method = build_method(method_name, detector, DistillParams())
            self.distiller = Distiller(self.student, teacher, method, student_grad=student_grad).to(device)
        self.times: list[float] = []

    def step(self, batch: Batch) -> None:
        """The training loop's step (pipeline/engine/trainer.py) without data loading."""
        feats = self.student.features(batch.images)
        losses = self.student.losses(feats, batch)
        if self.distiller is not None:
            losses.update(self.distiller(feats, batch, losses))
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="gfl", choices=["gfl", "faster_rcnn"])
    parser.add_argument("--teacher", default="resnet101")
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    teacher = build_detector(args.detector, args.teacher, 3).to(device)
    student = build_detector(args.detector, args.student, 3)
    batch = make_batch(args.batch, args.height, args.width).to(device)
    variants = [Variant("plain", student, teacher, None, args.detector, "fused", device),
                Variant("mimic", student, teacher, "mimic", args.detector, "fused", device),
                Variant("gkd_bmfi", student, teacher, "gkd_bmfi", args.detector, "fused", device),
                Variant("gkd_bmfi_separate", student, teacher, "gkd_bmfi", args.detector, "separate", device)]
    print(f"{args.detector}: teacher {args.teacher}, student {args.student}, batch {args.batch} x "
          f"{args.height}x{args.width} on {device} ({torch.get_num_threads()} threads)")
    for r in range(args.warmup + args.repeats):
        for v in variants:
            torch.manual_seed(r)            # same RPN/RoI sampling draws for every variant
            sync(device)
            start = time.perf_counter()
            v.step(batch)
            sync(device)
            if r >= args.warmup:
                v.times.append(time.perf_counter() - start)
    med = {v.name: statistics.median(v.times) for v in variants}
    for v in variants:
        print(f"  {v.name:<18} median {med[v.name] * 1e3:8.1f} ms  (min {min(v.times) * 1e3:.1f}, "
              f"max {max(v.times) * 1e3:.1f}, n={len(v.times)})")
    best = {v.name: min(v.times) for v in variants}
    print(f"GKD-BMFI / mimic: {med['gkd_bmfi'] / med['mimic']:.2f} (target <= 1.30); "
          f"GKD-BMFI / plain: {med['gkd_bmfi'] / med['plain']:.2f}; "
          f"separate student backward: GKD-BMFI / mimic {med['gkd_bmfi_separate'] / med['mimic']:.2f}")
    print(f"best-of-{args.repeats} ratios (for a loaded machine): GKD-BMFI / mimic "
          f"{best['gkd_bmfi'] / best['mimic']:.2f}, GKD-BMFI / plain {best['gkd_bmfi'] / best['plain']:.2f}")

    # Breakdown of the GKD-BMFI step (profiled runs, after the timed ones).
    for v in variants[1:3]:
        v.distiller.profile = True
        v.distiller.timings.clear()
        totals = []
        for r in range(args.repeats):
            torch.manual_seed(r)
            sync(device)
            start = time.perf_counter()
            v.step(batch)
            sync(device)
            totals.append(time.perf_counter() - start)
        parts = {k: t / args.repeats for k, t in v.distiller.timings.items()}
        rest = sum(totals) / args.repeats - sum(parts.values())
        shown = ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in parts.items())
        print(f"  {v.name} per step: {shown}, student forward/backward + optimiser {rest * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
