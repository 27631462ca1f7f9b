"""Print each KD method's gradient-norm ratio to the task loss at its written (paper) weights.

    .venv/bin/python benchmarks/kd_ratios.py [--params params.yaml] [--dataset synthetic]
        [--detector gfl] [--students resnet18 resnet50] [--methods gkd_bmfi mimic fgd ...]

Needs the teacher of ``distill.teacher`` (``dvc repro train@...``). Each student is built and
inherits the teacher's neck and head exactly as the distill stage does; the ratio
``||dL_KD/dF|| / ||dL_task/dF||`` at the student's FPN outputs is measured on the first
``distill.balance.batches`` training batches (pipeline/distill/balance.py), with per-term ratios
and the factor ``auto`` would apply. Nothing is trained or written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params  # noqa: E402
from pipeline.distill.balance import calibration_batches, measure  # noqa: E402
from pipeline.distill.distiller import Distiller, load_teacher  # noqa: E402
from pipeline.distill.methods import build_method  # noqa: E402
from pipeline.distill.setup import build_student  # noqa: E402
from pipeline.engine.checkpoint import Arch  # noqa: E402
from pipeline.engine.runs import RunId  # noqa: E402
from pipeline.engine.trainer import seed_everything  # noqa: E402
from pipeline.engine.recipe import training_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--detector", default="gfl")
    parser.add_argument("--students", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=["gkd_bmfi", "bmfi", "mfi", "gkd", "mimic", "fgd", "fgfi",
                                                         "defeat"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    params = load_params(args.params)
    d = params.distill
    data = training_set(params, args.dataset)
    batches = calibration_batches(data, params.train.batch_size, d.balance.batches, params.seed)
    print(f"{args.dataset}/{args.detector}, teacher {d.teacher}, {len(batches)} batches of {params.train.batch_size}, "
          f"target ratio {d.balance.ratio}")
    print("| student | method | KD/task ratio (paper weights) | auto factor | per term |")
    print("| --- | --- | ---: | ---: | --- |")
    for student_name in args.students:
        run = RunId(args.dataset, args.detector, f"probe-{student_name}")
        arch = Arch(run.detector, run.backbone, len(data.class_names), tuple(data.class_names),
                    params.model.fpn_channels)
        teacher = load_teacher(RunId(args.dataset, args.detector, d.teacher).model_path, arch)
        for name in args.methods:
            seed_everything(params.seed)
            student, _ = build_student(params, run, arch, teacher)
            method = build_method(name, args.detector, d, params.model.fpn_channels, len(student.strides), args.dataset)
            start = time.perf_counter()
            with Distiller(student, teacher, method, d.student_grad) as distiller:
                norms = measure(distiller, batches, torch.device("cpu"))
            terms = ", ".join(f"{k.split('_')[-1]} {v:.3g}" for k, v in norms.term_ratios().items())
            print(f"| {student_name} | {name} | {norms.ratio:.4g} | {d.balance.ratio / norms.ratio:.3g} | {terms} | "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
