"""Would TensorRT's ONNX parser take this graph? A check at export, since TensorRT cannot run here.

Every node of a TensorRT-targeted ONNX file is checked against :data:`OPERATORS`, the rows of
the ONNX-TensorRT operator support matrix (``onnx/onnx-tensorrt`` ``docs/operators.md`` as
published for TensorRT 10.15, the 10.x parser) for the ops this project's exporters write and
their close relatives: the op must be listed as supported, its data input must be of a listed
type, and the listed restrictions that apply to our graphs are checked (Q/DQ zero points and
quantized types, TopK ``sorted``/``K``, Resize modes and antialiasing, ScatterND reduction,
pooling dilations and indices, constant ``axes``/``K`` inputs). On top of the table, the NMS
layer's box limit: TensorRT's INMSLayer considers at most 5,000 boxes per image (2,000 on SM
5.3/6.2, Jetson Nano/TX1/TX2) and drops the rest silently, so the boxes each NonMaxSuppression
node gets per image are derived from the graph (ONNX shape inference with the batch fixed to 1:
the TopK ``K`` constants and static reshapes that feed the NMS) and held to the target's limit
(``deploy.tensorrt.nms_max_boxes``).

The result is a plain record for the manifest: ``ready`` is true only when every check ran and
passed; a check that could not run (a box count the shapes do not give) is listed under
``unverified`` and leaves ``ready`` false. :func:`require_ready` turns a problem into one line
naming the file, the node and the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.errors import UserError

SOURCE = "onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 (10.x parser)"
NMS_MAX_BOXES = 5000        # TensorRT's NMS layer per image; 2000 on SM 5.3/6.2 (Jetson Nano, TX1, TX2)
NMS_COUNT_METHOD = ("ONNX shape inference with the batch fixed to 1: the boxes input's second dimension, set by "
                    "the TopK K constants and static reshapes that feed the NMS")
TOPK_MAX_K = 3840

_F = ("FP32", "FP16", "BF16")
_FI = (*_F, "INT32", "INT64")
_FIB = (*_FI, "BOOL")
#: op -> (supported types of the data input, index of that input).
OPERATORS: dict[str, tuple[tuple[str, ...], int]] = {
    "Add": (_FI, 0), "Sub": (_FI, 0), "Mul": (_FI, 0), "Div": (_FI, 0), "Mod": (_FI, 0), "Pow": (_FI, 0),
    "Max": (_FI, 0), "Min": (_FI, 0), "Sum": (_FI, 0), "Neg": (_FI, 0), "Abs": (_FI, 0), "Sign": (_FI, 0),
    "And": (("BOOL",), 0), "Or": (("BOOL",), 0), "Xor": (("BOOL",), 0), "Not": (("BOOL",), 0),
    "Equal": (_FI, 0), "Greater": (_FI, 0), "GreaterOrEqual": (_FI, 0), "Less": (_FI, 0), "LessOrEqual": (_FI, 0),
    "Cast": ((*_FIB, "UINT8"), 0), "Clip": (_F, 0), "Exp": (_F, 0), "Log": (_F, 0), "Sqrt": (_F, 0),
    "Floor": (_F, 0), "Ceil": (_F, 0), "Round": (_F, 0), "Reciprocal": (_F, 0), "Erf": (_F, 0),
    "Relu": (_FI, 0), "Sigmoid": (_F, 0), "Tanh": (_F, 0), "Softmax": (_F, 0), "LeakyRelu": (_F, 0),
    "Concat": (_FIB, 0), "Reshape": (_FIB, 0), "Flatten": (_FIB, 0), "Transpose": (_FIB, 0),
    "Squeeze": (_FIB, 0), "Unsqueeze": (_FIB, 0), "Slice": (_FIB, 0), "Gather": (_FIB, 0),
    "GatherElements": (_FIB, 0), "GatherND": (_FIB, 0), "Expand": (_FIB, 0), "Tile": (_FIB, 0),
    "Shape": (_FIB, 0), "Size": (_FIB, 0), "Identity": (_FIB, 0), "Where": (_FIB, 1), "Split": (_FIB, 0),
    "ConstantOfShape": (("INT64", "INT32"), 0), "Constant": ((), 0), "Range": (_FI, 0),
    "ScatterND": (_FI, 0), "ScatterElements": (_FI, 0),
    "ReduceSum": (_FI, 0), "ReduceMax": (_FI, 0), "ReduceMin": (_FI, 0), "ReduceMean": (_FI, 0),
    "Conv": (_F, 0), "ConvTranspose": (_F, 0), "Gemm": (_F, 0), "MatMul": (_F, 0),
    "MaxPool": (_F, 0), "AveragePool": (_F, 0), "GlobalAveragePool": (_F, 0),
    "BatchNormalization": (_F, 0), "InstanceNormalization": (_F, 0), "GroupNormalization": (_F, 0),
    "Resize": (_F, 0), "Upsample": (_F, 0), "TopK": (_FI, 0), "NonMaxSuppression": (("FP32", "FP16"), 0),
    "RoiAlign": (("FP32", "FP16"), 0), "NonZero": (("FP32", "FP16"), 0),
    "QuantizeLinear": (_F, 0), "DequantizeLinear": (("INT8", "FP8", "INT4"), 0),
}
#: Listed as unsupported (N) in the matrix: named so the message says so rather than "unknown".
UNSUPPORTED = ("Unique", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear",
               "MaxRoiPool", "MaxUnpool", "Compress", "Multinomial", "Optional", "SequenceAt", "SequenceConstruct",
               "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "BitShift", "Det")
_RESIZE_MODES = ("nearest", "linear")
_RESIZE_COORDS = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
#: inputs that the matrix requires to be build-time constants: op -> input index
_CONSTANT_INPUTS = {"TopK": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceMean": 1}


def _type_name(elem_type: int) -> str:
    name = onnx.TensorProto.DataType.Name(elem_type)
    return {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "FLOAT8E4M3FN": "FP8"}.get(name, name)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def batch_fixed(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have a symbolic first (batch) dimension set to
    ``batch`` and no stale intermediate shapes, so shape inference can resolve every size that
    does not depend on the batch (the per-image box counts)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    return fixed


class _Graph:
    """Types, shapes and constants of a model after ONNX shape inference (batch fixed to 1)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        inferred = onnx.shape_inference.infer_shapes(batch_fixed(model), data_prop=True).graph
        self.nodes = list(inferred.node)
        values = [*inferred.value_info, *inferred.input, *inferred.output]
        self.types = {v.name: v.type.tensor_type.elem_type for v in values}
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                       for v in values}
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in inferred.initializer}
        for t in inferred.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)
        for n in self.nodes:
            if n.op_type == "Constant" and _attr(n, "value", None) is not None:
                self.constants[n.output[0]] = onnx.numpy_helper.to_array(_attr(n, "value", None))

    def type_of(self, name: str) -> str | None:
        t = self.types.get(name)
        return None if not t else _type_name(t)


