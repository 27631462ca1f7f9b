"""DVC stage `qat@<dataset>-<detector>-<model>-<method>`: quantization-aware training of a deployed student.

    python stages/qat.py <dataset> <detector> <model> <method>

``model`` is a model of ``qat.models`` (e.g. gkd_bmfi-resnet18), ``method`` one of
``qat.methods``: ``none`` (plain QAT, the detection loss only) or a KD method of
pipeline/distill/methods.py, whose terms are added against the float32 teacher
``distill.teacher``, weighed by ``distill.balance`` exactly as in the distill stage.

Order: load the trained float32 model; fold its BatchNorms and insert int8 fake quantizers with
the placement of the TensorRT int8 export (pipeline/quant/qat.py); calibrate the activation
ranges on the ``deploy.calib_images`` training images the post-training int8 export calibrates
on; fine-tune ``qat.epochs`` at ``qat.lr``. Writes models/<dataset>/<detector>/qat/<method>/<model>.pt
(named ``<role>_qat-<backbone>`` or ``<role>_qat_<method>-<backbone>`` in the tables; meta:
parent, method, the balanced KD weights, the quantization scheme) and its DVCLive folder
dvclive/<dataset>/<detector>/qat/<method>/<model>/. Resumable state lives in
checkpoints/<dataset>/<detector>/qat/<method>/<model>/last.pt (scratch outside DVC, as for the
train stage). One process (no data-parallel
launcher).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from pipeline.artifacts import curated_path
from pipeline.config import Params, load_params
from pipeline.data.dataset import CuratedDataset, collate, load_curated
from pipeline.distill.distiller import load_teacher
from pipeline.distill.methods import METHODS, build_method, method_settings
from pipeline.distill.setup import balanced_distiller
from pipeline.engine.checkpoint import Arch, load_trained
from pipeline.engine.distributed import resolve_device
from pipeline.engine.recipe import loop_config, training_set, weights_fingerprint
from pipeline.engine.runs import QATRun, RunId
from pipeline.engine.trainer import train
from pipeline.engine.validation import epoch_validation
from pipeline.errors import UserError, exit_on_user_error
from pipeline.io import file_sha256
from pipeline.quant.calibration import calibration_images
from pipeline.quant.qat import calibrate_activations, prepare_qat, save_qat_model

CALIBRATION_BATCH = 8


def check_qat_run(params: Params, model: str, method: str, source: str) -> None:
    """One line when ``model``/``method`` is no QAT run of the params file ``source``."""
    if method != "none" and method not in METHODS:
        raise UserError(f"{source}: qat.methods names {method!r}, which is no method; use none (plain QAT) or a "
                        f"KD method: {', '.join(METHODS)}")
    if method not in params.qat.methods:
        raise UserError(f"{source}: qat.methods {list(params.qat.methods)} does not list {method!r}")
    if model not in params.qat.models:
        raise UserError(f"{source}: qat.models {list(params.qat.models)} does not list {model!r}")
    if model not in params.deploy.models or "int8" not in params.deploy.precisions:
        raise UserError(f"{source}: qat.models names {model!r}, but QAT is compared with its post-training "
                        f"int8 export: add it to deploy.models {list(params.deploy.models)} and keep 'int8' in "
                        "deploy.precisions")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("model", help="a model of qat.models, e.g. gkd_bmfi-resnet18")
    parser.add_argument("method", help="none (plain QAT) or a KD method, e.g. gkd_bmfi")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    check_qat_run(params, args.model, args.method, args.params)
    parent = RunId(args.dataset, args.detector, args.model)
    run = QATRun(args.dataset, args.detector, args.model, args.method)
    device = resolve_device(params.train.device)
    data = training_set(params, run.dataset)
    arch = Arch(run.detector, run.backbone, len(data.class_names), tuple(data.class_names),
                params.model.fpn_channels)
    model, _ = load_trained(parent, data.class_names, params.model.fpn_channels)
    quantized = prepare_qat(model)

    plain = CuratedDataset(load_curated(curated_path(run.dataset, "train")), params.input, train=False)
    chosen = calibration_images(plain, params.deploy.calib_images)
    calib = (collate([plain[i] for i in chosen[k:k + CALIBRATION_BATCH]])
             for k in range(0, len(chosen), CALIBRATION_BATCH))
    images = calibrate_activations(model, calib, device)

    # The fake-quantised values cross each conv as float32 on the CPU: under bfloat16 autocast
    # (8 significant bits) code x scale would leave the int8 grid the export ships; on CUDA,
    # float16 keeps 11 bits and train.amp applies as in training.
    cfg = dataclasses.replace(loop_config(params, params.qat.epochs), lr=params.qat.lr, lr_steps=(),
                              amp=params.train.amp and device.type == "cuda")
    distiller, method, balanced, extra_key = None, None, None, {}
    if args.method != "none":
        d = params.distill
        teacher_run = RunId(run.dataset, run.detector, d.teacher)
        teacher = load_teacher(teacher_run.model_path, arch)
        method = build_method(args.method, run.detector, d, params.model.fpn_channels, len(model.strides),
                              run.dataset)
        balanced = balanced_distiller(model, teacher, method, d, data, cfg.batch_size, cfg.seed, device, str(run))
        distiller = balanced.distiller
        extra_key = {"distill": method_settings(args.method, run.detector, d, run.dataset),
                     "teacher_sha256": file_sha256(teacher_run.model_path)}

    key = weights_fingerprint(run, arch, cfg, params, data,
                              {"parent_sha256": file_sha256(parent.model_path), "method": args.method,
                               "calibration": [plain.images[i]["id"] for i in chosen]}, extra_key)
    start = time.perf_counter()
    try:
        result = train(model, data, cfg, run.checkpoint_dir, device, key, extra=distiller, extra_module=method,
                       desc=str(run), log_dir=run.live_dir,
                       validate=epoch_validation(params, run.dataset, device),
                       epoch_metrics=balanced.epoch_metrics if balanced is not None else None)
    finally:
        if distiller is not None:
            distiller.close()
    save_qat_model(run.model_path, model, arch,
                   meta={"role": run.role, "parent": args.model, "qat_method": args.method, "epochs": cfg.epochs,
                         "lr": cfg.lr, "dataset": run.dataset, "teacher": params.distill.teacher
                         if distiller is not None else None, "calibration_images": images,
                         "quantized_layers": len(quantized),
                         "kd_balance": balanced.balance if balanced is not None else None})
    last = result.history[-1] if result.history else {}
    print(f"QAT {run} from {parent.model} ({len(quantized)} layers fake-quantized, {images} calibration images) "
          f"in {time.perf_counter() - start:.0f} s (final loss {last.get('loss', float('nan')):.3f}) -> {run.model_path}")


if __name__ == "__main__":
    main()
