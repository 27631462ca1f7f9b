"""DVC stage `evaluate@...`: score a model on the val split -> metrics/<dataset>/<detector>/<model>.json.

Its headline (mAP50, per-class AP50, KITTI moderate: what `dvc metrics show` lists) goes to
scores/<dataset>/<detector>/<model>.json (pipeline/report/headline.py).

Also writes detections/<dataset>/<detector>/<model>.npz (every val detection, original pixels) for
the paired bootstrap of the distillation tables, and plots/eval/<dataset>/<detector>/<model>/
(predictions on val images, precision-recall curves, confusion matrix: pipeline/report/pictures.py).
The metrics file holds the COCO and VOC mAP50 (percent), per-class AP, KITTI AP40 where the
data has KITTI difficulty fields, the parameter count, GFLOPs at 3x224x224 (one multiply-add
is one FLOP, as the paper's Table 4) and the inference throughput.
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.artifacts import curated_path
from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.engine.inference import predict_dataset
from pipeline.engine.checkpoint import load_trained
from pipeline.engine.distributed import resolve_device
from pipeline.engine.runs import RunId
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_dir, write_json
from pipeline.metrics import evaluate_detections
from pipeline.metrics.bootstrap import save_detections
from pipeline.models.complexity import count_parameters
from pipeline.models.factory import detector_gflops
from pipeline.artifacts import score_path
from pipeline.report.headline import write_accuracy
from pipeline.report.pictures import write_pictures


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("model")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run = RunId(args.dataset, args.detector, args.model)
    val = CuratedDataset(load_curated(curated_path(run.dataset, "val")), params.input, train=False)
    model, meta = load_trained(run, val.class_names, params.model.fpn_channels)
    device = resolve_device(params.train.device)
    start = time.perf_counter()
    detections = predict_dataset(model, val, device, params.eval.batch_size)
    metrics = evaluate_detections(val.coco, detections)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        gflops = detector_gflops(model.cpu(), (1, 3, 224, 224))
    metrics.update({
        "model": run.model, "detector": run.detector, "backbone": run.backbone, "dataset": run.dataset,
        "role": meta.get("role", run.role), "params_M": count_parameters(model) / 1e6, "gflops_224": gflops,
        "eval_images_per_s": len(val) / max(elapsed, 1e-9), "device": device.type,
    })
    if "kd_balance" in meta:
        metrics["kd_balance"] = meta["kd_balance"]
    save_detections(run.detections_path, detections)
    with atomic_dir(run.pictures_dir) as folder:
        if params.eval.pictures:
            write_pictures(folder, val.coco, detections, metrics, params.eval.pictures, params.eval.picture_score,
                           str(run))
    write_json(run.metrics_path, metrics)
    write_accuracy(score_path(run.dataset, run.detector, run.model), metrics)
    print(f"{run}: mAP50 {metrics['mAP50']:.2f}  voc_mAP50 {metrics['voc_mAP50']:.2f}  "
          f"params {metrics['params_M']:.2f} M  GFLOPs {gflops:.2f} -> {run.metrics_path}")


if __name__ == "__main__":
    main()