def nms_boxes(node: onnx.NodeProto, g: _Graph) -> int | None:
    """Boxes per image reaching a NonMaxSuppression ``node`` (``boxes [N, M, 4]``, ``scores
    [N, C, M]``: ``M``), or ``None`` where the inferred shapes do not give it."""
    boxes = g.shapes.get(node.input[0]) or []
    scores = (g.shapes.get(node.input[1]) or []) if len(node.input) > 1 else []
    known = [d for d in (boxes[1] if len(boxes) == 3 else None, scores[2] if len(scores) == 3 else None)
             if d is not None]
    return max(known) if known else None


def _node_problem(node: onnx.NodeProto, g: _Graph, nms_max_boxes: int = NMS_MAX_BOXES) -> str | None:
    """Why TensorRT's parser would reject ``node`` (or its NMS layer would drop boxes beyond
    ``nms_max_boxes``), or ``None``."""
    op = node.op_type
    if op in UNSUPPORTED:
        return f"{op} is not supported by TensorRT's ONNX parser"
    if op not in OPERATORS:
        return f"{op} is not in the checked operator table ({SOURCE})"
    types, index = OPERATORS[op]
    if types and index < len(node.input) and node.input[index]:
        found = g.type_of(node.input[index])
        if found is not None and found not in types:
            return f"{op} input {node.input[index]!r} is {found}; TensorRT takes {', '.join(types)}"
    if op == "DequantizeLinear" and len(node.input) > 2 and node.input[2]:
        zero = g.constants.get(node.input[2])
        if zero is None or np.any(zero):
            return "DequantizeLinear x_zero_point must be a zero constant"
    if op == "QuantizeLinear":
        zero = g.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None or np.any(zero) or zero.dtype != np.int8:
            return "QuantizeLinear needs an int8 y_zero_point constant of 0 (symmetric int8)"
    if op in _CONSTANT_INPUTS and len(node.input) > _CONSTANT_INPUTS[op] and node.input[_CONSTANT_INPUTS[op]]:
        if node.input[_CONSTANT_INPUTS[op]] not in g.constants:
            return f"{op} input {node.input[_CONSTANT_INPUTS[op]]!r} must be a build-time constant"
    if op == "TopK":
        if int(_attr(node, "sorted", 1)) != 1:
            return "TopK sorted must be 1"
        k = g.constants.get(node.input[1])
        if k is not None and int(np.max(k)) >= TOPK_MAX_K:
            return f"TopK K = {int(np.max(k))} must be below {TOPK_MAX_K}"
    if op == "Resize":
        mode = _attr(node, "mode", b"nearest")
        coord = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        nearest = _attr(node, "nearest_mode", b"round_prefer_floor")
        mode, coord, nearest = (v.decode() if isinstance(v, bytes) else v for v in (mode, coord, nearest))
        if mode not in _RESIZE_MODES or coord not in _RESIZE_COORDS or (mode == "nearest" and nearest not in _NEAREST):
            return f"Resize mode {mode}/{coord}/{nearest} is not one TensorRT supports"
        if int(_attr(node, "antialias", 0)):
            return "Resize antialias is not supported"
    if op == "ScatterND" and (_attr(node, "reduction", b"none") or b"none") not in (b"none", "none"):
        return "ScatterND reduction other than none is not supported"
    if op in ("MaxPool", "AveragePool"):
        if any(int(d) != 1 for d in _attr(node, "dilations", [])) or (op == "MaxPool" and len(node.output) > 1
                                                                       and node.output[1]):
            return f"{op}: dilations must be ones and the Indices output unused"
    if op == "NonMaxSuppression":
        count = nms_boxes(node, g)
        if count is not None and count > nms_max_boxes:
            return (f"NonMaxSuppression gets {count} boxes per image; TensorRT's NMS layer considers at most "
                    f"{nms_max_boxes} (deploy.tensorrt.nms_max_boxes) and drops the rest silently: lower the "
                    "pre-NMS top-k or the input size")
    return None


