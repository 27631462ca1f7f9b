"""Fill one export folder: ONNX (parity-gated) -> precision variants -> evaluation -> engines -> manifest.

``export_bundle`` is what the `export` stage runs for one model. The caller passes a fresh
(temporary) folder; any failure leaves nothing behind because the stage wraps it in
:func:`pipeline.io.atomic_dir`.
"""
from __future__ import annotations

import platform
import tempfile
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
from pipeline.deploy.export_onnx import INPUT_NAMES, OUTPUT_NAMES, ExportInfo, export_module, export_onnx, output_shapes
from pipeline.deploy.int8_sensitivity import (choose_float32, graph_drop, groups_of_nodes, layer_groups,
                                              sensitivity_table, val_subset)
from pipeline.deploy.manifest import FORMAT, conventions_record, preprocessing_record, sha256, write_manifest
from pipeline.deploy.parity import backend_detections, camera_record, camera_split, check_parity, parity_report
from pipeline.deploy.precision import TENSORRT_PRECISIONS, artifact_name, runtime_of, to_fp16, to_int8
from pipeline.deploy.runtime import OnnxBackend
from pipeline.deploy.tensorrt_build import build_engines, profile_shapes
from pipeline.deploy.trt_readiness import check_graph, require_ready
from pipeline.engine.inference import predict_dataset
from pipeline.errors import UserError
from pipeline.metrics import evaluate_detections
from pipeline.models.detector import Detector
from pipeline.quant.calibration import calibration_images
from pipeline.quant.export_qdq import write_qdq
from pipeline.quant.placement import score_layers
from pipeline.quant.qat import quantizer_mode


def calibration_feeds(train: CuratedDataset, count: int) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """The int8 calibration images of ``train`` (:func:`pipeline.quant.calibration.calibration_images`),
    as ORT feeds."""
    indices = calibration_images(train, count)

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for i in indices:
            sample = train[i]
            yield {"images": sample.image[None], "image_sizes": np.array([sample.image_size], dtype=np.float32)}

    return feeds(), len(indices)


def _metrics(coco: dict, dets: dict) -> dict[str, float]:
    m = evaluate_detections(coco, dets)
    return {"mAP50": m["mAP50"], "voc_mAP50": m["voc_mAP50"], "mAP": m["mAP"]}


def eval_batch(params: Params) -> int:
    """Images per ONNX Runtime call over val: ``eval.batch_size``, or 1 for a static-batch graph."""
    return params.eval.batch_size if params.deploy.dynamic_batch else 1


def _evaluate_onnx(path: Path, val: CuratedDataset, batch_size: int, threads: int | None,
                   qdq_as_written: bool = False) -> tuple[dict, dict]:
    """ORT-CPU detections and metrics of one ONNX file over val (``{"skipped": why}`` if it cannot run);
    ``qdq_as_written``: see :class:`pipeline.deploy.runtime.OnnxBackend`."""
    try:
        backend = OnnxBackend(path, ["CPUExecutionProvider"], threads, qdq_as_written)
        dets = backend_detections(backend, val, batch_size)
    except UserError as err:
        return {"skipped": f"onnxruntime CPU cannot run it: {err}"}, {}
    except Exception as err:  # noqa: BLE001 - an ORT kernel missing for a dtype fails only at run time
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return {"skipped": f"onnxruntime CPU cannot run it: {first}"}, {}
    return {"backend": "onnxruntime", "providers": backend.providers, "split": "val", "num_images": len(val),
            "qdq": "as written" if qdq_as_written else "fused by onnxruntime",
            "session_config": {"session.disable_quant_qdq": "1"} if qdq_as_written else {},
            **_metrics(val.coco, dets)}, dets


def _evaluate_int8(path: Path, val: CuratedDataset, batch_size: int) -> tuple[dict, dict]:
    """A TensorRT-targeted int8 file over val: its Q/DQ as written (the graph's arithmetic, which
    TensorRT implements) gives the mAP; onnxruntime's fused integer CPU kernels are recorded
    beside it as ``onnxruntime_fused_mAP50``."""
    evaluation, dets = _evaluate_onnx(path, val, batch_size, None, qdq_as_written=True)
    fused, _ = _evaluate_onnx(path, val, batch_size, None)
    if "mAP50" in evaluation and "mAP50" in fused:
        evaluation["onnxruntime_fused_mAP50"] = fused["mAP50"]
    return evaluation, dets


