"""Benchmark: a training step in float32 against the same step under ``train.amp`` (bfloat16
autocast on the CPU, float16 on CUDA).

Three steps of the default pipeline, each as the training loop runs it (autocast around the
forward, the losses and the KD terms; float32 backward, gradient clipping and SGD step):

* ``r18_baseline``: a GFL ResNet-18 student alone;
* ``r18_gkd_bmfi``: the same student distilled with GKD-BMFI from a ResNet-101 teacher (teacher
  forward, teacher head gradients, the fused student gradient, the BMFI terms);
* ``r101_teacher``: the GFL ResNet-101 teacher's own training step.

Each step has a float32 and an amp copy starting from the same weights. The six are timed
round-robin (float32 and amp of a step back to back, the order alternating per repeat) so that
load changes on a shared machine hit both precisions alike; the ratio amp / float32 of each step
is printed from the medians, and from the per-repeat pairs (median of the paired ratios), which
is the steadier figure on a busy machine. Both for the wall clock and for the process's CPU time:
with ``--threads 1`` the CPU time is the work itself, nearly unaffected by other processes
competing for the cores (with more threads it also counts the threads' spin-waits). Run from
the repository root::

    .venv/bin/python benchmarks/bench_amp.py                      # 4 x 96x320, 2 threads
    .venv/bin/python benchmarks/bench_amp.py --repeats 20 --threads 1
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

from bench_distill_step import make_batch, sync  # noqa: E402
from pipeline.config import DistillParams  # noqa: E402
from pipeline.distill.distiller import Distiller  # noqa: E402
from pipeline.distill.methods import build_method  # noqa: E402
from pipeline.engine.trainer import autocast_dtype  # noqa: E402
from pipeline.models.factory import build_detector  # noqa: E402
from pipeline.structures import Batch  # noqa: E402


class Step:
    """One model (copied from a shared initialisation) with its optimiser, KD hook and precision."""

    def __init__(self, model, teacher, amp: bool, device: torch.device, grad_clip: float = 35.0) -> None:
        self.model = copy.deepcopy(model).to(device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.distiller = None
        if teacher is not None:
            method = build_method("gkd_bmfi", "gfl", DistillParams())
            self.distiller = Distiller(self.model, teacher, method).to(device)
        self.device, self.grad_clip = device, grad_clip
        self.dtype = autocast_dtype(amp, device)
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def __call__(self, batch: Batch) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            feats = self.model.features(batch.images)
            losses = self.model.losses(feats, batch)
            if self.distiller is not None:
                losses.update(self.distiller(feats, batch, losses))
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise SystemExit(f"error: a non-finite loss {float(total)} under {self.dtype or torch.float32}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", nargs="+", default=["r18_baseline", "r18_gkd_bmfi", "r101_teacher"],
                        choices=["r18_baseline", "r18_gkd_bmfi", "r101_teacher"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    teacher = build_detector("gfl", "resnet101", 3).to(device)
    student = build_detector("gfl", "resnet18", 3)
    frozen = copy.deepcopy(teacher).eval()
    batch = make_batch(args.batch, args.height, args.width).to(device)
    models = {"r18_baseline": (student, None), "r18_gkd_bmfi": (student, frozen), "r101_teacher": (teacher, None)}
    pairs = {name: (Step(*models[name], False, device), Step(*models[name], True, device)) for name in args.steps}
    amp_name = str(autocast_dtype(True, device)).removeprefix("torch.")
    print(f"train step, float32 vs amp ({amp_name}): batch {args.batch} x {args.height}x{args.width} on {device} "
          f"({torch.get_num_threads()} threads), {args.repeats} interleaved repeats after {args.warmup} warm-up")
    for r in range(args.warmup + args.repeats):
        for name, pair in pairs.items():
            for step in (pair if r % 2 == 0 else pair[::-1]):
                sync(device)
                start, cpu = time.perf_counter(), time.process_time()
                step(batch)
                sync(device)
                if r >= args.warmup:
                    step.times.append(time.perf_counter() - start)
                    step.cpu_times.append(time.process_time() - cpu)
    for clock in ("times", "cpu_times"):
        print(f"\n{'wall' if clock == 'times' else 'process CPU'} time per step")
        print(f"| step | float32 median (ms) | {amp_name} median (ms) | ratio of medians | median paired ratio |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, (fp32, amp) in pairs.items():
            x, y = getattr(fp32, clock), getattr(amp, clock)
            a, b = statistics.median(x), statistics.median(y)
            paired = statistics.median(q / p for p, q in zip(x, y))
            print(f"| {name} | {a * 1e3:.0f} | {b * 1e3:.0f} | {b / a:.2f} | {paired:.2f} |")


if __name__ == "__main__":
    main()
