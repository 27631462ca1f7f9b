"""DVC stage `qat_export@<dataset>-<detector>-<model>-<method>`: the QAT model -> a TensorRT-valid Q/DQ ONNX.

    python stages/qat_export.py <dataset> <detector> <model> <method>

Reads models/<dataset>/<detector>/qat/<method>/<model>.pt (the qat stage's) and writes
exports/<dataset>/<detector>/qat/<method>/<model>/ with model-int8.onnx (Q/DQ whose scales are the
trained fake quantizers', pipeline/quant/export_qdq.py) and manifest.json, after
* the parity gate: ONNX Runtime on the Q/DQ graph against the PyTorch fake-quant model on the val
  split, with ``qat.parity``'s tolerances (a failure leaves no folder behind);
* the TensorRT-readiness check (pipeline/deploy/trt_readiness.py), which must pass.
Also scores the same trained weights with the quantizers off (``mAP50_float_weights``, and the
int8 file's paired interval against them: what int8 itself costs, apart from the fine-tuning) and
writes the int8 file's val detections (detections/<dataset>/<detector>/qat/<method>/<model>.npz,
for the paired bootstrap of the qat table) and metrics/<dataset>/<detector>/qat/<method>/<model>.json,
with the int8 file's headline (mAP50, per-class AP50, KITTI moderate: what `dvc metrics show`
lists) in scores/<dataset>/<detector>/qat/<method>/<model>.json.
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.artifacts import curated_path
from pipeline.config import load_params
from pipeline.data.dataset import CuratedDataset, load_curated
from pipeline.deploy.bundle import export_qat_bundle
from pipeline.deploy.parity import previous_export_note
from pipeline.engine.checkpoint import Arch
from pipeline.engine.runs import QATRun
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_dir, write_json
from pipeline.engine.inference import predict_dataset
from pipeline.metrics import evaluate_detections
from pipeline.metrics.bootstrap import image_matches, paired_gain, save_detections
from pipeline.quant.qat import load_qat_model, quantizer_mode
from pipeline.artifacts import score_path
from pipeline.report.headline import write_accuracy


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("detector")
    parser.add_argument("model", help="a model of qat.models, e.g. gkd_bmfi-resnet18")
    parser.add_argument("method", help="a method of qat.methods (none: plain QAT)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run = QATRun(args.dataset, args.detector, args.model, args.method)
    val = CuratedDataset(load_curated(curated_path(run.dataset, "val")), params.input, train=False)
    arch = Arch(run.detector, run.backbone, len(val.class_names), tuple(val.class_names), params.model.fpn_channels)
    model, meta = load_qat_model(run.model_path, arch)
    identity = {"dataset": run.dataset, "detector": run.detector, "model": run.model, "backbone": run.backbone,
                "parent": args.model, "qat_method": args.method}
    start = time.perf_counter()
    with previous_export_note(run.export_dir), atomic_dir(run.export_dir) as tmp:
        manifest, dets = export_qat_bundle(model, tmp, params, val, identity, run.model_path)
    save_detections(run.detections_path, dets)
    entry = manifest["artifacts"]["model-int8.onnx"]
    # the same trained weights without quantization: what int8 itself costs, apart from the fine-tuning
    with quantizer_mode(model, "off"):
        float_dets = predict_dataset(model, val, torch.device("cpu"), params.eval.batch_size, progress=False)
    float_map = evaluate_detections(val.coco, float_dets)["mAP50"]
    versus_float = paired_gain([image_matches(val.coco, dets)], [image_matches(val.coco, float_dets)]).as_dict()
    write_json(run.metrics_path, {"model": run.model, "parent": args.model, "qat_method": args.method,
                              "epochs": meta.get("epochs"), "lr": meta.get("lr"), "kd_balance": meta.get("kd_balance"),
                              "mAP50": entry["eval"]["mAP50"], "voc_mAP50": entry["eval"]["voc_mAP50"],
                              "mAP50_pytorch_fake_quant": manifest["pytorch"]["mAP50"], "parity": manifest["parity"],
                              "mAP50_float_weights": float_map, "int8_vs_float_weights": versus_float,
                              "tensorrt_ready": entry["tensorrt_readiness"]["ready"],
                              "quantized_nodes": entry["recipe"]["quantized_nodes"]})
    write_accuracy(score_path(run.dataset, run.detector, args.model, args.method),
                   evaluate_detections(val.coco, dets))
    parity = manifest["parity"]
    print(f"exported {run} in {time.perf_counter() - start:.0f} s: int8 mAP50 ONNX Runtime {entry['eval']['mAP50']:.2f} "
          f"/ PyTorch fake-quant {parity['mAP50_pytorch']:.2f}, {parity['matched']} of {parity['detections_pytorch']} "
          f"PyTorch detections matched; TensorRT-ready {entry['tensorrt_readiness']['ready']} -> {run.export_dir}")


if __name__ == "__main__":
    main()
