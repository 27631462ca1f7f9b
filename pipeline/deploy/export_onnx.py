"""Export a detector to one self-contained ONNX file with NMS inside.

``export_onnx`` wraps the detector in its static export module (one explicit dict per
detector family), traces it with the TorchScript-based exporter (``dynamo=False``: the
dynamo exporter cannot translate the custom NMS node), caps the IR version at one
onnxruntime 1.31 accepts, simplifies the graph with onnxslim, declares the outputs' static
shapes (the tracer leaves their second dimension symbolic, ``Mulboxes_dim_1``...), runs
``onnx.checker`` and writes a single file (no external data).

Graph contract (also written to the manifest):
    inputs   images [N, 3, H, W] float32, normalised and padded outside the graph
             image_sizes [N, 2] float32, (h, w) of each resized image before padding
    outputs  num_dets [N, 1] int32, boxes [N, K, 4] float32 (x1,y1,x2,y2 input pixels),
             scores [N, K] float32, labels [N, K] int32 (-1 in unused slots); K = max
             detections per image (100), a number in the graph, N symbolic with dynamic batch
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from pipeline.deploy.faster_rcnn_export import FasterRCNNExport
from pipeline.deploy.gfl_export import GFLExport
from pipeline.deploy.trt_readiness import batch_fixed
from pipeline.errors import UserError
from pipeline.models.detector import Detector

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "labels")
MAX_IR_VERSION = 10          # onnx 1.23 writes IR 12+, which onnxruntime 1.31 rejects
MIN_OPSET = 17

EXPORTERS: dict[str, type[nn.Module]] = {"gfl": GFLExport, "faster_rcnn": FasterRCNNExport}


@dataclass(frozen=True)
class ExportInfo:
    """What the manifest records about an export."""

    opset: int
    ir_version: int
    dynamic_batch: bool
    max_detections: int
    nms: dict
    simplified: bool
    num_nodes: int


def export_module(model: Detector, input_hw: tuple[int, int]) -> nn.Module:
    """The static end-to-end module of ``model`` (eval mode, CPU)."""
    if model.name not in EXPORTERS:
        raise UserError(f"cannot export detector {model.name!r}; exportable: {', '.join(EXPORTERS)}")
    return EXPORTERS[model.name](model.eval().cpu(), input_hw).eval()


def nms_settings(module: nn.Module) -> dict:
    """The post-processing settings baked into an export module, for the manifest."""
    if isinstance(module, GFLExport):
        c = module.cfg
        return {"score_thr": c.score_thr, "iou_thr": c.nms_iou, "max_per_img": module.max_det,
                "pre_nms_top_k_per_level": c.nms_pre, "class_aware": True}
    roi, rpn = module.roi, module.rpn
    return {"score_thr": float(roi.score_thresh), "iou_thr": float(roi.nms_thresh), "max_per_img": module.max_det,
            "class_aware": True, "rpn_pre_nms_top_k_per_level": rpn._pre_nms_top_n["testing"],
            "rpn_iou_thr": float(rpn.nms_thresh), "num_proposals": module.num_proposals}


def output_shapes(batch: int | str, max_det: int) -> dict[str, list[int | str]]:
    """The graph outputs' shapes: ``batch`` (``"N"`` when dynamic) by ``max_det`` slots."""
    return {"num_dets": [batch, 1], "boxes": [batch, max_det, 4], "scores": [batch, max_det],
            "labels": [batch, max_det]}


def declare_output_shapes(graph: onnx.ModelProto, shapes: dict[str, list[int | str]]) -> None:
    """Set the shapes of ``graph``'s outputs (int: a fixed size, str: a symbolic one) after
    checking that ONNX shape inference, with the batch fixed to 1, finds the same sizes past the
    batch dimension: the declared shapes are what the graph computes, not a claim on top of it."""
    inferred = onnx.shape_inference.infer_shapes(batch_fixed(graph), data_prop=True).graph
    found = {o.name: [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
             for o in inferred.output}
    for output in graph.graph.output:
        want = shapes[output.name]
        fixed = [None if isinstance(d, str) else d for d in want]
        if (found.get(output.name) or [None])[1:] != fixed[1:]:
            raise ValueError(f"graph output {output.name} computes shape {found.get(output.name)} "
                             f"(batch fixed to 1), not {want}")
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for d in want:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def export_onnx(model: Detector, path: Path, input_hw: tuple[int, int], opset: int = 17,
                dynamic_batch: bool = True, simplify: bool = True, module: nn.Module | None = None) -> ExportInfo:
    """Write ``model`` as an end-to-end ONNX graph to ``path``.

    Args:
        model: a trained :class:`Detector`.
        input_hw: padded input ``(H, W)`` (``params.input.padded_shape``).
        opset: ONNX opset (>= 17).
        dynamic_batch: leave the batch dimension symbolic (``N``); otherwise it is 1.
        simplify: run onnxslim (constant folding, Conv+BN fusion, dead-node removal).
        module: the export module to trace (default :func:`export_module` of ``model``); a caller
            that needs the module afterwards (the QAT Q/DQ writer) builds it once and passes it.
    """
    if opset < MIN_OPSET:
        raise UserError(f"params.yaml: deploy.opset = {opset} is too old; use {MIN_OPSET} or newer")
    path = Path(path)
    module = export_module(model, input_hw) if module is None else module
    h, w = module.input_hw
    images = torch.zeros(1, 3, h, w)
    sizes = torch.tensor([[float(h), float(w)]])
    axes = {name: {0: "N"} for name in INPUT_NAMES + OUTPUT_NAMES} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")      # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(module, (images, sizes), str(path), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=axes, do_constant_folding=True)
    graph = onnx.load(str(path))
    if simplify:
        import onnxslim

        graph = onnxslim.slim(graph)
    graph.ir_version = min(graph.ir_version, MAX_IR_VERSION)
    declare_output_shapes(graph, output_shapes("N" if dynamic_batch else 1, int(module.max_det)))
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path), save_as_external_data=False)
    return ExportInfo(opset=opset, ir_version=int(graph.ir_version), dynamic_batch=dynamic_batch,
                      max_detections=int(module.max_det), nms=nms_settings(module), simplified=simplify,
                      num_nodes=len(graph.graph.node))
