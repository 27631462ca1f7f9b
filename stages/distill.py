"""DVC stage `distill@<dataset>-<detector>-<student>-<method>`: train a student against the frozen teacher.

    python stages/distill.py <dataset> <detector> <student backbone> <method>

Writes models/<dataset>/<detector>/<method>-<student>.pt (the model-file format of the train
stage, role = method, its meta holding the KD weights as balanced), dvclive/<dataset>/<detector>/
<method>-<student>/ (loss and KD terms every few steps; per epoch also the KD-to-task gradient
ratio and the KD weights), logs/kd_balance/<dataset>/<detector>/<method>-<student>.json (that ratio at the
calibration, epoch 0, and after every epoch: a DVC plot) and plots/gradmaps/<dataset>/<detector>/
<method>-<student>/<image>.png (teacher and student gradient maps at the start and end, the
paper's Fig. 4; an empty folder for a method without a KD term, inherit_only). The teacher is
models/<dataset>/<detector>/<distill.teacher>.pt. Resumable state lives in
checkpoints/<dataset>/<detector>/<method>-<student>/last.pt, scratch outside DVC as for the train stage.

Order: build the student (seeded), inherit the teacher's neck and head (``distill.inherit``),
draw the "start" maps, balance the KD weights (``distill.balance``, pipeline/distill/balance.py),
train, draw the "end" maps. Nothing re-initialises the student after inheriting.
"""
from __future__ import annotations

import argparse
import time

from pipeline.artifacts import curated_path
from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.distill.distiller import load_teacher
from pipeline.distill.gradmaps import gradmap_batch, maps_of, render
from pipeline.distill.methods import build_method, check_method, method_settings, paper_overrides
from pipeline.distill.setup import balanced_distiller, build_student
from pipeline.engine import distributed
from pipeline.engine.checkpoint import Arch, save_model
from pipeline.engine.recipe import loop_config, role_epochs, training_set, weights_fingerprint
from pipeline.engine.runs import RunId
from pipeline.engine.trainer import train
from pipeline.engine.validation import epoch_validation
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_dir, file_sha256, write_json


def balance_rows(balance: dict, history: list[dict]) -> list[dict]:
    """The KD-to-task gradient ratio at the calibration (epoch 0) and after each epoch, in all
    and per term (``ratio_<term>``) and term group (``ratio_group_<group>``, ``auto_terms``)."""
    rows = [{"epoch": 0, "kd_task_grad_ratio": balance["ratio"],
             **{f"ratio_{k}": v for k, v in balance.get("term_ratios", {}).items()},
             **{f"ratio_group_{k}": v for k, v in (balance.get("group_ratios") or {}).items()}}]
    rows += [{"epoch": h["epoch"], "kd_task_grad_ratio": h["kd_task_grad_ratio"],
              **{k: v for k, v in h.items() if k.startswith("ratio_")}}
             for h in history if "kd_task_grad_ratio" in h]
    return rows


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("student", help="student backbone, e.g. resnet18")
    parser.add_argument("method", help="KD method, e.g. gkd_bmfi (pipeline/distill/methods.py)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    check_method(args.method)
    d = params.distill
    run = RunId(args.dataset, args.detector, f"{args.method}-{args.student}")
    teacher_run = RunId(args.dataset, args.detector, d.teacher)
    data = training_set(params, run.dataset)
    arch = Arch(run.detector, run.backbone, len(data.class_names), tuple(data.class_names),
                params.model.fpn_channels)
    teacher = load_teacher(teacher_run.model_path, arch)
    student, inherited = build_student(params, run, arch, teacher)
    method = build_method(args.method, run.detector, d, params.model.fpn_channels, len(student.strides), run.dataset)
    epochs = role_epochs(params, args.method)
    cfg = loop_config(params, epochs)
    env, device = distributed.setup(distributed.resolve_device(params.train.device), params.distributed.backend,
                                    cfg.batch_size)
    student = distributed.convert_sync_bn(student, env, device, params.distributed.sync_bn)

    val = CuratedDataset(load_curated(curated_path(run.dataset, "val")), params.input, train=False)
    # a method without a KD term (inherit_only) has no gradient map to show: its folder stays empty
    pictures = gradmap_batch(val, d.gradmap_images) if method.WEIGHTS else None
    rows = {}
    if pictures is not None and env.is_main:
        teacher.to(device)
        student.to(device)
        on_device = pictures.to(device)
        rows["teacher"] = maps_of(teacher, on_device, d.gkd.signed, sign=d.gkd.sign)
        rows["student start"] = maps_of(student, on_device, d.gkd.signed, sign=d.gkd.sign)

    balanced = balanced_distiller(student, teacher, method, d, data, cfg.batch_size, cfg.seed, device, str(run),
                                  announce=env.is_main)
    distiller, balance = balanced.distiller, balanced.balance
    balance["paper_params"] = {"distill": paper_overrides(args.method, run.detector, method, d, run.dataset)}

    key = weights_fingerprint(run, arch, cfg, params, data,
                              method_settings(args.method, run.detector, d, run.dataset),
                              file_sha256(teacher_run.model_path))
    start = time.perf_counter()
    with distiller:
        result = train(student, data, cfg, run.checkpoint_dir, device, key, extra=distiller, desc=str(run),
                       extra_module=method, rank=env.rank, world_size=env.world_size,
                       wrap=distributed.ddp_wrapper(env, device), epoch_metrics=balanced.epoch_metrics,
                       log_dir=run.live_dir, validate=epoch_validation(params, run.dataset, device))
    if not env.is_main:
        distributed.teardown(env)
        return

    with atomic_dir(run.gradmap_dir) as folder:
        if pictures is not None:
            rows["student end"] = maps_of(student, pictures.to(device), d.gkd.signed, sign=d.gkd.sign)
            render(pictures, rows, tuple(student.strides), folder, params.input.mean, params.input.std, str(run))
    save_model(run.model_path, student, arch,
               meta={"role": args.method, "epochs": epochs, "dataset": run.dataset, "teacher": d.teacher,
                     "inherit": d.inherit, "inherited_tensors": len(inherited), "kd_balance": balance})
    write_json(run.balance_log_path, balance_rows(balance, result.history))
    last = result.history[-1] if result.history else {}
    kd = {k: round(v, 4) for k, v in last.items() if k.startswith("kd_")}
    print(f"distilled {run} from {teacher_run.model} in {time.perf_counter() - start:.0f} s on "
          f"{env.world_size} x {device} (final loss {last.get('loss', float('nan')):.3f}, {kd}) -> {run.model_path}")
    distributed.teardown(env)


if __name__ == "__main__":
    main()