def int8_float32(fp32: Path, params: Params, val: CuratedDataset, train: CuratedDataset) -> tuple[list[str], dict]:
    """The Conv/Gemm nodes the int8 files keep in float32 (``deploy.int8_float32``) and the manifest's
    ``int8_sensitivity`` record: the layer-group table (:mod:`pipeline.deploy.int8_sensitivity`)
    measured with an all-int8 TensorRT-recipe graph (one calibration) scored with its Q/DQ as
    written on ``deploy.int8_sensitivity_images`` val images, and the chosen groups with how."""
    deploy = params.deploy
    graph = onnx.load(str(fp32))
    groups = layer_groups(graph)
    scores = score_layers(graph)
    subset = val_subset(val, deploy.int8_sensitivity_images)
    batch_size = eval_batch(params)

    def map50_of(path: Path, as_written: bool = True) -> float:
        evaluation, _ = _evaluate_onnx(path, subset, batch_size, None, qdq_as_written=as_written)
        if "mAP50" not in evaluation:
            raise UserError(f"{fp32}: int8 sensitivity: {evaluation['skipped']}")
        return evaluation["mAP50"]

    with tempfile.TemporaryDirectory(prefix="int8-all-") as tmp:
        every = Path(tmp) / "all-int8.onnx"
        feeds, count = calibration_feeds(train, deploy.calib_images)
        to_int8(fp32, every, feeds, count, deploy.calib_method, "tensorrt", float32_layers=[],
                float32_rule="none: every Conv/Gemm int8")
        fp32_map50 = map50_of(fp32, as_written=False)
        drop = graph_drop(every, fp32, groups, fp32_map50, map50_of)
        table = sensitivity_table(groups, drop)
        start = groups_of_nodes(groups, scores)
        if deploy.int8_float32 == "auto":
            choice = choose_float32(table, start, drop, deploy.int8_max_drop)
            chosen = [n for g in choice["float32_groups"] for n in groups[g]]
        else:
            choice = {"float32_groups": start, "drop": drop(frozenset(start))}
            chosen = scores
    record = {"split": "val", "num_images": len(subset),
              "images": "deploy.int8_sensitivity_images val images spread evenly over the split (all of val if fewer)",
              "arithmetic": "TensorRT int8 recipe, Q/DQ as written (session.disable_quant_qdq = 1), one calibration",
              "drop": "fp32 mAP50 - variant mAP50 on these images, mAP50 points (positive: int8 is worse)",
              "fp32_mAP50": fp32_map50, "groups": {g: len(nodes) for g, nodes in groups.items()},
              "score_layer_groups": start, **table,
              "float32": {"rule": deploy.int8_float32, "max_drop": deploy.int8_max_drop, **choice}}
    return chosen, record


