"""Fill one export folder: ONNX (parity-gated) -> precision variants -> evaluation -> engines -> manifest.

``export_bundle`` is what the `export` stage runs for one model. The caller passes a fresh
(temporary) folder; any failure leaves nothing behind because the stage wraps it in
:func:`pipeline.io.atomic_dir`.
"""
from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from pipeline.config import Params
from pipeline.data import transforms as T
from pipeline.data.dataset import CuratedDataset
from pipeline.deploy.export_onnx import INPUT_NAMES, OUTPUT_NAMES, export_onnx
from pipeline.deploy.manifest import FORMAT, preprocessing_record, sha256, write_manifest
from pipeline.deploy.parity import backend_detections, check_parity, parity_report
from pipeline.deploy.precision import TENSORRT_PRECISIONS, artifact_name, runtime_of, to_fp16, to_int8
from pipeline.deploy.runtime import OnnxBackend
from pipeline.deploy.tensorrt_build import build_engines, profile_shapes
from pipeline.deploy.trt_readiness import check_graph, require_ready
from pipeline.engine.inference import predict_dataset
from pipeline.errors import UserError
from pipeline.metrics import evaluate_detections
from pipeline.models.detector import Detector


def calibration_feeds(train: CuratedDataset, count: int) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """``count`` training images spread evenly over the split (no flip), as ORT feeds."""
    n = min(count, len(train))
    indices = sorted(set(np.linspace(0, len(train) - 1, n).round().astype(int).tolist()))

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for i in indices:
            sample = train[i]
            yield {"images": sample.image[None], "image_sizes": np.array([sample.image_size], dtype=np.float32)}

    return feeds(), len(indices)


def _metrics(coco: dict, dets: dict) -> dict[str, float]:
    m = evaluate_detections(coco, dets)
    return {"mAP50": m["mAP50"], "voc_mAP50": m["voc_mAP50"], "mAP": m["mAP"]}


def _evaluate_onnx(path: Path, val: CuratedDataset, batch_size: int, threads: int | None) -> tuple[dict, dict]:
    """ORT-CPU detections and metrics of one ONNX file over val (``{"skipped": why}`` if it cannot run)."""
    try:
        backend = OnnxBackend(path, ["CPUExecutionProvider"], threads)
        dets = backend_detections(backend, val, batch_size)
    except UserError as err:
        return {"skipped": f"onnxruntime CPU cannot run it: {err}"}, {}
    except Exception as err:  # noqa: BLE001 - an ORT kernel missing for a dtype fails only at run time
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return {"skipped": f"onnxruntime CPU cannot run it: {first}"}, {}
    return {"backend": "onnxruntime", "providers": backend.providers, "split": "val", "num_images": len(val),
            **_metrics(val.coco, dets)}, dets


def export_bundle(model: Detector, folder: Path, params: Params, val: CuratedDataset, train: CuratedDataset,
                  identity: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """Export ``model`` into ``folder`` and return the manifest written there.

    Raises :class:`UserError` when the fp32 graph fails the parity gate.
    """
    deploy = params.deploy
    input_hw = params.input.padded_shape
    batch_size = params.eval.batch_size if deploy.dynamic_batch else 1     # a static graph takes one image
    model = model.eval().cpu()
    fp32 = folder / artifact_name("fp32")
    info = export_onnx(model, fp32, input_hw, deploy.opset, deploy.dynamic_batch, deploy.simplify)

    # parity gate: PyTorch vs ONNX Runtime (fp32) on the val split
    torch_dets = predict_dataset(model, val, torch.device("cpu"), batch_size, progress=False)
    onnx_eval, onnx_dets = _evaluate_onnx(fp32, val, batch_size, None)
    if "skipped" in onnx_eval:
        raise UserError(f"{fp32}: {onnx_eval['skipped']}")
    tol = deploy.parity
    report = parity_report(val.coco, torch_dets, onnx_dets, tol, info.nms["score_thr"], info.max_detections)
    check_parity(report, tol, f"{identity['dataset']}/{identity['detector']}/{identity['model']}")

    artifacts: dict[str, dict[str, Any]] = {
        fp32.name: {"kind": "onnx", "precision": "fp32", "recipe": {"precision": "fp32"}, "eval": onnx_eval}}
    for precision in deploy.precisions:
        if precision == "fp32":
            continue
        path = folder / artifact_name(precision)
        if precision == "fp16":
            recipe = to_fp16(fp32, path)
        else:
            train_feeds, count = calibration_feeds(train, deploy.calib_images)
            recipe = to_int8(fp32, path, train_feeds, count, deploy.calib_method,
                             "cpu" if precision == "int8_cpu" else "tensorrt")
        evaluation, _ = _evaluate_onnx(path, val, batch_size, None)
        if "mAP50" in evaluation:
            evaluation["delta_mAP50_vs_fp32"] = evaluation["mAP50"] - onnx_eval["mAP50"]
        artifacts[path.name] = {"kind": "onnx", "precision": precision, "recipe": recipe, "eval": evaluation}
    for name, entry in artifacts.items():
        entry["runtime"] = runtime_of(entry["precision"])
        if entry["precision"] in TENSORRT_PRECISIONS:     # meant for TensorRT: its parser's rules apply
            entry["tensorrt_readiness"] = check_graph(folder / name)
            require_ready(folder / name, entry["tensorrt_readiness"])
        entry["sha256"] = sha256(folder / name)

    trt = deploy.tensorrt
    onnx_files = {entry["precision"]: name for name, entry in artifacts.items()
                  if entry["precision"] in TENSORRT_PRECISIONS}
    h, w = input_hw
    shapes = profile_shapes([0 if deploy.dynamic_batch else 1, 3, h, w], deploy.dynamic_batch, trt.max_batch,
                            trt.opt_batch)
    tensorrt, engines = build_engines(folder, onnx_files, shapes, trt.workspace_mib)
    for entry in engines.values():  # pragma: no cover - needs TensorRT and a GPU
        entry["recipe"] = artifacts[entry["source_onnx"]]["recipe"]
    artifacts.update(engines)

    inp = params.input
    manifest = {
        "format": FORMAT,
        "model": {**identity, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint)},
        "class_names": list(val.class_names),
        "input": {"name": INPUT_NAMES[0], "shape": ["N" if deploy.dynamic_batch else 1, 3, h, w], "dtype": "float32",
                  "layout": "NCHW", "dynamic_batch": deploy.dynamic_batch,
                  "image_sizes": {"name": INPUT_NAMES[1], "shape": ["N", 2], "dtype": "float32",
                                  "meaning": "(h, w) of each resized image before padding; boxes are clipped to it"}},
        "preprocessing": preprocessing_record(inp.width, inp.height, input_hw, inp.mean, inp.std,
                                              T.INTERPOLATION),
        "outputs": {"names": list(OUTPUT_NAMES), "num_dets": "[N, 1] int32",
                    "boxes": f"[N, {info.max_detections}, 4] float32 x1,y1,x2,y2 in network-input pixels",
                    "scores": f"[N, {info.max_detections}] float32 descending",
                    "labels": f"[N, {info.max_detections}] int32 class index, -1 in empty slots"},
        "nms": info.nms,
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "opset": info.opset, "ir_version": info.ir_version, "simplified": info.simplified,
                     "num_nodes": info.num_nodes, "external_data": False, "python": platform.python_version()},
        "pytorch": {"backend": "pytorch-cpu", "split": "val", "num_images": len(val), **_metrics(val.coco, torch_dets)},
        "parity": report,
        "artifacts": artifacts,
        "tensorrt": tensorrt,
    }
    write_manifest(folder, manifest)
    return manifest