def check_graph(path: Path, nms_max_boxes: int = NMS_MAX_BOXES) -> dict[str, Any]:
    """The readiness record of one ONNX file for a target whose NMS layer takes ``nms_max_boxes``
    boxes per image.

    Returns ``ready`` (true only when nothing is in ``problems`` or ``unverified``), ``source``,
    ``nodes`` checked, ``problems`` (``"<node> (<op>): <reason>"``), ``unverified`` (checks that
    could not run, ``"<node> (<op>): <why>"``), ``nms_boxes_per_image`` (the largest derived
    count, ``None`` without NMS or where unverified), ``nms_boxes_each`` (per NMS node, in order),
    ``nms_limit`` and ``nms_count_method``.
    """
    g = _Graph(onnx.load(str(path)))
    problems, unverified = [], []
    nms_each: list[int | None] = []
    for node in g.nodes:
        where = f"{node.name or node.output[0]} ({node.op_type})"
        why = _node_problem(node, g, nms_max_boxes)
        if why is not None:
            problems.append(f"{where}: {why}")
        if node.op_type == "NonMaxSuppression":
            nms_each.append(nms_boxes(node, g))
            if nms_each[-1] is None:
                unverified.append(f"{where}: the boxes per image are not given by the graph's shapes, so the "
                                  f"NMS layer's limit of {nms_max_boxes} could not be checked")
    known = [b for b in nms_each if b is not None]
    return {"ready": not problems and not unverified, "source": SOURCE, "nodes": len(g.nodes), "problems": problems,
            "unverified": unverified, "nms_boxes_per_image": max(known) if known and not unverified else None,
            "nms_boxes_each": nms_each, "nms_limit": nms_max_boxes, "nms_count_method": NMS_COUNT_METHOD}


def require_ready(path: Path, record: dict[str, Any]) -> None:
    """One line naming the file and its first offending node when TensorRT would reject it (a
    check that could not run leaves ``ready`` false in the record but does not stop the export)."""
    if record["problems"]:
        more = f" (and {len(record['problems']) - 1} more)" if len(record["problems"]) > 1 else ""
        raise UserError(f"{path}: TensorRT's ONNX parser would reject node {record['problems'][0]}{more}; "
                        "fix the exporter or drop this precision from deploy.precisions")