def _parity_gate(model: Detector, path: Path, val: CuratedDataset, params: Params, info: ExportInfo,
                 identity: dict[str, Any], quantized: bool = False) -> tuple[dict, dict[str, Any], dict, dict[str, Any]]:
    """PyTorch against ONNX Runtime (``path``) on the val split and on val images stretched to
    camera sizes (:func:`pipeline.deploy.parity.camera_split`: scale factors that are not
    integers); raises :class:`UserError` when the detections of either disagree beyond
    ``deploy.parity`` (on the camera sizes: the per-detection matching). A ``quantized`` graph
    (QAT) runs with its Q/DQ as written, the arithmetic of PyTorch's fake quantization
    (:func:`_evaluate_int8`), under ``qat.parity``. Returns ``(torch detections, ORT evaluation,
    ORT detections, parity report)`` of val; the report holds the camera sizes' as ``camera_sizes``."""
    batch_size = eval_batch(params)
    section, tol = ("qat.parity", params.qat.parity) if quantized else ("deploy.parity", params.deploy.parity)
    where = f"{identity['dataset']}/{identity['detector']}/{identity['model']}"
    torch_dets = predict_dataset(model, val, torch.device("cpu"), batch_size, progress=False)
    onnx_eval, onnx_dets = (_evaluate_int8(path, val, batch_size) if quantized
                            else _evaluate_onnx(path, val, batch_size, None))
    if "skipped" in onnx_eval:
        raise UserError(f"{path}: {onnx_eval['skipped']}")
    report = parity_report(val.coco, torch_dets, onnx_dets, tol, info.nms["score_thr"], info.max_detections)
    check_parity(report, tol, where, section)
    with tempfile.TemporaryDirectory(prefix="parity-camera-") as tmp:
        camera = camera_split(val, Path(tmp))
        camera_torch = predict_dataset(model, camera, torch.device("cpu"), batch_size, progress=False)
        camera_eval, camera_onnx = _evaluate_onnx(path, camera, batch_size, None, qdq_as_written=quantized)
        if "skipped" in camera_eval:
            raise UserError(f"{path}: {camera_eval['skipped']}")
        camera_report = {**camera_record(camera), **parity_report(camera.coco, camera_torch, camera_onnx, tol,
                                                                   info.nms["score_thr"], info.max_detections)}
    check_parity(camera_report, tol, f"{where} (val images at camera sizes)", section, map50=False)
    report["camera_sizes"] = camera_report
    return torch_dets, onnx_eval, onnx_dets, report


def _check_and_build(folder: Path, artifacts: dict[str, dict[str, Any]], params: Params) -> dict[str, Any]:
    """Each ONNX file's runtime, TensorRT-readiness (a TensorRT-targeted file that would not parse
    stops the export) and sha256; then the TensorRT engines, added to ``artifacts``. Returns the
    manifest's ``tensorrt`` record."""
    deploy = params.deploy
    for name, entry in artifacts.items():
        entry["runtime"] = runtime_of(entry["precision"])
        if entry["precision"] in TENSORRT_PRECISIONS:     # meant for TensorRT: its parser's rules apply
            entry["tensorrt_readiness"] = check_graph(folder / name, deploy.tensorrt.nms_max_boxes)
            require_ready(folder / name, entry["tensorrt_readiness"])
        entry["sha256"] = sha256(folder / name)
    trt = deploy.tensorrt
    onnx_files = {entry["precision"]: name for name, entry in artifacts.items()
                  if entry["precision"] in TENSORRT_PRECISIONS}
    h, w = params.input.padded_shape
    shapes = profile_shapes([0 if deploy.dynamic_batch else 1, 3, h, w], deploy.dynamic_batch, trt.max_batch,
                            trt.opt_batch)
    tensorrt, engines = build_engines(folder, onnx_files, shapes, trt.workspace_mib)
    for entry in engines.values():  # pragma: no cover - needs TensorRT and a GPU
        entry["recipe"] = artifacts[entry["source_onnx"]]["recipe"]
    artifacts.update(engines)
    return tensorrt


def manifest_record(params: Params, val: CuratedDataset, identity: dict[str, Any], checkpoint: Path,
                    info: ExportInfo, torch_dets: dict, report: dict[str, Any], artifacts: dict[str, dict[str, Any]],
                    tensorrt: dict[str, Any]) -> dict[str, Any]:
    """The manifest of an export folder (format in :mod:`pipeline.deploy.manifest` and docs/deployment.md)."""
    deploy, inp = params.deploy, params.input
    h, w = inp.padded_shape
    return {
        "format": FORMAT,
        "model": {**identity, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint)},
        "class_names": list(val.class_names),
        "input": {"name": INPUT_NAMES[0], "shape": ["N" if deploy.dynamic_batch else 1, 3, h, w], "dtype": "float32",
                  "layout": "NCHW", "dynamic_batch": deploy.dynamic_batch,
                  "image_sizes": {"name": INPUT_NAMES[1], "shape": ["N", 2], "dtype": "float32",
                                  "meaning": "(h, w) of each resized image before padding; boxes are clipped to it"}},
        "preprocessing": preprocessing_record(inp.width, inp.height, (h, w), inp.mean, inp.std, T.INTERPOLATION),
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
        "conventions": conventions_record(identity["detector"], list(val.class_names),
                                          output_shapes("N" if deploy.dynamic_batch else 1, info.max_detections),
                                          (inp.width, inp.height), artifacts),
    }


def export_bundle(model: Detector, folder: Path, params: Params, val: CuratedDataset, train: CuratedDataset,
                  identity: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """Export ``model`` into ``folder`` and return the manifest written there.

    Raises :class:`UserError` when the fp32 graph fails the parity gate.
    """
    deploy = params.deploy
    input_hw = params.input.padded_shape
    batch_size = eval_batch(params)
    model = model.eval().cpu()
    fp32 = folder / artifact_name("fp32")
    info = export_onnx(model, fp32, input_hw, deploy.opset, deploy.dynamic_batch, deploy.simplify)

    torch_dets, onnx_eval, _, report = _parity_gate(model, fp32, val, params, info, identity)

    artifacts: dict[str, dict[str, Any]] = {
        fp32.name: {"kind": "onnx", "precision": "fp32", "recipe": {"precision": "fp32"}, "eval": onnx_eval}}
    sensitivity = None
    if {"int8", "int8_cpu"} & set(deploy.precisions):
        float32_layers, sensitivity = int8_float32(fp32, params, val, train)
    for precision in deploy.precisions:
        if precision == "fp32":
            continue
        path = folder / artifact_name(precision)
        if precision == "fp16":
            recipe = to_fp16(fp32, path)
        else:
            train_feeds, count = calibration_feeds(train, deploy.calib_images)
            recipe = to_int8(fp32, path, train_feeds, count, deploy.calib_method,
                             "cpu" if precision == "int8_cpu" else "tensorrt", float32_layers, deploy.int8_float32)
            recipe["float32_groups"] = sensitivity["float32"]["float32_groups"]
        if precision == "int8":
            evaluation, _ = _evaluate_int8(path, val, batch_size)
        else:
            evaluation, _ = _evaluate_onnx(path, val, batch_size, None)
        if "mAP50" in evaluation:
            evaluation["delta_mAP50_vs_fp32"] = evaluation["mAP50"] - onnx_eval["mAP50"]
        artifacts[path.name] = {"kind": "onnx", "precision": precision, "recipe": recipe, "eval": evaluation}
    tensorrt = _check_and_build(folder, artifacts, params)
    manifest = manifest_record(params, val, identity, checkpoint, info, torch_dets, report, artifacts, tensorrt)
    if sensitivity is not None:
        manifest["int8_sensitivity"] = sensitivity
    write_manifest(folder, manifest)
    return manifest


def export_qat_bundle(model: Detector, folder: Path, params: Params, val: CuratedDataset, identity: dict[str, Any],
                      checkpoint: Path) -> tuple[dict[str, Any], dict]:
    """Export a quantization-aware model (:mod:`pipeline.quant.qat`) into ``folder``: its
    ``model-int8.onnx`` (Q/DQ with the trained scales, :func:`pipeline.quant.export_qdq.write_qdq`),
    parity-gated against the PyTorch fake-quant model on val, checked for TensorRT, plus the
    manifest. Returns the manifest and the int8 file's val detections (ONNX Runtime).
    """
    deploy = params.deploy
    input_hw = params.input.padded_shape
    model = model.eval().cpu()
    int8 = folder / artifact_name("int8")
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded-float.onnx"
        export = export_module(model, input_hw)
        with quantizer_mode(model, "off"):
            info = export_onnx(model, folded, input_hw, deploy.opset, deploy.dynamic_batch, deploy.simplify,
                               module=export)
        recipe = write_qdq(folded, int8, model, export)
    torch_dets, onnx_eval, onnx_dets, report = _parity_gate(model, int8, val, params, info, identity, quantized=True)
    artifacts = {int8.name: {"kind": "onnx", "precision": "int8", "recipe": recipe, "eval": onnx_eval}}
    tensorrt = _check_and_build(folder, artifacts, params)
    manifest = manifest_record(params, val, identity, checkpoint, info, torch_dets, report, artifacts, tensorrt)
    write_manifest(folder, manifest)
    return manifest, onnx_dets
